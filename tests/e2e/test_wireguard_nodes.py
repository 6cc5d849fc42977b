"""Two overlayd nodes joined by WireGuard (wireguard-go) over a veth underlay.

Each node is a network namespace created here, with an ``overlayd serve
--driver wireguard`` daemon running inside it (``ip netns exec``). Peers are
exchanged through the IPC, traffic is checked with ping over overlay addresses,
and the test kills wireguard-go, removes the peer, restarts the daemons and
stops a whole node, watching ``peer_health_changed`` events.

Addresses exist only inside the test's namespaces: underlay 10.231.0.0/24,
overlay 10.232.0.0/16. Everything is removed at the end, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import pytest

from overlayd.client import Client
from overlayd.names import global_device_name
from overlayd.protocol import PeerHealthChangedEvent
from overlayd.testing.daemon import start_daemon
from overlayd.testing.daemon import terminate

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(240)]

WG_PORT = 51820
CLUSTER = "10.232.0.0/16"
CONFIG = """
[engine]
health_interval_secs = 1
peer_stale_secs = 6

[drivers]
enabled = ["wireguard"]

[drivers.wireguard]
backend = "userspace"
"""


ECHO_PORT = 7777
ECHO_SERVER = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {ECHO_PORT}))
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(data, addr)
"""
ECHO_CLIENT = f"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
for i in range(int(sys.argv[2])):
    s.sendto(b"ping %d" % i, (sys.argv[1], {ECHO_PORT}))
    try:
        data, addr = s.recvfrom(2048)
    except OSError:
        continue
    if addr[0] == sys.argv[1] and data == b"ping %d" % i:
        sys.exit(0)
sys.exit(1)
"""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


def _netns_pids(ns: str) -> list[int]:
    out = _run("ip", "netns", "pids", ns, check=False).stdout
    return [int(x) for x in out.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@dataclass
class Node:
    ns: str
    underlay: str
    instance: str
    slice_cidr: str
    node_ip: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    events: list[tuple[float, PeerHealthChangedEvent]] = field(default_factory=list)
    echo: subprocess.Popen[bytes] | None = None
    _event_client: Client | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "overlayd.sock"

    def start(self) -> None:
        self.proc = start_daemon(
            self.workdir,
            CONFIG,
            socket_path=self.socket,
            prefix=("ip", "netns", "exec", self.ns),
            args=("--driver", "wireguard", "--no-dns", "--log-level", "info"),
            timeout=20,
        ).proc
        self._listen()
        if self.echo is None or self.echo.poll() is not None:
            self.start_echo()

    def _listen(self) -> None:
        client = Client(str(self.socket), timeout=None)
        client.connect()
        self._event_client = client
        # Subscribed before the daemon can emit anything this test waits for.
        stream = client.subscribe(["peer_health_changed"])

        def pump() -> None:
            with contextlib.suppress(Exception):
                for ev in stream:
                    if isinstance(ev, PeerHealthChangedEvent):
                        self.events.append((time.monotonic(), ev))

        threading.Thread(target=pump, daemon=True).start()

    def client(self) -> Client:
        c = Client(str(self.socket), timeout=30)
        c.connect()
        return c

    def stop_daemon(self) -> None:
        """SIGTERM the daemon only: the data plane (wireguard-go) stays up."""
        if self._event_client is not None:
            with contextlib.suppress(Exception):
                self._event_client.close()
            self._event_client = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                terminate(self.proc, 15)
        self.proc = None

    def wireguard_go_pids(self) -> list[int]:
        return [p for p in _netns_pids(self.ns) if "wireguard-go" in _cmdline(p)]

    def kill_everything(self) -> None:
        self.stop_daemon()
        if self.echo is not None:
            self.echo.kill()
            self.echo.wait(5)
            self.echo = None
        for _ in range(3):
            pids = _netns_pids(self.ns)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)

    def start_echo(self) -> None:
        """A UDP echo server on every address of the namespace (port ECHO_PORT)."""
        self.echo = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", ECHO_SERVER],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def ping(self, dst: str, count: int = 3) -> bool:
        """A UDP echo round trip from this namespace to ``dst`` (any of ``count`` tries)."""
        res = _run(
            "ip", "netns", "exec", self.ns, sys.executable, "-c", ECHO_CLIENT, dst, str(count),
            check=False,
        )  # fmt: skip
        return res.returncode == 0


@pytest.fixture
def nodes() -> Iterator[tuple[Node, Node]]:
    sfx = secrets.token_hex(3)
    root = Path(tempfile.mkdtemp(prefix=f"owg{sfx}", dir="/tmp"))
    a = Node(f"owg-a-{sfx}", "10.231.0.1", f"a{sfx}", "10.232.0.0/24", "10.232.0.1", root / "a")
    b = Node(f"owg-b-{sfx}", "10.231.0.2", f"b{sfx}", "10.232.1.0/24", "10.232.1.1", root / "b")
    created: list[str] = []
    try:
        for n in (a, b):
            n.workdir.mkdir()
            _run("ip", "netns", "add", n.ns)
            created.append(n.ns)
            _run("ip", "-n", n.ns, "link", "set", "lo", "up")
        va, vb = f"owa{sfx}", f"owb{sfx}"
        _run("ip", "link", "add", va, "netns", a.ns, "type", "veth", "peer", "name", vb,
             "netns", b.ns)  # fmt: skip
        for n, v in ((a, va), (b, vb)):
            _run("ip", "-n", n.ns, "addr", "add", f"{n.underlay}/24", "dev", v)
            _run("ip", "-n", n.ns, "link", "set", v, "up")
        yield a, b
    finally:
        for n in (a, b):
            for argv in (("ip", "-n", n.ns, "addr"), ("ip", "-n", n.ns, "route"),
                         ("wg", "show")):  # fmt: skip
                res = _run(*argv, check=False)
                print(f"--- {n.ns}: {' '.join(argv)}\n{res.stdout}{res.stderr}")
        for n in (a, b):
            with contextlib.suppress(Exception):
                n.kill_everything()
        for n in (a, b):
            # wireguard-go unlinks its socket on SIGTERM, not on SIGKILL
            name = global_device_name("e2e", n.instance)
            with contextlib.suppress(FileNotFoundError):
                Path(f"/var/run/wireguard/{name}.sock").unlink()
        for ns in created:
            _run("ip", "netns", "del", ns, check=False)
        for log in sorted(root.glob("*/daemon.log")):
            # pytest shows this only when the test failed
            print(f"--- {log.parent.name} ---\n{log.read_text(errors='replace')[-4000:]}")
        shutil.rmtree(root, ignore_errors=True)


def _setup(node: Node) -> str:
    with node.client() as c:
        name = c.setup_global_overlay(
            deployment="e2e",
            instance_id=node.instance,
            cluster_cidr=CLUSTER,
            slice_cidr=node.slice_cidr,
            wg_port=WG_PORT,
            nat_enabled=False,
        )
        st = c.status()
        assert st.interface == name
        assert st.public_key is not None
        return st.public_key


def _peer(node: Node, other: Node, other_key: str) -> None:
    with node.client() as c:
        c.add_peer(other_key, f"{other.underlay}:{WG_PORT}", other.slice_cidr, 2)


def _health(node: Node, key: str, since: float) -> list[bool]:
    return [ev.healthy for t, ev in node.events if t >= since and ev.pubkey == key]


def test_two_nodes_over_wireguard_go(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    if shutil.which("wireguard-go") is None:
        pytest.fail("wireguard-go is not installed (apt-get install wireguard-go)")
    a.start()
    b.start()
    key_a, key_b = _setup(a), _setup(b)
    _peer(a, b, key_b)
    _peer(b, a, key_a)

    # 1. traffic over the overlay addresses, both ways
    wait_until(lambda: a.ping(b.node_ip), 15, "ping A -> B over the tunnel")
    assert b.ping(a.node_ip)
    with a.client() as c:
        (peer,) = c.status().peers
        assert peer.public_key == key_b
        assert peer.last_handshake_unix_secs > time.time() - 60

    # 2. killing wireguard-go is healed by the supervisor
    (old_pid,) = a.wireguard_go_pids()
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: a.wireguard_go_pids() not in ([], [old_pid]), 15, "the supervisor's restart")
    wait_until(lambda: a.ping(b.node_ip), 20, "ping after wireguard-go was restarted")

    # 3. removing the peer stops the traffic; adding it back restores it
    with a.client() as c:
        c.remove_peer(key_b)
        assert c.status().peers == []
    assert not a.ping(b.node_ip, count=2)
    _peer(a, b, key_b)
    wait_until(lambda: a.ping(b.node_ip), 15, "ping after the peer was added back")

    # 4. a daemon restart adopts the running device: same key, no re-peering
    a.stop_daemon()
    assert a.ping(b.node_ip), "the data plane must survive the daemon"
    a.start()
    with a.client() as c:
        st = c.status()
        assert st.public_key == key_a
        assert [p.public_key for p in st.peers] == [key_b]
    assert a.ping(b.node_ip)

    # 5. node B goes away completely: A reports it unhealthy ...
    gone = time.monotonic()
    b.kill_everything()
    wait_until(
        lambda: (
            any(not h for t, ev in a.events if ev.pubkey == key_b for h in [ev.healthy])
            and a.events[-1][1].healthy is False
        ),
        30,
        "peer_health_changed(healthy=false) for node B",
    )
    assert not a.ping(b.node_ip, count=1)

    # ... and healthy again when it comes back: B's daemon restarts from its data
    # directory with the same key and peers (nobody re-peers), the tunnel returns.
    back = time.monotonic()
    b.start()
    with b.client() as c:
        st = c.status()
        assert st.public_key == key_b
        assert [p.public_key for p in st.peers] == [key_a]
    wait_until(lambda: a.ping(b.node_ip), 20, "ping after node B came back")
    wait_until(
        lambda: True in _health(a, key_b, back),
        20,
        "peer_health_changed(healthy=true) for node B",
    )
    assert False in _health(a, key_b, 0.0)
    assert gone < back
