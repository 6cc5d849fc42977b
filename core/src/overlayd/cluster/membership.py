"""The cluster's live nodes and the peer set they imply, kept up to date from etcd.

:class:`Membership` holds every node and slice-claim record seen in the store
(raw) and the subset that passed validation (:attr:`Membership.nodes`). It
answers, for a change, which peers it touches; :func:`peer_changes` turns the
touched peers into the smallest list of ``PeerChange``s (one per peer that
really differs), so an event for one node costs the same whether the cluster
has 10 or 10,000 nodes, and a resync after an outage changes nothing that
did not change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field

from overlayd.cluster.records import BadRecord
from overlayd.cluster.records import Keys
from overlayd.cluster.records import NodeRecord
from overlayd.cluster.records import parse_claim
from overlayd.cluster.records import parse_node
from overlayd.model import IPNetwork
from overlayd.model import PeerChange
from overlayd.model import PeerConfig

__all__ = ["Membership", "is_cluster_peer", "peer_changes"]

log = logging.getLogger("overlayd.cluster")


@dataclass
class Membership:
    """Nodes and claims as the store holds them, and the valid view of them."""

    keys: Keys
    self_name: str
    cluster: tuple[IPNetwork, ...]
    slice_lengths: tuple[int, ...]
    keepalive: int = 0
    #: slice → node holding its claim (valid claims only).
    claims: dict[IPNetwork, str] = field(default_factory=dict)
    #: node name → raw record value, valid or not (live records only).
    raw: dict[str, bytes] = field(default_factory=dict)
    #: node name → lease id of its record.
    leases: dict[str, int] = field(default_factory=dict)
    #: node name → the valid record (what peers are built from).
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    #: public key → node name, for valid nodes.
    by_key: dict[str, str] = field(default_factory=dict)
    #: names whose live record is invalid (re-checked when claims or keys free up).
    invalid: set[str] = field(default_factory=set)
    #: key → the value last warned about: one warning per bad value, not per event.
    warned: dict[str, bytes] = field(default_factory=dict)
    #: records ignored so far (each bad value counted once).
    bad_records: int = 0
    #: key → the value whose NAT candidates were last warned about.
    warned_candidates: dict[str, bytes] = field(default_factory=dict)

    # -- input ----------------------------------------------------------------

    def load(self, kvs: Iterable[tuple[str, bytes, int]]) -> set[str]:
        """Replace the whole view with a full read ``(key, value, lease)``; returns touched keys."""
        touched = set(self.by_key)
        self.claims.clear()
        self.raw.clear()
        self.leases.clear()
        self.nodes.clear()
        self.by_key.clear()
        self.invalid.clear()
        nodes: list[tuple[str, bytes, int]] = []
        for key, value, lease in kvs:
            kind = self.keys.kind(key)
            if kind == "slices":
                self._put_claim(key, value)
            elif kind == "nodes":
                nodes.append((key, value, lease))
        for key, value, lease in nodes:
            name = key[len(self.keys.nodes) :]
            self.raw[name] = value
            self.leases[name] = lease
            touched |= self._evaluate(name)
        return touched

    def put(self, key: str, value: bytes, lease: int) -> set[str]:
        """A key was written; returns the public keys whose peer may have changed."""
        kind = self.keys.kind(key)
        if kind == "slices":
            self._put_claim(key, value)
            return self._recheck_invalid()
        if kind != "nodes":
            return set()
        name = key[len(self.keys.nodes) :]
        if self.raw.get(name) == value:
            self.leases[name] = lease
            return set()
        self.raw[name] = value
        self.leases[name] = lease
        touched = self._evaluate(name)
        return touched | self._recheck_invalid() if touched else touched

    def delete(self, key: str) -> set[str]:
        """A key was deleted (or its lease expired)."""
        kind = self.keys.kind(key)
        if kind == "slices":
            try:
                net = self.keys.slice_of_key(key)
            except BadRecord:
                return set()
            self.claims.pop(net, None)
            self.warned.pop(key, None)
            return self._recheck_holders(net)
        if kind != "nodes":
            return set()
        name = key[len(self.keys.nodes) :]
        self.raw.pop(name, None)
        self.leases.pop(name, None)
        self.invalid.discard(name)
        self.warned.pop(key, None)
        self.warned_candidates.pop(key, None)
        touched = self._drop(name)
        return touched | self._recheck_invalid() if touched else touched

    # -- validation -----------------------------------------------------------

    def _put_claim(self, key: str, value: bytes) -> None:
        try:
            net = self.keys.slice_of_key(key)
            holder = parse_claim(value)
        except BadRecord as exc:
            self._warn(key, value, str(exc))
            return
        self.claims[net] = holder

    def _warn(self, key: str, value: bytes, reason: str) -> None:
        if self.warned.get(key) == value:
            return
        self.warned[key] = value
        self.bad_records += 1
        log.warning("cluster: ignoring record %s: %s", key, reason, extra={"key": key})

    def _evaluate(self, name: str) -> set[str]:
        """Validate ``name``'s raw record and update the valid view; returns touched keys."""
        value = self.raw.get(name)
        key = self.keys.node(name)
        old = self.nodes.get(name)
        if value is None:
            return self._drop(name)
        try:
            rec = parse_node(name, value, self.cluster, self.slice_lengths, self.claims)
            holder = self.by_key.get(rec.public_key)
            if holder is not None and holder != name:
                raise BadRecord(f"public key {rec.public_key} is already node {holder!r}'s")
        except BadRecord as exc:
            self.invalid.add(name)
            self._warn(key, value, str(exc))
            # A bad update is not applied: the node keeps its last valid record.
            return set()
        self.invalid.discard(name)
        self.warned.pop(key, None)
        if rec.dropped and self.warned_candidates.get(key) != value:
            self.warned_candidates[key] = value
            self.bad_records += 1
            log.warning(
                "cluster: ignoring %d NAT candidate(s) of record %s: %s",
                len(rec.dropped),
                key,
                "; ".join(rec.dropped[:3]),
                extra={"key": key},
            )
        if old == rec:
            return set()
        touched: set[str] = set()
        if old is not None:
            self.by_key.pop(old.public_key, None)
            touched.add(old.public_key)
        self.nodes[name] = rec
        self.by_key[rec.public_key] = name
        touched.add(rec.public_key)
        return touched

    def _drop(self, name: str) -> set[str]:
        old = self.nodes.pop(name, None)
        if old is None:
            return set()
        self.by_key.pop(old.public_key, None)
        return {old.public_key}

    def _recheck_invalid(self) -> set[str]:
        touched: set[str] = set()
        for name in list(self.invalid):
            touched |= self._evaluate(name)
        return touched

    def _recheck_holders(self, net: IPNetwork) -> set[str]:
        """A claim went away: a node whose record relied on it loses validity."""
        touched: set[str] = set()
        for name, rec in list(self.nodes.items()):
            if net in rec.slices:
                touched |= self._drop(name)
                self.invalid.add(name)
                value = self.raw.get(name, b"")
                self._warn(self.keys.node(name), value, f"slice {net} is no longer claimed")
        return touched

    # -- output ---------------------------------------------------------------

    def desired(self, public_key: str) -> PeerConfig | None:
        """The peer ``public_key`` should be, ``None`` if it should not exist."""
        name = self.by_key.get(public_key)
        if name is None or name == self.self_name:
            return None
        rec = self.nodes[name]
        return PeerConfig(
            public_key=rec.public_key,
            endpoint=rec.endpoint,
            allowed_ips=rec.slices,
            persistent_keepalive_secs=self.keepalive,
        )

    def all_peer_keys(self) -> set[str]:
        return {k for k, n in self.by_key.items() if n != self.self_name}


def is_cluster_peer(
    peer: PeerConfig, cluster: tuple[IPNetwork, ...], own: tuple[IPNetwork, ...]
) -> bool:
    """Whether cluster mode owns ``peer`` on the global device.

    It does when every allowed IP lies inside a cluster CIDR and outside this
    node's own slices: such a peer routes another node's slice, which only the
    cluster decides. Peers inside the node's own slice (guests registered by
    ``attach``) and peers outside the cluster are left alone.
    """
    if not peer.allowed_ips:
        return False
    for net in peer.allowed_ips:
        inside = any(
            net.version == c.version and net.subnet_of(c)  # type: ignore[arg-type]
            for c in cluster
        )
        mine = any(
            net.version == s.version and (net.subnet_of(s) or s.subnet_of(net))  # type: ignore[arg-type]
            for s in own
        )
        if not inside or mine:
            return False
    return True


def peer_changes(
    touched: Iterable[str],
    membership: Membership,
    programmed: Mapping[str, PeerConfig],
) -> list[PeerChange]:
    """One change per touched peer whose programmed state differs from the desired one."""
    changes: list[PeerChange] = []
    for key in sorted(set(touched)):
        want = membership.desired(key)
        have = programmed.get(key)
        if want == have:
            continue
        if want is None:
            changes.append(PeerChange(public_key=key, remove=True))
        else:
            changes.append(
                PeerChange(
                    public_key=key,
                    endpoint=want.endpoint,
                    allowed_ips=want.allowed_ips,
                    persistent_keepalive_secs=want.persistent_keepalive_secs,
                )
            )
    return changes
