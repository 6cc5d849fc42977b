"""Slice claims: each node takes a slice of the cluster CIDR with one etcd transaction.

A claim is the key ``<prefix>/slices/<net>`` created only if it does not
exist (``create_revision == 0``): two nodes racing for one slice both send the
transaction, etcd applies one, the other sees ``succeeded: false`` and tries
another slice. Claims carry no lease: a node keeps its slice across restarts
and outages; the claim names the node, so a restarted node finds it again.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging

from overlayd.cluster.errors import ClusterConflict
from overlayd.cluster.errors import ClusterError
from overlayd.cluster.records import BadRecord
from overlayd.cluster.records import Keys
from overlayd.cluster.records import claim_value
from overlayd.cluster.records import parse_claim
from overlayd.cluster.store import EtcdStore
from overlayd.model import IPNetwork

__all__ = ["claim_slice", "ensure_claim", "read_claims", "slice_at"]

log = logging.getLogger("overlayd.cluster")

#: Transactions a node tries before giving up (each lost race re-reads the claims).
MAX_ATTEMPTS = 64


def slice_at(cidr: IPNetwork, length: int, index: int) -> IPNetwork:
    """The ``index``-th slice of length ``length`` in ``cidr``."""
    size = 1 << (cidr.max_prefixlen - length)
    return ipaddress.ip_network((int(cidr.network_address) + index * size, length))


def read_claims(store: EtcdStore, keys: Keys) -> dict[IPNetwork, str]:
    """Every valid claim: slice → node name."""
    _, kvs = store.range_prefix(keys.slices)
    out: dict[IPNetwork, str] = {}
    for kv in kvs:
        try:
            out[keys.slice_of_key(kv.key)] = parse_claim(kv.value)
        except BadRecord as exc:
            # Warned about once by the membership view; skipped here.
            log.debug("cluster: skipping claim %s: %s", kv.key, exc)
    return out


def _start(name: str, count: int) -> int:
    """Where ``name`` starts looking: spread over the range, the same on every run."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def claim_slice(
    store: EtcdStore,
    keys: Keys,
    cidr: IPNetwork,
    length: int,
    name: str,
    preferred: IPNetwork | None = None,
) -> IPNetwork:
    """Claim (or find again) ``name``'s slice of ``cidr``; blocking.

    :param preferred: the slice this node used before (its local state); it
        must be free or already the node's.
    :raises ClusterConflict: ``preferred`` is held by another node.
    :raises ClusterError: no slice is free.
    """
    claims = read_claims(store, keys)
    mine = sorted(
        (n for n, holder in claims.items() if holder == name and n.subnet_of(cidr)),  # type: ignore[arg-type]
        key=lambda n: int(n.network_address),
    )
    if preferred is not None:
        holder = claims.get(preferred)
        if holder is None and store.create(keys.slice(preferred), claim_value(name)):
            log.info("cluster: claimed slice %s (kept from local state)", preferred)
            return preferred
        holder = holder or read_claims(store, keys).get(preferred)
        if holder == name:
            return preferred
        raise ClusterConflict(
            f"this node's recorded slice {preferred} is held by node {holder!r} in etcd; "
            "tear down the global overlay of this node (or remove that claim) to join"
        )
    if mine:
        if len(mine) > 1:
            log.warning(
                "cluster: node %s holds several slices of %s; using %s", name, cidr, mine[0]
            )
        return mine[0]
    count = 1 << (length - cidr.prefixlen)
    index = _start(name, count)
    held = {int(n.network_address) for n in claims if n.subnet_of(cidr)}  # type: ignore[arg-type]
    tried = 0
    for _ in range(count):
        net = slice_at(cidr, length, index)
        index = (index + 1) % count
        if int(net.network_address) in held:
            continue
        if store.create(keys.slice(net), claim_value(name)):
            log.info("cluster: claimed slice %s", net)
            return net
        held.add(int(net.network_address))
        tried += 1
        if tried >= MAX_ATTEMPTS:
            break
    raise ClusterError(
        f"no free /{length} slice left in {cidr} after {tried} attempt(s); "
        "widen cluster_cidr or lengthen slice_prefix"
    )


def ensure_claim(store: EtcdStore, keys: Keys, net: IPNetwork, name: str) -> None:
    """Make sure the claim of ``net`` exists and names ``name`` (after etcd lost its data).

    :raises ClusterConflict: another node holds it.
    """
    key = keys.slice(net)
    if store.create(key, claim_value(name)):
        log.warning("cluster: the claim of slice %s was missing; claimed it again", net)
        return
    kv = store.get(key)
    holder = None
    if kv is not None:
        try:
            holder = parse_claim(kv.value)
        except BadRecord:
            holder = None
    if holder != name:
        raise ClusterConflict(
            f"this node's slice {net} is now held by {holder!r} in etcd; "
            "the node keeps its data plane but cannot publish itself"
        )
