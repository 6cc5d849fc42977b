from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import time
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pytest

from overlayd.config import EngineConfig
from overlayd.errors import ConfigError
from overlayd.errors import NotSupported
from overlayd.errors import PeerError
from overlayd.model import AttachRequest
from overlayd.model import Device
from overlayd.model import DeviceSpec
from overlayd.model import GuestManagedHandle
from overlayd.model import PeerChange
from overlayd.model import ReconcileRequest
from overlayd.plugins import DriverContext
from overlayd.testing.conformance import AttachConformance
from overlayd.testing.conformance import LifecycleConformance
from overlayd.testing.conformance import PeerConformance
from overlayd.testing.nodes import node_info
from overlayd_wireguard.driver import WireGuardDriver
from overlayd_wireguard.keys import generate_keypair
from overlayd_wireguard.uapi import UapiClient
from overlayd_wireguard.userspace import UserspaceBackend

from .conftest import RecordingLinks
from .conftest import fake_backend
from .conftest import wait_until

DEVICE_KEY = "YOnqvqXWSCdqVaX4tsnUpZ2zxJ0I+dJcuZ7Lj1gRe3Y="


@dataclass
class FakeHostNet:
    """HostNet double: a 'tun link' exists while its UAPI socket answers."""

    sock_dir: Path
    routes: dict[str, set[str]] = field(default_factory=dict)
    route_calls: int = 0

    def add_routes(self, ifname: str, prefixes: Iterable[str], *, netns: str | None) -> None:
        self.route_calls += 1
        self.routes.setdefault(ifname, set()).update(prefixes)

    def delete_routes(self, ifname: str, prefixes: Iterable[str], *, netns: str | None) -> None:
        self.route_calls += 1
        self.routes.setdefault(ifname, set()).difference_update(prefixes)

    def wireguard_links(self, *, netns: str | None) -> dict[str, str]:
        client = UapiClient(self.sock_dir, timeout=1.0)
        return {p.stem: "tun" for p in self.sock_dir.glob("*.sock") if client.alive(p.stem)}

    def underlay_address(self, *, netns: str | None) -> str | None:
        return self.underlay

    underlay: str | None = None


def make_driver(sock_dir: Path) -> tuple[WireGuardDriver, UserspaceBackend, FakeHostNet]:
    backend = fake_backend(sock_dir)
    hostnet = FakeHostNet(sock_dir)
    return WireGuardDriver(backend=backend, hostnet=hostnet), backend, hostnet


def configured(sock_dir: Path, **options: Any) -> EngineConfig:
    return EngineConfig(
        drivers=[], driver_settings={"wireguard": {"socket_dir": str(sock_dir), **options}}
    )


@contextlib.contextmanager
def driver_on(
    sock_dir: Path, *, start: bool = True, **options: Any
) -> Iterator[tuple[WireGuardDriver, UserspaceBackend, FakeHostNet]]:
    """A driver on fake wireguard-go with sockets in ``sock_dir``, configured with
    ``options`` and started (unless ``start`` is false); its devices and processes
    are removed at the end."""
    drv, backend, hostnet = make_driver(sock_dir)
    try:
        if start:
            drv.overlayd_configure(configured(sock_dir, **options))
            drv.overlayd_startup(DriverContext(data_dir=None, emit=lambda e: None))
        yield drv, backend, hostnet
    finally:
        backend.close()
        backend.delete_all()


class TestWireGuardConformance(PeerConformance, AttachConformance, LifecycleConformance):
    """The conformance kit against fake wireguard-go processes (UAPI only)."""

    @pytest.fixture
    def driver(self, sock_dir: Path) -> Iterator[WireGuardDriver]:
        with driver_on(sock_dir, start=False) as (drv, _, _):
            yield drv

    @pytest.fixture
    def engine_config(self, sock_dir: Path) -> EngineConfig:
        return configured(sock_dir)


@pytest.fixture
def started(sock_dir: Path) -> Iterator[tuple[WireGuardDriver, UserspaceBackend, FakeHostNet]]:
    with driver_on(sock_dir, endpoint="node1.example.invalid:51820") as running:
        yield running


@pytest.fixture
def global_device(started: tuple[WireGuardDriver, UserspaceBackend, FakeHostNet]) -> Device:
    """The global device ``zl-t-g`` (:func:`wg_spec`) on the started driver."""
    dev = started[0].overlayd_device_create(spec=wg_spec())
    assert dev is not None
    return dev


def wg_spec(name: str = "zl-t-g", address: str = "10.60.0.1/16", port: int = 51820) -> DeviceSpec:
    return DeviceSpec(
        kind="wireguard",
        name=name,
        owner="base",
        addresses=(ipaddress.ip_interface(address),),
        listen_port=port,
        private_key=DEVICE_KEY,
        subnet=ipaddress.ip_interface(address).network,
    )


def keys(n: int) -> list[str]:
    return [generate_keypair()[1] for _ in range(n)]


def test_unknown_config_key_is_named(sock_dir: Path) -> None:
    drv, _, _ = make_driver(sock_dir)
    with pytest.raises(ConfigError, match="bogus"):
        drv.overlayd_configure(configured(sock_dir, bogus=1))
    with pytest.raises(ConfigError, match="backend"):
        drv.overlayd_configure(configured(sock_dir, backend="quantum"))


def test_startup_without_any_implementation_is_not_supported(sock_dir: Path) -> None:
    drv = WireGuardDriver()
    drv.overlayd_configure(
        configured(sock_dir, backend="userspace", userspace_command="no-such-wireguard-go")
    )
    with pytest.raises(NotSupported, match="no-such-wireguard-go"):
        drv.overlayd_startup(DriverContext(data_dir=None, emit=lambda e: None))


def test_device_defaults_and_idempotent_adopt(
    started: tuple[WireGuardDriver, UserspaceBackend, FakeHostNet], sock_dir: Path
) -> None:
    drv, backend, _ = started
    spec = wg_spec().model_copy(update={"mtu": None})
    dev = drv.overlayd_device_create(spec=spec)
    assert dev is not None
    assert dev.mtu == 1420
    assert dev.listen_port == 51820
    links = backend.links
    assert isinstance(links, RecordingLinks)
    assert links.configured[-1] == ("zl-t-g", 1420, ("10.60.0.1/16",), None)
    n = len(links.configured)
    again = drv.overlayd_device_create(spec=spec)
    assert again == dev
    assert len(links.configured) == n  # nothing touched on an unchanged device
    assert [d.name for d in drv.overlayd_device_list(kind="wireguard")] == ["zl-t-g"]
    assert drv.overlayd_device_list(kind="bridge") == []


def test_adopt_after_driver_restart_keeps_peers(sock_dir: Path) -> None:
    with driver_on(sock_dir) as (drv, backend, _):
        dev = drv.overlayd_device_create(spec=wg_spec())
        assert dev is not None
        (pk,) = keys(1)
        drv.overlayd_peer_apply(
            device=dev,
            changes=[
                PeerChange(public_key=pk, allowed_ips=(ipaddress.ip_network("10.60.1.0/24"),))
            ],
        )
        drv.overlayd_shutdown()  # the process keeps running
        pid = backend.pid("zl-t-g")
        with driver_on(sock_dir) as (drv2, backend2, _):
            # The engine re-applies recorded peers to a device it lists as present.
            assert [d.name for d in drv2.overlayd_device_list(kind="wireguard")] == ["zl-t-g"]
            drv2.overlayd_peer_apply(
                device=dev,
                changes=[
                    PeerChange(public_key=pk, allowed_ips=(ipaddress.ip_network("10.60.1.0/24"),))
                ],
            )
            st = drv2.overlayd_peer_status(device=dev)
            assert st is not None
            assert [p.public_key for p in st] == [pk]
            assert backend2.get("zl-t-g").public_key == dev.public_key
            assert pid is not None
            os.kill(pid, 0)  # same process: adopted, not restarted


def test_peer_apply_sends_only_differences(
    started: tuple[WireGuardDriver, UserspaceBackend, FakeHostNet], global_device: Device
) -> None:
    drv, backend, _ = started
    dev = global_device
    a, b = keys(2)
    sent: list[Any] = []
    real_set = backend.uapi.set

    def spy(name: str, request: Any) -> None:
        sent.append(request)
        real_set(name, request)

    backend.uapi.set = spy  # type: ignore[method-assign,assignment]
    net = ipaddress.ip_network
    batch = [
        PeerChange(public_key=a, endpoint="127.0.0.1:1000", allowed_ips=(net("10.60.1.0/24"),)),
        PeerChange(public_key=b, endpoint="127.0.0.1:1001", allowed_ips=(net("10.60.2.0/24"),)),
    ]
    drv.overlayd_peer_apply(device=dev, changes=batch)
    assert len(sent) == 1 and len(sent[0].peers) == 2  # one transaction for the batch
    # Re-applying the same batch (equal, not the same objects) sends nothing at all.
    drv.overlayd_peer_apply(device=dev, changes=[c.model_copy() for c in batch])
    assert len(sent) == 1
    # Adding an allowed IP is an append (no replace), on b only, update_only.
    drv.overlayd_peer_apply(
        device=dev, changes=[PeerChange(public_key=b, add_allowed_ips=(net("10.60.3.0/24"),))]
    )
    (op,) = sent[-1].peers
    assert op.public_key == b and op.update_only and not op.replace_allowed_ips
    assert op.allowed_ips == ("10.60.3.0/24",) and op.endpoint is None
    # Removing one is a replace with the remaining list.
    drv.overlayd_peer_apply(
        device=dev, changes=[PeerChange(public_key=b, remove_allowed_ips=(net("10.60.2.0/24"),))]
    )
    (op,) = sent[-1].peers
    assert op.replace_allowed_ips and op.allowed_ips == ("10.60.3.0/24",)
    # Keepalive only -> only keepalive.
    drv.overlayd_peer_apply(
        device=dev, changes=[PeerChange(public_key=a, persistent_keepalive_secs=25)]
    )
    (op,) = sent[-1].peers
    assert op.persistent_keepalive_interval == 25 and not op.allowed_ips and op.endpoint is None
    st = {p.public_key: p for p in drv.overlayd_peer_status(device=dev) or []}
    assert st[a].persistent_keepalive_secs == 25
    assert st[b].allowed_ips == (net("10.60.3.0/24"),)
    # A later change to the same key in one batch wins.
    drv.overlayd_peer_apply(
        device=dev,
        changes=[
            PeerChange(public_key=a, remove=True),
            PeerChange(public_key=a, endpoint="127.0.0.1:2000"),
        ],
    )
    st = {p.public_key: p for p in drv.overlayd_peer_status(device=dev) or []}
    assert st[a].endpoint == "127.0.0.1:2000" and st[a].allowed_ips == ()


def test_hostname_endpoint_is_resolved(
    started: tuple[WireGuardDriver, UserspaceBackend, FakeHostNet], global_device: Device
) -> None:
    drv, _, _ = started
    dev = global_device
    (a,) = keys(1)
    drv.overlayd_peer_apply(
        device=dev, changes=[PeerChange(public_key=a, endpoint="localhost:51900")]
    )
    (p,) = drv.overlayd_peer_status(device=dev) or []
    assert p.endpoint in {"127.0.0.1:51900", "[::1]:51900"}
    with pytest.raises(PeerError, match="cannot resolve"):
        drv.overlayd_peer_apply(
            device=dev, changes=[PeerChange(public_key=a, endpoint="no-such-host.invalid:1")]
        )


def test_handshake_and_counters_are_reported(
    started: tuple[WireGuardDriver, UserspaceBackend, FakeHostNet], sock_dir: Path
) -> None:
    """An already running device (here an in-process fake) is adopted; stats pass through."""
    from overlayd_wireguard.fakeuapi import FakeUapiServer

    drv, _, _ = started
    with FakeUapiServer(sock_dir, "zl-t-h") as server:
        dev = drv.overlayd_device_create(spec=wg_spec("zl-t-h", port=51830))
        assert dev is not None
        (a,) = keys(1)
        drv.overlayd_peer_apply(device=dev, changes=[PeerChange(public_key=a)])
        (p,) = drv.overlayd_peer_status(device=dev) or []
        assert p.last_handshake_unix_secs == 0
        server.set_peer_stats(a, rx_bytes=1234, tx_bytes=5678, handshake=(1795392827, 5))
        (p,) = drv.overlayd_peer_status(device=dev) or []
        assert (p.last_handshake_unix_secs, p.rx_bytes, p.tx_bytes) == (1795392827, 1234, 5678)
        # boringtun reports the elapsed time instead of a Unix time.
        server.set_peer_stats(a, handshake=(7, 0))
        (p,) = drv.overlayd_peer_status(device=dev) or []
        assert abs(p.last_handshake_unix_secs - (time.time() - 7)) < 3
        assert drv.overlayd_device_delete(device=dev) is True


def test_routes_for_prefixes_outside_the_device_prefix(
    started: tuple[WireGuardDriver, UserspaceBackend, FakeHostNet],
) -> None:
    drv, _, hostnet = started
    dedicated = drv.overlayd_device_create(
        spec=wg_spec("zl-t-d", "10.60.4.2/32", 51821).model_copy(update={"owner": "service:web"})
    )
    assert dedicated is not None
    a, b = keys(2)
    net = ipaddress.ip_network
    drv.overlayd_peer_apply(
        device=dedicated,
        changes=[
            PeerChange(public_key=a, allowed_ips=(net("10.60.8.0/22"), net("10.60.4.2/32"))),
            PeerChange(public_key=b, allowed_ips=(net("10.60.12.0/22"),)),
        ],
    )
    assert hostnet.routes["zl-t-d"] == {"10.60.8.0/22", "10.60.12.0/22"}
    drv.overlayd_peer_apply(device=dedicated, changes=[PeerChange(public_key=b, remove=True)])
    assert hostnet.routes["zl-t-d"] == {"10.60.8.0/22"}
    # The global device's prefix covers the cluster: no routes.
    glob = drv.overlayd_device_create(spec=wg_spec())
    assert glob is not None
    drv.overlayd_peer_apply(
        device=glob, changes=[PeerChange(public_key=b, allowed_ips=(net("10.60.12.0/22"),))]
    )
    assert not hostnet.routes.get("zl-t-g")


def test_supervisor_restart_reapplies_peers_and_routes(
    started: tuple[WireGuardDriver, UserspaceBackend, FakeHostNet],
) -> None:
    drv, backend, hostnet = started
    dev = drv.overlayd_device_create(spec=wg_spec("zl-t-d", "10.60.4.2/32", 51821))
    assert dev is not None
    (a,) = keys(1)
    drv.overlayd_peer_apply(
        device=dev,
        changes=[PeerChange(public_key=a, allowed_ips=(ipaddress.ip_network("10.60.8.0/22"),))],
    )
    calls = hostnet.route_calls
    pid = backend.pid("zl-t-d")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: backend.restarts("zl-t-d") == 1 and hostnet.route_calls > calls)
    (p,) = drv.overlayd_peer_status(device=dev) or []
    assert p.public_key == a and p.allowed_ips == (ipaddress.ip_network("10.60.8.0/22"),)
    assert hostnet.routes["zl-t-d"] == {"10.60.8.0/22"}


def guest_request(node_key: str, listen_port: int) -> AttachRequest:
    """Guest ``vm-1`` of service ``vm`` at 10.60.16.5/22, the node's WireGuard
    device listening on ``listen_port``."""
    return AttachRequest(
        handle=GuestManagedHandle(id="vm-1"),
        service="vm",
        segment=Device(kind="bridge", name="zl-t-b", owner="service:vm", driver="linux_bridge"),
        address=ipaddress.ip_interface("10.60.16.5/22"),
        gateway=ipaddress.ip_address("10.60.16.1"),
        node=node_info(
            "10.60.0.0/16", "10.60.0.0/18", public_key=node_key, listen_port=listen_port
        ),
    )


def test_guest_attach_config(
    started: tuple[WireGuardDriver, UserspaceBackend, FakeHostNet],
) -> None:
    drv, _, _ = started
    (node_key,) = keys(1)
    request = guest_request(node_key, 51820).model_copy(
        update={"dns_server": ipaddress.ip_address("10.60.16.1"), "dns_domain": "prod.local"}
    )
    att = drv.overlayd_attach(request=request)
    assert att is not None and att.guest is not None
    g = att.guest
    assert g.overlay_ip == ipaddress.ip_address("10.60.16.5") and g.prefix_len == 22
    assert g.listen_port == 51820
    from overlayd.keys import public_key

    assert public_key(g.private_key) == g.public_key
    (peer,) = g.peers
    assert peer.public_key == node_key
    assert peer.endpoint == "node1.example.invalid:51820"
    assert peer.allowed_ips == (ipaddress.ip_network("10.60.0.0/16"),)
    assert peer.persistent_keepalive_secs == 25
    assert g.dns_domain == "prod.local"
    assert drv.overlayd_detach(attachment=att) is True
    assert drv.overlayd_detach(attachment=att) is False


def test_guest_endpoint_defaults_to_the_underlay_address(sock_dir: Path) -> None:
    (node_key,) = keys(1)
    with driver_on(sock_dir) as (drv, _, hostnet):

        def endpoint() -> str | None:
            att = drv.overlayd_attach(request=guest_request(node_key, 51900))
            assert att is not None and att.guest is not None
            return att.guest.peers[0].endpoint

        hostnet.underlay = "10.0.9.10"
        assert endpoint() == "10.0.9.10:51900"
        hostnet.underlay = "fd00:9::10"
        assert endpoint() == "[fd00:9::10]:51900"
        hostnet.underlay = None
        assert endpoint() is None


def test_reconcile_never_touches_foreign_devices(
    started: tuple[WireGuardDriver, UserspaceBackend, FakeHostNet], sock_dir: Path
) -> None:
    from overlayd_wireguard.fakeuapi import FakeUapiServer

    drv, _, _ = started
    with FakeUapiServer(sock_dir, "wg-other"):
        report = drv.overlayd_reconcile(request=ReconcileRequest())
        assert report is not None and report.removed == ()
        assert UapiClient(sock_dir).alive("wg-other")
