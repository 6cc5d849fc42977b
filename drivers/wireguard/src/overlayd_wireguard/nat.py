"""NAT traversal hooks of the WireGuard driver.

The engine's NAT agent (:mod:`overlayd.nat`) does the protocol work; the
driver supplies what only it knows:

* ``overlayd_nat_candidates``: host candidates, the addresses of the
  namespace the devices live in (``[drivers.wireguard] netns`` or the
  daemon's own), without loopback, link-local IPv6, overlay links (``zl-``)
  and addresses inside the overlay;
* ``overlayd_nat_socket``: sockets opened in that namespace (raw sockets on
  the WireGuard port, the relay's loopback endpoints, the TURN client);
* ``overlayd_nat_set_endpoint``: point a peer at a new endpoint with a fresh
  session: the peer is removed and added again with the same allowed IPs and
  preshared key, and with a persistent keepalive switched on, which makes
  both wireguard-go and kernel WireGuard send a packet (hence a handshake
  initiation) at once.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import TYPE_CHECKING
from typing import Any

from overlayd import hookimpl
from overlayd.errors import NatError
from overlayd.errors import OverlaydError
from overlayd.errors import PeerError
from overlayd.model import Device
from overlayd.model import DeviceKind
from overlayd.model import NatCandidate
from overlayd_linux.netlink import NETLINK_ERRORS
from overlayd_linux.netlink import iproute_in
from overlayd_linux.netlink import netns_path
from overlayd_linux.netlink import socket_in
from overlayd_linux.netns import open_network_namespace
from overlayd_wireguard.uapi import PeerConfig
from overlayd_wireguard.uapi import PeerOp
from overlayd_wireguard.uapi import SetRequest
from overlayd_wireguard.uapi import normalize_endpoint

if TYPE_CHECKING:
    from overlayd_wireguard.backend import WgBackend
    from overlayd_wireguard.devstate import DevState
    from overlayd_wireguard.options import WireGuardOptions

__all__ = ["NatHooks", "host_candidates", "open_in_netns"]

#: Link name prefix of overlay devices (never a host candidate).
_OWN_PREFIX = "zl-"


def open_in_netns(netns: str | None, family: int, type_: int, proto: int) -> socket.socket:
    """A socket created inside ``netns`` (a name under /var/run/netns), or here."""
    if not netns:
        return socket.socket(family, type_, proto)
    try:
        fd = open_network_namespace(netns_path(netns))
    except OverlaydError as exc:
        raise NatError(f"cannot open a socket in netns {netns}: {exc}", op="nat_socket") from exc
    try:
        return socket_in(fd, family, type_, proto)
    finally:
        os.close(fd)


def host_candidates(netns: str | None, device: Device) -> list[NatCandidate]:
    """The namespace's own addresses with the device's port, IPv4 first."""
    port = device.listen_port
    if not port:
        return []
    overlay = device.subnet
    out: list[NatCandidate] = []
    try:
        with iproute_in(netns) as ipr:
            names = {
                int(link["index"]): str(link.get_attr("IFLA_IFNAME") or "")
                for link in ipr.get_links()
            }
            addrs = list(ipr.get_addr())
    except NETLINK_ERRORS as exc:
        raise NatError(f"cannot list the host's addresses: {exc}", op="nat_candidates") from exc
    for msg in addrs:
        name = names.get(int(msg["index"]), "")
        if name == "lo" or name.startswith(_OWN_PREFIX):
            continue
        text = msg.get_attr("IFA_ADDRESS")
        if not isinstance(text, str):
            continue
        ip = ipaddress.ip_address(text)
        if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            continue
        if overlay is not None and ip.version == overlay.version and ip in overlay:
            continue
        host = f"[{ip.compressed}]" if ip.version == 6 else str(ip)
        out.append(NatCandidate(kind="host", endpoint=f"{host}:{port}"))
    out.sort(key=lambda c: 1 if c.endpoint.startswith("[") else 0)
    return out


class NatHooks:
    """Mixed into :class:`~overlayd_wireguard.driver.WireGuardDriver`."""

    if TYPE_CHECKING:  # provided by the driver class
        name: str
        options: WireGuardOptions

        def _adopt(self, device: Device) -> DevState: ...

        def _backend(self) -> WgBackend: ...

        def _reload(self, dev: DevState) -> None: ...

    def _own(self, device: Device) -> bool:
        return device.driver == self.name and device.kind == DeviceKind.WIREGUARD

    @hookimpl
    def overlayd_nat_candidates(self, device: Device) -> list[NatCandidate] | None:
        if not self._own(device):
            return None
        return host_candidates(self.options.netns, device)

    @hookimpl
    def overlayd_nat_socket(
        self, device: Device, family: int, type: int, proto: int
    ) -> socket.socket | None:
        if not self._own(device):
            return None
        return open_in_netns(self.options.netns, family, type, proto)

    @hookimpl
    def overlayd_nat_set_endpoint(
        self, device: Device, public_key: str, endpoint: str, keepalive: int
    ) -> bool | None:
        if not self._own(device):
            return None
        try:
            dev = self._adopt(device)
            numeric = normalize_endpoint(endpoint)
        except OverlaydError as exc:
            raise PeerError(str(exc), op="nat_set_endpoint", driver=self.name) from exc
        with dev.lock:
            current = dev.peers.get(public_key)
            if current is None:
                raise PeerError(
                    f"peer {public_key} is not on {device.name}",
                    op="nat_set_endpoint",
                    driver=self.name,
                )
            fresh = PeerConfig(
                public_key=public_key,
                allowed_ips=current.allowed_ips,
                endpoint=numeric,
                persistent_keepalive_interval=max(1, keepalive),
                preshared_key=current.preshared_key,
            )
            others = [p for k, p in dev.peers.items() if k != public_key]
            backend = self._backend()
            name = device.name
            after: dict[str, Any] = dict(dev.peers)
            try:
                backend.apply(
                    name, SetRequest(peers=(PeerOp(public_key=public_key, remove=True),)),
                    peers=others,
                )  # fmt: skip
                after[public_key] = fresh
                backend.apply(
                    name, SetRequest(peers=(fresh.create_op(),)), peers=tuple(after.values())
                )
            except OverlaydError:
                self._reload(dev)
                raise
            dev.peers = after
        return True
