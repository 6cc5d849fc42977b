"""The real daemon with the linux_bridge driver, driven over IPC, inside throwaway namespaces.

The daemon runs as a subprocess in a throwaway "host" namespace
(``ip netns exec``), so its bridges, veths, sysctls and nft table live there.
The WireGuard device comes from the fake driver (this kernel has no WireGuard
module); everything on the container path is real: bridges, veths, routes,
nftables NAT. Containers are ``sleep`` processes in namespaces of their own,
attached by pid.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import pytest

from overlayd.client import Client
from overlayd.protocol import AttachedResponse
from overlayd.protocol import LinuxPidHandle
from overlayd.testing.daemon import DaemonProcess
from overlayd.testing.daemon import start_daemon
from overlayd.testing.nodes import lone_node
from overlayd_linux_bridge.testing import Netns
from overlayd_linux_bridge.testing import link_outside
from overlayd_linux_bridge.testing import ping
from overlayd_linux_bridge.testing import throwaway_netns
from overlayd_linux_bridge.testing import udp_probe

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

CLUSTER = "10.240.0.0/16"
SLICE = "10.240.0.0/20"


@dataclass
class Container:
    """A ``sleep`` process in its own namespace."""

    ns: Netns
    proc: subprocess.Popen[bytes]

    @property
    def handle(self) -> LinuxPidHandle:
        return LinuxPidHandle(pid=self.proc.pid)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class Daemon:
    """The daemon subprocess and what it needs to be restarted."""

    host: Netns
    workdir: Path
    make_netns: Callable[[str], Netns]
    process: DaemonProcess | None = None
    containers: list[Container] = field(default_factory=list)

    @property
    def socket(self) -> str:
        return str(self.workdir / "s.sock")

    def start(self) -> None:
        config = (
            "[drivers]\n"
            'enabled = ["linux_bridge", "fake"]\n'
            "[drivers.fake]\n"
            f'state_file = "{self.workdir / "fake-host.json"}"\n'
            "[engine]\n"
            "health_interval_secs = 0\n"
        )
        self.process = start_daemon(
            self.workdir,
            config,
            prefix=("ip", "netns", "exec", self.host.name),
            args=("--no-dns", "--log-level", "debug"),
            timeout=20,
        )

    def stop(self) -> int:
        assert self.process is not None
        return self.process.stop()

    def log(self) -> str:
        path = self.workdir / "daemon.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def container(self, role: str) -> Container:
        ns = self.make_netns(role)
        proc = subprocess.Popen(["ip", "netns", "exec", ns.name, "sleep", "600"])
        # `ip netns exec` execs sleep in place: wait until the pid is in the namespace.
        target = os.stat(ns.path).st_ino
        deadline = time.monotonic() + 5
        while os.stat(f"/proc/{proc.pid}/ns/net").st_ino != target:
            assert time.monotonic() < deadline, "container process did not enter its netns"
            time.sleep(0.01)
        c = Container(ns, proc)
        self.containers.append(c)
        return c

    def links(self) -> str:
        return self.host.ip("-o", "link", "show")

    def nft_table(self) -> str:
        """The daemon's nftables table (``inet overlayd``) in the host namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.host.name, "nft", "list", "table", "inet", "overlayd"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with throwaway_netns() as make:
        d = Daemon(make("host"), tmp_path, make)
        d.host.ip("link", "set", "lo", "up")
        try:
            d.start()
            yield d
        finally:
            for c in d.containers:
                c.kill()
            if d.process is not None:
                d.stop()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    with Client(daemon.socket, timeout=30.0) as c:
        yield c


def _setup(client: Client, *, nat: bool = False) -> None:
    name = client.setup_global_overlay(
        **lone_node("e2e", cluster_cidr=CLUSTER, slice_cidr=SLICE, nat_enabled=nat)
    )
    assert name.startswith("zl-")


def _eth0(ns: Netns) -> ipaddress.IPv4Interface:
    """The container's eth0 address with its prefix."""
    for line in ns.ip("-o", "addr", "show", "dev", "eth0").splitlines():
        words = line.split()
        if "inet" in words:
            return ipaddress.IPv4Interface(words[words.index("inet") + 1])
    raise AssertionError(f"eth0 of {ns.name} has no IPv4 address")


def _gateway(ns: Netns) -> str:
    for line in ns.ip("route").splitlines():
        if line.startswith("default via "):
            return line.split()[2]
    raise AssertionError(f"{ns.name} has no default route")


def _attach(client: Client, c: Container, service: str) -> str:
    resp = client.attach_container(c.handle, service)
    assert isinstance(resp, AttachedResponse)
    return str(resp.ip)


def test_containers_on_a_service_talk_and_services_are_separate_segments(
    daemon: Daemon, client: Client
) -> None:
    _setup(client)
    client.setup_service_overlay("web")
    client.setup_service_overlay("db")
    a, b, c = daemon.container("a"), daemon.container("b"), daemon.container("c")
    ip_a, ip_b = _attach(client, a, "web"), _attach(client, b, "web")
    ip_c = _attach(client, c, "db")
    web, db = _eth0(a.ns).network, _eth0(c.ns).network
    assert web != db
    assert ipaddress.ip_address(ip_b) in web
    assert web.subnet_of(ipaddress.IPv4Network(SLICE))
    assert db.subnet_of(ipaddress.IPv4Network(SLICE))
    assert ping(a.ns, ip_b)
    assert ping(b.ns, ip_a)
    assert ping(a.ns, _gateway(a.ns))
    assert _gateway(a.ns) == str(web.network_address + 1)
    # Another service is another layer-2 segment: bypassing the gateway fails...
    a.ns.ip("route", "add", f"{ip_c}/32", "dev", "eth0")
    assert not ping(a.ns, ip_c, timeout=1.0)
    a.ns.ip("route", "del", f"{ip_c}/32", "dev", "eth0")
    # ...and only the host's routing (through both gateways) connects them.
    assert ping(a.ns, ip_c)
    assert "eth0" in a.ns.ip("-o", "link", "show")


def test_nat_masquerades_outbound_but_not_cluster_traffic(daemon: Daemon, client: Client) -> None:
    outside = daemon.make_netns("up")
    link_outside(daemon.host, outside, "192.168.78.0/24")
    _setup(client, nat=True)
    client.setup_service_overlay("web")
    client.setup_service_overlay("db")
    a, c = daemon.container("a"), daemon.container("c")
    ip_a = _attach(client, a, "web")
    ip_c = _attach(client, c, "db")
    assert udp_probe(a.ns, "192.168.78.2", 7100, outside, 7100) == "192.168.78.1"
    # Inside the cluster CIDR addresses are kept (the exempt set).
    assert udp_probe(a.ns, ip_c, 7101, c.ns, 7101) == ip_a
    assert CLUSTER in daemon.nft_table()


def test_detach_and_dead_container_leave_nothing_behind(daemon: Daemon, client: Client) -> None:
    _setup(client, nat=True)
    client.setup_service_overlay("db")
    client.setup_service_overlay("web")
    d = daemon.container("d")
    _attach(client, d, "db")
    db_subnet = _eth0(d.ns).network
    client.detach_container(d.handle)
    a, b = daemon.container("a"), daemon.container("b")
    ip_a, ip_b = _attach(client, a, "web"), _attach(client, b, "web")
    infos = {i.ip: i for i in client.list_attachments()}
    veth_a, veth_b = infos[ip_a].interfaces[0], infos[ip_b].interfaces[0]
    assert veth_a in daemon.links()
    client.detach_container(a.handle)
    assert veth_a not in daemon.links()
    assert ip_a not in {lease.ip for lease in client.list_leases()}
    b.kill()
    report = client.reconcile()
    assert report.errors == []
    assert report.released == 1
    assert ip_b not in {lease.ip for lease in client.list_leases()}
    assert client.list_attachments() == []
    assert veth_b not in daemon.links()
    client.teardown_service_overlay("db")
    assert str(db_subnet) not in daemon.nft_table()
    # Tombstones are gone once the batched deleter has run.
    deadline = time.monotonic() + 5
    while " zx" in daemon.links() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert " zx" not in daemon.links()


def test_restart_adopts_live_attachments_without_disturbing_traffic(
    daemon: Daemon, client: Client
) -> None:
    _setup(client, nat=True)
    client.setup_service_overlay("web")
    a, b = daemon.container("a"), daemon.container("b")
    ip_a = _attach(client, a, "web")
    ip_b = _attach(client, b, "web")
    before = daemon.host.ip("-o", "link", "show", "master", "zl-e2e-n1-web-b")
    results: list[bool] = []
    stop = threading.Event()

    def pinger() -> None:
        while not stop.is_set():
            results.append(ping(a.ns, ip_b, timeout=0.5))
            time.sleep(0.02)

    thread = threading.Thread(target=pinger, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        client.close()
        assert daemon.stop() == 0
        daemon.start()
        with Client(daemon.socket, timeout=30.0) as again:
            assert {i.ip for i in again.list_attachments()} == {ip_a, ip_b}
            report = again.reconcile()
            assert report.released == 0
            assert report.removed == 0
            assert report.errors == []
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert len(results) > 10
    assert results.count(False) <= 3, results
    assert "Traceback" not in daemon.log()
    after = daemon.host.ip("-o", "link", "show", "master", "zl-e2e-n1-web-b")
    # Same ifindexes: nothing was deleted and recreated.
    assert [line.split(":")[0] for line in before.splitlines()] == [
        line.split(":")[0] for line in after.splitlines()
    ]
