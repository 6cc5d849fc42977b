"""What cluster mode keeps in etcd: key layout, record shapes and their validation.

Keys under the configured ``prefix`` (``P``)::

    P/nodes/<name>              node record (JSON), under the node's lease
    P/slices/<net>              slice claim (JSON), no lease: the slice stays the node's
    P/dns/<name>/<dns>/<ip>     a DNS name the node serves (JSON), under its lease

``<net>`` is the slice with ``/`` written as ``_`` (``10.200.3.0_24``).
``docs/cluster.rst`` describes every field. Records from the store are
untrusted input: :func:`parse_node` and :func:`parse_dns` check everything and
raise :class:`BadRecord` with the reason; nothing invalid is ever applied.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from overlayd.cluster.config import NODE_NAME_RE
from overlayd.model import IPAddress
from overlayd.model import IPNetwork
from overlayd.model import NatCandidate
from overlayd.model import validate_wg_key

__all__ = [
    "RECORD_VERSION",
    "BadRecord",
    "DnsEntry",
    "Keys",
    "NodeRecord",
    "candidates_json",
    "format_endpoint",
    "parse_candidates",
    "parse_claim",
    "parse_dns",
    "parse_node",
]

RECORD_VERSION = 1
#: At most this many NAT-traversal candidates per node record.
MAX_CANDIDATES = 16
_DNS_NAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$"
)


class BadRecord(ValueError):
    """A record from the store that must not be applied; the message says why."""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A node as its own record describes it (checked by :func:`parse_node`)."""

    name: str
    public_key: str
    endpoint: str
    slices: tuple[IPNetwork, ...]
    node_ip: IPAddress
    #: The node's NAT-traversal candidates (what its NAT agent gathered), checked.
    candidates: tuple[NatCandidate, ...] = ()
    #: Why candidates of the stored record were dropped (empty when none were).
    dropped: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "version": RECORD_VERSION,
                "name": self.name,
                "public_key": self.public_key,
                "endpoint": self.endpoint,
                "slices": [str(s) for s in self.slices],
                "node_ip": str(self.node_ip),
                "candidates": candidates_json(self.candidates),
            },
            separators=(",", ":"),
        ).encode()


@dataclass(frozen=True, slots=True)
class DnsEntry:
    """A name one node serves: ``name`` (relative to the zone) → ``ip``."""

    node: str
    name: str
    ip: IPAddress


class Keys:
    """The key layout under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.root = prefix + "/"
        self.nodes = prefix + "/nodes/"
        self.slices = prefix + "/slices/"
        self.dns = prefix + "/dns/"

    def node(self, name: str) -> str:
        return self.nodes + name

    def slice(self, net: IPNetwork) -> str:
        return self.slices + str(net).replace("/", "_")

    def dns_entry(self, node: str, name: str, ip: IPAddress) -> str:
        return f"{self.dns}{node}/{name.lower()}/{ip}"

    def dns_of(self, node: str) -> str:
        return f"{self.dns}{node}/"

    def kind(self, key: str) -> str | None:
        """``nodes``, ``slices`` or ``dns`` for a key under the prefix, else ``None``."""
        if not key.startswith(self.root):
            return None
        kind, _, rest = key[len(self.root) :].partition("/")
        return kind if rest and kind in ("nodes", "slices", "dns") else None

    def slice_of_key(self, key: str) -> IPNetwork:
        text = key[len(self.slices) :].replace("_", "/")
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError:
            raise BadRecord(f"the key does not name a CIDR ({text!r})") from None


def _endpoint(value: object) -> str:
    if not isinstance(value, str):
        raise BadRecord("endpoint must be a 'host:port' string")
    shown = value[:80]  # a hostile record may hold megabytes: log a bounded part
    host, sep, port = value.rpartition(":")
    # ASCII digits only, at most 5 (int() takes other digits and refuses huge ones).
    if not sep or not (port.isascii() and port.isdigit() and len(port) <= 5):
        raise BadRecord(f"endpoint {shown!r} is not 'address:port'")
    if not 0 < int(port) < 65536:
        raise BadRecord(f"endpoint {shown!r} is not 'address:port'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        want = 6
    else:
        want = 4
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise BadRecord(f"endpoint {shown!r} does not hold an IP address") from None
    if addr.version != want:
        raise BadRecord(f"endpoint {shown!r}: an IPv6 address goes in brackets")
    if addr.is_unspecified or addr.is_multicast:
        raise BadRecord(f"endpoint {shown!r} is not a unicast address")
    return value


def format_endpoint(addr: str, port: int) -> str:
    ip = ipaddress.ip_address(addr)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _load(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRecord(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadRecord("not a JSON object")
    if data.get("version") != RECORD_VERSION:
        raise BadRecord(f"unknown record version {data.get('version')!r} (expected 1)")
    return data


def parse_node(
    name: str,
    raw: bytes,
    cluster: tuple[IPNetwork, ...],
    slice_lengths: tuple[int, ...],
    claims: Mapping[IPNetwork, str],
) -> NodeRecord:
    """Check the record of node ``name`` (the key's last part) against the cluster.

    :param cluster: the cluster CIDRs; every slice must be a slice of one of them.
    :param slice_lengths: the slice prefix length for each cluster CIDR.
    :param claims: slice → name of the node holding its claim.
    :raises BadRecord: naming what is wrong.
    """
    if not NODE_NAME_RE.match(name):
        raise BadRecord(f"node name {name!r} is not a DNS label")
    data = _load(raw)
    if data.get("name") != name:
        raise BadRecord(f"the record names node {data.get('name')!r}, its key {name!r}")
    try:
        public_key = validate_wg_key(data.get("public_key"))
    except ValueError as exc:
        raise BadRecord(f"invalid public key: {exc}") from None
    endpoint = _endpoint(data.get("endpoint"))
    raw_slices = data.get("slices")
    if not isinstance(raw_slices, list) or not 1 <= len(raw_slices) <= len(cluster):
        raise BadRecord(f"slices must be a list of 1 to {len(cluster)} CIDRs")
    slices: list[IPNetwork] = []
    for item in raw_slices:
        try:
            net = ipaddress.ip_network(str(item), strict=True)
        except ValueError as exc:
            raise BadRecord(f"slice {item!r} is not a CIDR: {exc}") from None
        for cidr, length in zip(cluster, slice_lengths, strict=True):
            if net.version == cidr.version and net.subnet_of(cidr):  # type: ignore[arg-type]
                if net.prefixlen != length:
                    raise BadRecord(f"slice {net} is not a /{length} of {cidr}")
                break
        else:
            raise BadRecord(
                f"allowed IP {net} is outside the cluster CIDR {', '.join(map(str, cluster))}"
            )
        holder = claims.get(net)
        if holder != name:
            raise BadRecord(
                f"slice {net} is held by node {holder!r}"
                if holder
                else f"slice {net} is not claimed by any node"
            )
        if net in slices:
            raise BadRecord(f"slice {net} is listed twice")
        slices.append(net)
    try:
        node_ip = ipaddress.ip_address(str(data.get("node_ip")))
    except ValueError:
        raise BadRecord(f"node_ip {data.get('node_ip')!r} is not an IP address") from None
    if not any(node_ip in s for s in slices):
        raise BadRecord(f"node_ip {node_ip} is outside the node's slices")
    candidates, dropped = parse_candidates(data.get("candidates", []))
    return NodeRecord(
        name=name,
        public_key=public_key,
        endpoint=endpoint,
        slices=tuple(slices),
        node_ip=node_ip,
        candidates=candidates,
        dropped=tuple(dropped),
    )


_KINDS = ("host", "reflexive", "relay")


def candidates_json(candidates: tuple[NatCandidate, ...]) -> list[dict[str, Any]]:
    """The ``candidates`` field of a node record."""
    out: list[dict[str, Any]] = []
    for cand in candidates[:MAX_CANDIDATES]:
        item: dict[str, Any] = {
            "kind": cand.kind,
            "endpoint": cand.endpoint,
            "priority": cand.priority,
        }
        if cand.guessed:
            item["guessed"] = True
        out.append(item)
    return out


def _candidate(item: object) -> NatCandidate:
    if not isinstance(item, dict):
        raise BadRecord(f"candidate {item!r} is not an object")
    kind = item.get("kind")
    if kind not in _KINDS:
        raise BadRecord(f"candidate kind {kind!r} is not one of {', '.join(_KINDS)}")
    endpoint = _endpoint(item.get("endpoint"))
    priority = item.get("priority", 0)
    if type(priority) is not int or not 0 <= priority < 2**32:
        raise BadRecord(f"candidate priority {priority!r} is not an integer in [0, 2^32)")
    guessed = item.get("guessed", False)
    if type(guessed) is not bool:
        raise BadRecord(f"candidate 'guessed' {guessed!r} is not true or false")
    return NatCandidate(kind=kind, endpoint=endpoint, priority=priority, guessed=guessed)


def parse_candidates(value: object) -> tuple[tuple[NatCandidate, ...], list[str]]:
    """The valid candidates of a record's ``candidates`` field, and why others were dropped.

    Candidates are advisory: a bad one is dropped (the reason returned for one
    warning), the rest of the record still applies, as for a record without
    candidates (an older node, or NAT traversal off).
    """
    if not isinstance(value, list):
        return (), [f"candidates is not a list ({type(value).__name__})"]
    if len(value) > MAX_CANDIDATES:
        return (), [f"{len(value)} candidates, at most {MAX_CANDIDATES} allowed"]
    good: list[NatCandidate] = []
    dropped: list[str] = []
    for item in value:
        try:
            good.append(_candidate(item))
        except BadRecord as exc:
            dropped.append(str(exc))
    return tuple(good), dropped


def claim_value(name: str) -> bytes:
    return json.dumps({"version": RECORD_VERSION, "node": name}, separators=(",", ":")).encode()


def parse_claim(raw: bytes) -> str:
    """The node holding a slice claim."""
    data = _load(raw)
    node = data.get("node")
    if not isinstance(node, str) or not NODE_NAME_RE.match(node):
        raise BadRecord(f"claim holder {node!r} is not a node name")
    return node


def dns_value(entry: DnsEntry) -> bytes:
    return json.dumps(
        {"version": RECORD_VERSION, "name": entry.name, "ip": str(entry.ip)},
        separators=(",", ":"),
    ).encode()


def parse_dns_key(keys: Keys, key: str) -> DnsEntry:
    """The entry a DNS key names (a delete carries no value, so the key says it all)."""
    parts = key[len(keys.dns) :].split("/")
    if len(parts) != 3:
        raise BadRecord("a DNS key is <prefix>/dns/<node>/<name>/<ip>")
    node, name, ip_text = parts
    if not NODE_NAME_RE.match(node):
        raise BadRecord(f"node name {node!r} is not a DNS label")
    if not _DNS_NAME_RE.match(name):
        raise BadRecord(f"DNS name {name!r} is not a valid relative name")
    try:
        ip = ipaddress.ip_address(ip_text)
    except ValueError:
        raise BadRecord(f"{ip_text!r} is not an IP address") from None
    return DnsEntry(node=node, name=name.lower(), ip=ip)


def parse_dns(keys: Keys, key: str, raw: bytes) -> DnsEntry:
    """Check a DNS record: its key and value must agree."""
    entry = parse_dns_key(keys, key)
    data = _load(raw)
    if str(data.get("name", "")).lower() != entry.name or data.get("ip") != str(entry.ip):
        raise BadRecord("the record's name and ip differ from its key")
    return entry
