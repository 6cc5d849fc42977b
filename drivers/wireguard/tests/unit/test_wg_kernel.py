"""Kernel backend: translation and error mapping against a fake genl socket.

This machine has no wireguard module, so netlink round trips are not run here.
"""

from __future__ import annotations

import base64
import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic.wireguard import wgmsg

from overlayd.errors import ConfigError
from overlayd.errors import DeviceError
from overlayd.errors import InvalidRequest
from overlayd.errors import NotFound
from overlayd.errors import NotSupported
from overlayd.errors import PeerError
from overlayd_wireguard.backend import select_backend
from overlayd_wireguard.kernel import KernelBackend
from overlayd_wireguard.kernel import parse_info
from overlayd_wireguard.kernel import peer_messages
from overlayd_wireguard.kernel import probe
from overlayd_wireguard.keys import PresharedKey
from overlayd_wireguard.keys import PrivateKey
from overlayd_wireguard.uapi import PeerOp
from overlayd_wireguard.uapi import PeerState
from overlayd_wireguard.uapi import SetRequest
from overlayd_wireguard.userspace import UserspaceBackend

from .conftest import assert_device
from .conftest import peer_with_every_field
from .conftest import pub


def _allowed(cidr: str) -> dict[str, Any]:
    addr, mask = cidr.split("/")
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return {
        "attrs": [
            ["WGALLOWEDIP_A_FAMILY", fam],
            ["WGALLOWEDIP_A_IPADDR", socket.inet_pton(fam, addr)],
            ["WGALLOWEDIP_A_CIDR_MASK", int(mask)],
        ]
    }


def _wire(attrs: list[Any]) -> Any:
    """Encode and decode a real pyroute2 wgmsg, as the kernel would send it."""
    msg = wgmsg()
    msg["cmd"] = 0
    msg["version"] = 1
    msg["attrs"] = [["WGDEVICE_A_IFNAME", "wg0"], *attrs]
    msg.encode()
    out = wgmsg(msg.data)
    out.decode()
    return out


def test_probe_matches_kernel_module_presence() -> None:
    has_module = Path("/sys/module/wireguard").exists()
    assert probe() is has_module


@pytest.mark.skipif(Path("/sys/module/wireguard").exists(), reason="module loaded")
def test_select_backend_without_kernel_module() -> None:
    with pytest.raises(NotSupported, match="backend = 'userspace'"):
        select_backend("kernel")
    assert isinstance(select_backend("auto", supervise=False), UserspaceBackend)
    assert isinstance(select_backend("userspace", supervise=False), UserspaceBackend)
    with pytest.raises(NotSupported, match="not on PATH"):
        select_backend("auto", command=("/nonexistent/wireguard-go",))


def test_select_backend_rejects_unknown_name() -> None:
    with pytest.raises(ConfigError, match="unknown WireGuard backend 'bogus'"):
        select_backend("bogus")  # type: ignore[arg-type]  # invalid on purpose


def test_parse_info_reads_every_attribute_and_coalesces_split_peers() -> None:
    key = PrivateKey.generate()
    psk = PresharedKey.generate()
    p1, p2 = pub(), pub()
    first = _wire(
        [
            ["WGDEVICE_A_PRIVATE_KEY", key.to_base64()],
            ["WGDEVICE_A_PUBLIC_KEY", key.public_key()],
            ["WGDEVICE_A_LISTEN_PORT", 51820],
            ["WGDEVICE_A_FWMARK", 3],
            [
                "WGDEVICE_A_PEERS",
                [
                    {
                        "attrs": [
                            ["WGPEER_A_PUBLIC_KEY", p1],
                            ["WGPEER_A_PRESHARED_KEY", psk.to_base64()],
                            ["WGPEER_A_ENDPOINT", {"addr": "fd00::2", "port": 51820}],
                            ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25],
                            [
                                "WGPEER_A_LAST_HANDSHAKE_TIME",
                                {"tv_sec": 100, "tv_nsec": 5},
                            ],
                            ["WGPEER_A_RX_BYTES", 10],
                            ["WGPEER_A_TX_BYTES", 20],
                            ["WGPEER_A_ALLOWEDIPS", [_allowed("10.98.0.0/24")]],
                            ["WGPEER_A_PROTOCOL_VERSION", 1],
                        ]
                    }
                ],
            ],
        ]
    )
    # Continuation message: same peer with only more allowed IPs, then a new peer.
    second = _wire(
        [
            [
                "WGDEVICE_A_PEERS",
                [
                    {
                        "attrs": [
                            ["WGPEER_A_PUBLIC_KEY", p1],
                            ["WGPEER_A_ALLOWEDIPS", [_allowed("fd00::/64")]],
                        ]
                    },
                    {
                        "attrs": [
                            ["WGPEER_A_PUBLIC_KEY", p2],
                            [
                                "WGPEER_A_PRESHARED_KEY",
                                base64.b64encode(bytes(32)).decode(),
                            ],
                            ["WGPEER_A_ENDPOINT", {"addr": "192.0.2.2", "port": 7}],
                        ]
                    },
                ],
            ]
        ]
    )
    assert_device(
        parse_info([first, second]),
        key,
        fwmark=3,
        peers=(
            peer_with_every_field(p1, psk, ("10.98.0.0/24", "fd00::/64")),
            PeerState(public_key=p2, endpoint="192.0.2.2:7"),
        ),
    )


def test_peer_messages_translate_every_field() -> None:
    p = pub()
    psk = PresharedKey.generate()
    op = PeerOp(
        public_key=p,
        update_only=True,
        preshared_key=psk,
        endpoint="[fd00::1]:51820",
        persistent_keepalive_interval=25,
        replace_allowed_ips=True,
        allowed_ips=("10.0.0.0/24",),
        protocol_version=1,
    )
    assert peer_messages(op) == [
        {
            "public_key": p,
            "update_only": True,
            "preshared_key": psk.to_base64(),
            "endpoint_addr": "fd00::1",
            "endpoint_port": 51820,
            "persistent_keepalive": 25,
            "replace_allowed_ips": True,
            "allowed_ips": ["10.0.0.0/24"],
        }
    ]
    assert peer_messages(PeerOp(public_key=p, remove=True)) == [{"public_key": p, "remove": True}]


def test_peer_messages_chunk_long_allowed_ip_lists() -> None:
    p = pub()
    ips = tuple(f"10.0.{i}.0/24" for i in range(5))
    msgs = peer_messages(
        PeerOp(public_key=p, replace_allowed_ips=True, allowed_ips=ips), per_message=2
    )
    assert msgs == [
        {"public_key": p, "replace_allowed_ips": True, "allowed_ips": list(ips[:2])},
        {"public_key": p, "update_only": True, "allowed_ips": list(ips[2:4])},
        {"public_key": p, "update_only": True, "allowed_ips": list(ips[4:])},
    ]


@dataclass
class FakeGenl:
    """Records pyroute2 WireGuard calls; ``info`` returns prepared messages."""

    info_messages: list[Any] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    fail_with: OSError | None = None
    closed: int = 0

    def set(self, interface: str, **fields: Any) -> Any:
        """Record the message; the fields not given are recorded as None (their default)."""
        if self.fail_with is not None:
            raise self.fail_with
        unset = dict.fromkeys(("listen_port", "fwmark", "private_key", "peer"))
        unknown = fields.keys() - unset.keys()
        assert not unknown, f"GenlWireGuard.set takes no {sorted(unknown)}"
        self.calls.append({"interface": interface, **unset, **fields})
        return None

    def info(self, interface: str) -> Any:
        if self.fail_with is not None:
            raise self.fail_with
        return self.info_messages

    def close(self) -> None:
        self.closed += 1


@dataclass
class RecordingLinks:
    events: list[tuple[str, str, str | None]] = field(default_factory=list)

    def wait_link(self, name: str, *, netns: str | None, timeout: float) -> None:
        self.events.append(("wait", name, netns))

    def configure(
        self, name: str, *, mtu: int, addresses: Sequence[str], netns: str | None
    ) -> None:
        self.events.append(("configure", name, netns))

    def ensure_wireguard_link(self, name: str, *, netns: str | None) -> None:
        self.events.append(("ensure", name, netns))

    def delete_link(self, name: str, *, netns: str | None) -> bool:
        self.events.append(("delete", name, netns))
        return True


def test_kernel_backend_apply_sends_device_then_peers() -> None:
    genl = FakeGenl()
    opened: list[str | None] = []

    def factory(netns: str | None) -> FakeGenl:
        opened.append(netns)
        return genl

    links = RecordingLinks()
    backend = KernelBackend(links=links, genl_factory=factory)
    key = PrivateKey.generate()
    p1 = pub()
    backend.ensure_device(
        "wgk0", private_key=key, listen_port=51820, netns="nsx", addresses=["10.0.0.1/24"]
    )
    assert links.events == [("ensure", "wgk0", "nsx"), ("configure", "wgk0", "nsx")]
    assert genl.calls[0] == {
        "interface": "wgk0",
        "listen_port": 51820,
        "fwmark": None,
        "private_key": key.to_base64(),
        "peer": None,
    }
    genl.calls.clear()
    backend.apply("wgk0", SetRequest(peers=(PeerOp(public_key=p1, allowed_ips=("10.1.0.0/24",)),)))
    assert genl.calls == [
        {
            "interface": "wgk0",
            "listen_port": None,
            "fwmark": None,
            "private_key": None,
            "peer": {"public_key": p1, "allowed_ips": ["10.1.0.0/24"]},
        }
    ]
    assert set(opened) == {"nsx"}
    assert genl.closed == len(opened)
    assert backend.delete_device("wgk0") is True
    assert links.events[-1] == ("delete", "wgk0", "nsx")


def test_kernel_backend_emulates_replace_peers() -> None:
    keep, gone = pub(), pub()
    genl = FakeGenl(
        info_messages=[
            _wire(
                [
                    [
                        "WGDEVICE_A_PEERS",
                        [
                            {"attrs": [["WGPEER_A_PUBLIC_KEY", keep]]},
                            {"attrs": [["WGPEER_A_PUBLIC_KEY", gone]]},
                        ],
                    ]
                ]
            )
        ]
    )
    backend = KernelBackend(links=RecordingLinks(), genl_factory=lambda ns: genl)
    backend.apply("wgk0", SetRequest(replace_peers=True, peers=(PeerOp(public_key=keep),)))
    assert [c["peer"] for c in genl.calls] == [
        {"public_key": gone, "remove": True},
        {"public_key": keep},
    ]


def test_kernel_backend_clear_private_key_sends_zero_key() -> None:
    genl = FakeGenl()
    backend = KernelBackend(links=RecordingLinks(), genl_factory=lambda ns: genl)
    backend.apply("wgk0", SetRequest(clear_private_key=True))
    assert genl.calls[0]["private_key"] == base64.b64encode(bytes(32)).decode()


def test_kernel_backend_maps_netlink_errors() -> None:
    genl = FakeGenl(fail_with=NetlinkError(errno.ENODEV, "No such device"))
    backend = KernelBackend(links=RecordingLinks(), genl_factory=lambda ns: genl)
    with pytest.raises(NotFound, match="wgk0 does not exist"):
        backend.get("wgk0")
    genl.fail_with = NetlinkError(errno.EINVAL, "Invalid argument")
    with pytest.raises(PeerError, match=r"set peer .* errno 22 \(EINVAL\)"):
        backend.apply("wgk0", SetRequest(peers=(PeerOp(public_key=pub()),)))
    with pytest.raises(DeviceError, match="set device") as info:
        backend.apply("wgk0", SetRequest(listen_port=1))
    assert not isinstance(info.value, PeerError)
    assert genl.closed == 3


def test_kernel_backend_empty_request_opens_nothing() -> None:
    opened: list[str | None] = []

    def factory(netns: str | None) -> FakeGenl:
        opened.append(netns)
        return FakeGenl()

    KernelBackend(links=RecordingLinks(), genl_factory=factory).apply("wgk0", SetRequest())
    assert opened == []


def test_a_bad_interface_name_is_refused_before_netlink() -> None:
    """The backend's public methods check the name once, for both backends."""
    genl = FakeGenl()
    opened: list[str | None] = []

    def factory(netns: str | None) -> FakeGenl:
        opened.append(netns)
        return genl

    backend = KernelBackend(links=RecordingLinks(), genl_factory=factory)
    for call in (
        lambda: backend.ensure_device("a/b", private_key=PrivateKey.generate()),
        lambda: backend.delete_device("a/b"),
        lambda: backend.apply("bad name", SetRequest()),
    ):
        with pytest.raises(InvalidRequest, match="interface name"):
            call()
    assert genl.calls == [] and opened == []
