"""Checks of client input against the node's own overlay, before anything is touched.

The wire models (:mod:`overlayd.protocol`) check each value on its own; the
checks here need to know the node: its keys, its slice, its zone. The engine
runs them under the locks of the operation, and a failed check raises
:class:`~overlayd.errors.InvalidRequest` with nothing changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence

from overlayd.errors import InvalidRequest
from overlayd.errors import quote
from overlayd.model import IPAddress
from overlayd.model import IPNetwork
from overlayd.model import PeerChange

__all__ = ["MAX_DNS_NAME", "check_dns_name_fits", "check_peer_changes", "check_port_target"]

#: Longest absolute name in presentation form, final dot included (255 octets on the wire).
MAX_DNS_NAME = 254


def _inside(net: IPNetwork, other: IPNetwork) -> bool:
    return net.version == other.version and net.subnet_of(other)  # type: ignore[arg-type]


def check_peer_changes(
    changes: Iterable[PeerChange],
    *,
    own_keys: Mapping[str, str],
    own_nets: Sequence[IPNetwork],
) -> None:
    """Refuse peers that would point the node at itself or take its traffic.

    * a peer with the public key of one of this node's own WireGuard devices
      (``own_keys`` maps key to device name): WireGuard would accept it and
      route its allowed IPs nowhere;
    * allowed IPs ``0.0.0.0/0`` or ``::/0``: the driver would route the
      host's default route through the overlay;
    * allowed IPs inside ``own_nets``, the addresses only this node serves
      (its slice; the node, its containers and guests): a peer would take
      their traffic. A prefix that merely contains them (a hub's whole
      cluster CIDR) is fine: the node's own routes are more specific.

    Removals are never refused.
    """
    for change in changes:
        if change.remove:
            continue
        device = own_keys.get(change.public_key)
        if device is not None:
            raise InvalidRequest(
                f"peer {change.public_key} is this node's own key (device {device}); "
                "a node cannot be its own peer"
            )
        nets = list(change.allowed_ips or ()) + list(change.add_allowed_ips)
        for net in nets:
            if net.prefixlen == 0:
                raise InvalidRequest(
                    f"allowed IP {net} of peer {change.public_key} would send all "
                    "traffic of this host into the overlay; give the peer's own subnets"
                )
            own = next((o for o in own_nets if _inside(net, o)), None)
            if own is not None:
                raise InvalidRequest(
                    f"allowed IP {net} of peer {change.public_key} is inside {own}, which "
                    "this node serves itself; give the peer's own subnets"
                )


def check_port_target(ip: IPAddress, cluster: IPNetwork | None) -> None:
    """A port mapping must forward to an overlay address (inside the cluster CIDR)."""
    if cluster is None:
        raise InvalidRequest(
            "the global overlay is not set up, so no container address exists to map a "
            "port to; call setup_global_overlay first"
        )
    if ip.version != cluster.version or ip not in cluster:
        raise InvalidRequest(
            f"container_ip {ip} is outside the overlay {cluster}; map_port forwards to "
            "overlay addresses only"
        )


def check_dns_name_fits(relative: str, zone: str) -> None:
    """A name relative to ``zone`` must still be a valid name once the zone is appended."""
    absolute = f"{relative.rstrip('.')}.{zone.rstrip('.')}."
    if len(absolute) > MAX_DNS_NAME:
        raise InvalidRequest(
            f"DNS name {quote(relative)} is too long for the zone {zone}: "
            f"{len(absolute)} characters with the zone, {MAX_DNS_NAME} at most"
        )
