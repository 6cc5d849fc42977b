"""``overlayctl events`` and ``overlayctl topology`` against real daemons, and the
reconcile-repair events and counters of the engine."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd import protocol as p
from overlayd.client import Client
from overlayd.config import EngineConfig
from overlayd.engine import Engine
from overlayd.model import LinuxPidHandle
from overlayd.model import OverlayMode
from overlayd.testing.daemon import DaemonProcess
from overlayd.testing.daemon import setup_node
from overlayd.testing.daemon import start_daemon
from overlayd.topology import build_mesh
from overlayd.topology import to_dot
from overlayd_fake.driver import FakeDriver

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the daemon serves Unix sockets")

OVERLAYCTL = [
    sys.executable,
    "-c",
    "import sys; from overlayd.cli import overlayctl_main; sys.exit(overlayctl_main())",
]


@pytest.fixture
def two_daemons() -> Iterator[list[DaemonProcess]]:
    roots = [Path(tempfile.mkdtemp(prefix=f"oev{i}-", dir="/tmp")) for i in range(2)]
    procs: list[DaemonProcess] = []
    try:
        for root in roots:
            procs.append(start_daemon(root))
        yield procs
    finally:
        try:
            for proc in procs:
                assert proc.stop() == 0, proc.log_text()
        finally:
            for root in roots:
                shutil.rmtree(root, ignore_errors=True)


def _setup(c: Client, node: int) -> str:
    key = setup_node(
        c, node, deployment="ev", cluster_cidr="10.78.0.0/16", slice_cidr=f"10.78.{node}.0/24"
    )
    assert key is not None
    return key


class _Lines:
    """Lines of a subprocess's stdout, read with a timeout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.fd, selectors.EVENT_READ)
        self.buf = b""

    def next(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sel.select(left):
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def test_overlayctl_events_prints_triggered_events_in_order(
    two_daemons: list[DaemonProcess],
) -> None:
    daemon = two_daemons[0]
    with Client(str(daemon.socket), timeout=10) as c:
        _setup(c, 1)
        proc = subprocess.Popen(
            [*OVERLAYCTL, "--socket", str(daemon.socket), "events", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            lines = _Lines(proc)
            # The subscription is in place once an event reaches it: attach a
            # probe until its event is printed.
            probe = p.LinuxPidHandle(pid=4300)
            for _ in range(100):
                c.attach_container(probe, "web")
                first = lines.next(0.3)
                if first is not None:
                    assert json.loads(first)["handle"] == "linux_pid:4300"
                    break
                c.detach_container(probe)
            else:
                pytest.fail("overlayctl events printed nothing")
            # Events of earlier probes may still be on their way; the probe is attached.
            while lines.next(0.5) is not None:
                pass
            c.attach_container(p.LinuxPidHandle(pid=4301), "web")
            c.detach_container(probe)
            c.attach_container(p.LinuxPidHandle(pid=4302), "web")
            c.detach_container(p.LinuxPidHandle(pid=4301))
            got = [json.loads(lines.next(10) or "null") for _ in range(4)]
            assert [(e["event"], e["handle"]) for e in got] == [
                ("attached", "linux_pid:4301"),
                ("detached", "linux_pid:4300"),
                ("attached", "linux_pid:4302"),
                ("detached", "linux_pid:4301"),
            ]
            assert all(e["service"] == "web" and e["ip"].startswith("10.78.1.") for e in got)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 130
            assert proc.stderr is not None
            assert proc.stderr.read() == b""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_topology_of_two_peered_daemons_names_both_nodes_and_their_link(
    two_daemons: list[DaemonProcess],
) -> None:
    a, b = two_daemons
    with Client(str(a.socket), timeout=10) as ca, Client(str(b.socket), timeout=10) as cb:
        key_a = _setup(ca, 1)
        key_b = _setup(cb, 2)
        ca.add_peer(key_b, "127.0.0.1:51822", "10.78.2.0/24", 25)
        cb.add_peer(key_a, "127.0.0.1:51821", "10.78.1.0/24", 25)
    done = subprocess.run(
        [*OVERLAYCTL, "--socket", str(a.socket), "topology", "--node", str(b.socket)],
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr.decode()
    dot = done.stdout.decode()
    assert dot.startswith("graph overlay {")
    assert key_a[:10] in dot and key_b[:10] in dot
    assert "10.78.1.1" in dot and "10.78.2.1" in dot
    edges = [line for line in dot.splitlines() if " -- " in line]
    assert len(edges) == 1, dot  # both ends' views of one link
    assert "n0 -- n1" in edges[0] and "no handshake" in edges[0]
    if shutil.which("dot") is None:
        return
    out = a.root / "mesh.svg"
    done = subprocess.run(
        [
            *OVERLAYCTL,
            "--socket",
            str(a.socket),
            "topology",
            "--node",
            str(b.socket),
            "--format",
            "svg",
            "-o",
            str(out),
        ],
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert out.read_text().lstrip().startswith("<?xml") and key_a[:10] in out.read_text()


def test_topology_without_graphviz_is_a_clear_error(
    two_daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run(
        [*OVERLAYCTL, "--socket", str(two_daemons[0].socket), "topology", "--format", "png"],
        capture_output=True,
        check=False,
        timeout=30,
        env=env,
    )
    assert done.returncode == 1
    assert "needs Graphviz's `dot`, which is not installed" in done.stderr.decode()
    assert done.stdout == b""


def test_handshake_age_and_traffic_label_the_link() -> None:
    now = 1_700_000_100
    status = p.StatusResponse(
        interface="zl-overlay0",
        node_ip="10.78.1.1",
        public_key="A" * 43 + "=",
        peer_count=1,
        service_count=0,
        peers=[
            p.PeerStatus(
                public_key="B" * 43 + "=",
                endpoint="192.0.2.2:51820",
                allowed_ips="10.78.2.0/24",
                last_handshake_unix_secs=now - 42,
                rx_bytes=2048,
                tx_bytes=100,
            )
        ],
    )
    dot = to_dot(build_mesh([status]), now=now)
    assert "handshake 42s ago" in dot
    assert "100 B" in dot and "2.0 KiB" in dot
    assert "style=dashed" not in dot


async def test_reconcile_repairs_are_events_and_counted() -> None:
    fake = FakeDriver()
    async with Engine(EngineConfig(), drivers=[fake]) as engine:
        await engine.set_local_node_id(1)
        await engine.setup_global_overlay(
            deployment="rc", instance_id="n1", cluster_cidr="10.79.0.0/16", wg_port=51820
        )
        await engine.setup_service_overlay("web", OverlayMode.SHARED)
        handle = LinuxPidHandle(pid=4401)
        await engine.attach(handle, "web")
        queue = engine.subscribe()
        fake.kill(handle)
        summary = await engine.reconcile()
        assert summary.released == 1
        events = [queue.get_nowait() for _ in range(queue.qsize())]
        engine.unsubscribe(queue)
    kinds = [(e.event, e.kind, e.handle or e.object) for e in events]
    assert kinds == [
        ("detached", None, "linux_pid:4401"),
        ("reconcile_repaired", "released", "linux_pid:4401"),
    ]
    assert engine.stats.reconcile_repairs.get("released") == 1
    assert engine.stats.reconcile_runs.get("ok") == 2  # the startup pass and this one
    assert engine.stats.detach_seconds.snapshot().count == 1
