"""Kernel WireGuard backend over generic netlink (pyroute2 ``WireGuard``).

pyroute2 facts (docs/reference/wireguard.rst §3): ``WireGuard`` has only ``set(interface,
listen_port, fwmark, private_key, peer)`` -- one peer per call, keys in base64 --
and ``info(interface)``, a dump returning a *list* of messages in which one peer
may be split over several messages (coalesced here, as wg(8) does). There is no
``replace_peers`` flag in pyroute2, so it is emulated by removing the peers the
request does not name (not atomic). Long allowed-IP lists are sent in chunks,
``replace_allowed_ips`` only on the first chunk, as wireguard.h recommends.

This machine's kernel has no wireguard module: only :func:`probe` and the
translation functions are tested here; the netlink round trips are not.
"""

from __future__ import annotations

import base64
import errno
import logging
import os
import socket
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any
from typing import Final
from typing import Protocol

from overlayd.errors import DeviceError
from overlayd.errors import NotFound
from overlayd.errors import PeerError
from overlayd_linux.netlink import NETLINK_ERRORS
from overlayd_linux.netlink import error_code
from overlayd_linux.netlink import netns_path
from overlayd_linux.netlink import socket_in
from overlayd_linux.netns import open_network_namespace
from overlayd_wireguard.backend import DeviceConfig
from overlayd_wireguard.backend import WgBackend
from overlayd_wireguard.keys import PresharedKey
from overlayd_wireguard.keys import PrivateKey
from overlayd_wireguard.links import LinkAdapter
from overlayd_wireguard.links import PyRoute2Links
from overlayd_wireguard.uapi import DeviceState
from overlayd_wireguard.uapi import PeerConfig
from overlayd_wireguard.uapi import PeerOp
from overlayd_wireguard.uapi import PeerState
from overlayd_wireguard.uapi import SetRequest
from overlayd_wireguard.uapi import normalize_allowed_ip
from overlayd_wireguard.uapi import normalize_endpoint

__all__ = [
    "GenlWireGuard",
    "KernelBackend",
    "parse_info",
    "peer_messages",
    "probe",
]

log = logging.getLogger(__name__)

#: Allowed IPs per netlink message; wg(8) fills a buffer of min(page, 8 KiB) and
#: one IPv6 allowed IP costs 36 bytes, so 64 per message stays well inside it.
ALLOWED_IPS_PER_MESSAGE: Final = 64
#: ``NETLINK_GENERIC`` from ``<linux/netlink.h>``.
_NETLINK_GENERIC: Final = 16
_ZERO_KEY_B64: Final = base64.b64encode(bytes(32)).decode("ascii")


class GenlWireGuard(Protocol):
    """The subset of ``pyroute2.WireGuard`` this backend uses."""

    def set(
        self,
        interface: str,
        *,
        listen_port: int | None = None,
        fwmark: int | None = None,
        private_key: str | None = None,
        peer: dict[str, Any] | None = None,
    ) -> Any:
        """One ``WG_CMD_SET_DEVICE`` message (this backend passes its fields by keyword)."""
        ...

    def info(self, interface: str) -> Any:
        """``WG_CMD_GET_DEVICE`` dump: a list of messages."""
        ...

    def close(self) -> None:
        """Close the netlink socket."""
        ...


def _open_genl(netns: str | None) -> GenlWireGuard:
    """A ``WireGuard`` socket in ``netns`` (a name under /var/run/netns; ``None``: ours).

    The socket is made by a thread inside the namespace
    (:func:`overlayd_linux.netlink.socket_in`), not by pyroute2's forked helper.
    """
    from pyroute2 import WireGuard

    if not netns:
        genl: GenlWireGuard = WireGuard()
        return genl
    fd = open_network_namespace(netns_path(netns))
    try:
        sock = socket_in(fd, socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_GENERIC)
    finally:
        os.close(fd)
    genl = WireGuard(fileno=sock.detach())
    return genl


def probe() -> bool:
    """True if the kernel offers WireGuard (the genl family resolves).

    Resolving the family autoloads the module where it is installed
    (``MODULE_ALIAS_GENL_FAMILY``); ``ENOENT`` means no module.
    """
    try:
        genl = _open_genl(None)
    except ImportError:
        return False
    except NETLINK_ERRORS as exc:
        code = error_code(exc)
        if code in {errno.ENOENT, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT}:
            return False
        raise DeviceError(
            f"probing for kernel WireGuard support failed: {exc}",
            op="probe",
            driver="wireguard",
        ) from exc
    genl.close()
    return True


# ------------------------------------------------------------------ translation


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def peer_messages(op: PeerOp, per_message: int = ALLOWED_IPS_PER_MESSAGE) -> list[dict[str, Any]]:
    """The pyroute2 ``peer=`` dicts for one operation (several for long IP lists)."""
    if op.remove:
        return [{"public_key": op.public_key, "remove": True}]
    first: dict[str, Any] = {"public_key": op.public_key}
    if op.update_only:
        first["update_only"] = True
    if op.preshared_key is not None:
        first["preshared_key"] = op.preshared_key.to_base64()
    if op.endpoint is not None:
        first["endpoint_addr"], first["endpoint_port"] = _split_endpoint(op.endpoint)
    if op.persistent_keepalive_interval is not None:
        first["persistent_keepalive"] = op.persistent_keepalive_interval
    if op.replace_allowed_ips:
        first["replace_allowed_ips"] = True
    # protocol_version: wireguard.h says leave it unset; pyroute2 has no field.
    ips = list(op.allowed_ips)
    chunks = [ips[i : i + per_message] for i in range(0, len(ips), per_message)]
    if chunks:
        first["allowed_ips"] = chunks[0]
    messages = [first]
    for chunk in chunks[1:]:
        # The peer exists after the first message; later fragments only append.
        messages.append({"public_key": op.public_key, "update_only": True, "allowed_ips": chunk})
    return messages


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def _key_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("ascii")
    return str(value)


def parse_info(messages: Iterable[Any]) -> DeviceState:
    """Build a :class:`DeviceState` from ``WireGuard.info()``; merges split peers."""
    private: PrivateKey | None = None
    public: str | None = None
    listen_port: int | None = None
    fwmark = 0
    peers: dict[str, dict[str, Any]] = {}
    for msg in messages:
        priv_text = _key_text(_attr(msg, "WGDEVICE_A_PRIVATE_KEY"))
        if priv_text is not None:
            key = PrivateKey.from_base64(priv_text)
            private = None if key.is_zero() else key
        pub_text = _key_text(_attr(msg, "WGDEVICE_A_PUBLIC_KEY"))
        if pub_text is not None and pub_text != _ZERO_KEY_B64:
            public = pub_text
        port = _attr(msg, "WGDEVICE_A_LISTEN_PORT")
        if port is not None:
            listen_port = int(port) or None
        mark = _attr(msg, "WGDEVICE_A_FWMARK")
        if mark is not None:
            fwmark = int(mark)
        for peer in _attr(msg, "WGDEVICE_A_PEERS") or ():
            pk = _key_text(_attr(peer, "WGPEER_A_PUBLIC_KEY"))
            if pk is None:
                continue
            # A continuation carries only the key and more allowed IPs.
            entry = peers.setdefault(pk, {"public_key": pk, "allowed_ips": []})
            _merge_peer(entry, peer)
    return DeviceState(
        private_key=private,
        public_key=public,
        listen_port=listen_port,
        fwmark=fwmark,
        peers=tuple(
            PeerState(**{**e, "allowed_ips": tuple(e["allowed_ips"])}) for e in peers.values()
        ),
    )


def _merge_peer(entry: dict[str, Any], peer: Any) -> None:
    psk = _key_text(_attr(peer, "WGPEER_A_PRESHARED_KEY"))
    if psk is not None:
        key = PresharedKey.from_base64(psk)
        entry["preshared_key"] = None if key.is_zero() else key
    endpoint = _attr(peer, "WGPEER_A_ENDPOINT")
    if endpoint is not None and endpoint.get("port"):
        addr = endpoint["addr"]
        text = f"[{addr}]:{endpoint['port']}" if ":" in addr else f"{addr}:{endpoint['port']}"
        entry["endpoint"] = normalize_endpoint(text)
    for name, field in (
        ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", "persistent_keepalive_interval"),
        ("WGPEER_A_RX_BYTES", "rx_bytes"),
        ("WGPEER_A_TX_BYTES", "tx_bytes"),
        ("WGPEER_A_PROTOCOL_VERSION", "protocol_version"),
    ):
        value = _attr(peer, name)
        if value is not None:
            entry[field] = int(value)
    handshake = _attr(peer, "WGPEER_A_LAST_HANDSHAKE_TIME")
    if handshake is not None:
        entry["last_handshake_time_sec"] = int(handshake["tv_sec"])
        entry["last_handshake_time_nsec"] = int(handshake["tv_nsec"])
    for ip in _attr(peer, "WGPEER_A_ALLOWEDIPS") or ():
        addr = ip.get("addr") if hasattr(ip, "get") else None
        if addr:
            entry["allowed_ips"].append(normalize_allowed_ip(addr))


# ------------------------------------------------------------------ backend


@contextmanager
def _genl_errors(name: str, op: str, *, peers: bool) -> Iterator[None]:
    try:
        yield
    except NETLINK_ERRORS as exc:
        code = error_code(exc) or 0
        if code == errno.ENODEV:
            raise NotFound(f"kernel WireGuard device {name} does not exist") from exc
        cls = PeerError if peers else DeviceError
        raise cls(
            f"{op} on kernel WireGuard device {name} failed with errno {code} "
            f"({errno.errorcode.get(code, '?')}): {exc}",
            op=op,
            driver="wireguard",
        ) from exc


class KernelBackend(WgBackend):
    """:class:`~overlayd_wireguard.backend.WgBackend` for the Linux module."""

    kind = "kernel"

    def __init__(
        self,
        *,
        links: LinkAdapter | None = None,
        genl_factory: Callable[[str | None], GenlWireGuard] | None = None,
        allowed_ips_per_message: int = ALLOWED_IPS_PER_MESSAGE,
    ) -> None:
        self.links: LinkAdapter = links if links is not None else PyRoute2Links()
        self._genl_factory = genl_factory or _open_genl
        self._per_message = allowed_ips_per_message
        self._netns: dict[str, str | None] = {}

    def _ensure_device(self, name: str, config: DeviceConfig) -> DeviceState:
        """Create the ``wireguard`` link if absent and configure it."""
        self.links.ensure_wireguard_link(name, netns=config.netns)
        self._netns[name] = config.netns
        self.apply(
            name,
            SetRequest(
                private_key=config.private_key,
                listen_port=config.listen_port,
                fwmark=config.fwmark,
            ),
        )
        self.links.configure(name, mtu=config.mtu, addresses=config.addresses, netns=config.netns)
        return self.get(name)

    def _delete_device(self, name: str) -> bool:
        """Delete the link; return whether it existed."""
        netns = self._netns.pop(name, None)
        return self.links.delete_link(name, netns=netns)

    def _apply(self, name: str, request: SetRequest, peers: Sequence[PeerConfig] | None) -> None:
        """Send ``request`` as netlink messages (device first, then one per peer).

        ``peers`` is accepted for the backend protocol; the kernel keeps the
        configuration itself, so nothing is recorded here.
        """
        if request.is_empty():
            return
        genl = self._genl_factory(self._netns.get(name))
        try:
            private = (
                request.private_key.to_base64()
                if request.private_key is not None
                else _ZERO_KEY_B64
                if request.clear_private_key
                else None
            )
            if (
                private is not None
                or request.listen_port is not None
                or (request.fwmark is not None)
            ):
                with _genl_errors(name, "set device", peers=False):
                    genl.set(
                        name,
                        listen_port=request.listen_port,
                        fwmark=request.fwmark,
                        private_key=private,
                    )
            if request.replace_peers:
                keep = {p.public_key for p in request.peers}
                with _genl_errors(name, "get", peers=False):
                    current = parse_info(genl.info(name))
                for peer in current.peers:
                    if peer.public_key not in keep:
                        with _genl_errors(name, "remove peer", peers=True):
                            genl.set(
                                name,
                                peer={"public_key": peer.public_key, "remove": True},
                            )
            for op in request.peers:
                for message in peer_messages(op, self._per_message):
                    with _genl_errors(name, "set peer", peers=True):
                        genl.set(name, peer=message)
        finally:
            genl.close()

    def get(self, name: str) -> DeviceState:
        """Dump the device."""
        genl = self._genl_factory(self._netns.get(name))
        try:
            with _genl_errors(name, "get", peers=False):
                return parse_info(genl.info(name))
        finally:
            genl.close()

    def close(self) -> None:
        """Nothing is held between calls."""
