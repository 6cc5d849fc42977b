"""NAT traversal between two overlayd nodes, each behind its own NAT router.

Topology (all namespaces made here, names unique to the test, removed at the
end even on failure; addresses exist only inside them):

* ``pub``: the "public" switch, a bridge with 10.240.0.1 and 10.240.0.2, and
  coturn (Debian ``coturn``) listening on both as STUN and TURN server
  (long-term credentials; the second address gives RFC 5780's alternate);
* ``ra``/``rb``: NAT routers, WAN 10.240.0.11/.12 on the switch, LAN
  10.241.{1,2}.1; nftables masquerade ``persistent`` (endpoint-independent
  mapping) or ``random,fully-random`` (symmetric), a drop policy on input and
  forward (only replies come in);
* ``na``/``nb``: the nodes, 10.241.{1,2}.2, each running ``overlayd serve``
  with the ``linux_bridge`` and ``wireguard`` (wireguard-go) drivers;
* ``ca``/``cb``: a container namespace attached to each node's ``web`` service.

The test plays the orchestrator: it reads each node's ``status.nat`` and hands
the candidates to the other node (``nat_peer_candidates``) whenever they
change, as ZLayer or a cluster store would.

This module is also the lab of ``bench/nat/run.py``.
"""

from __future__ import annotations

import contextlib
import json
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
from typing import Any

import pytest

from overlayd.client import Client
from overlayd.protocol import NatEndpointChangedEvent
from overlayd.protocol import NetnsHandle
from overlayd.protocol import StatusResponse
from overlayd.testing.daemon import start_daemon
from overlayd.testing.daemon import terminate

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(300)]

CLUSTER = "10.250.0.0/16"
WG_PORT = 51820
TURN_USER, TURN_PASS = "overlayd", "nat-test-secret"
#: Refresh period of the daemons under test (seconds).
REFRESH = 3.0
#: Containers must ping each other within this many seconds of the candidates' exchange.
FIRST_PING_WITHIN = 5.0
NAT_RULES = {
    "eim": "masquerade persistent",
    "sym": "masquerade random,fully-random",
}


def run(
    *argv: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, check=check, capture_output=True, text=True, timeout=30, input=stdin
    )


def wait_until(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> float:
    """Seconds it took for ``pred`` to hold; AssertionError after ``timeout``."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - start


#: coturn's relay ports (``min-port``/``max-port`` in :meth:`Lab.start_coturn`).
RELAY_MIN_PORT, RELAY_MAX_PORT = 49160, 49400
RELAY_PORTS = f"{RELAY_MIN_PORT}-{RELAY_MAX_PORT}"
#: The daemon's log line for a relayed path, per mode (overlayd.nat.turn.MODE_TEXT).
RELAY_MODE_LOG = {
    "both": "relayed, each node sends through its own allocation",
    "own": "relayed, through this node's allocation",
    "theirs": "relayed, through the peer's allocation",
}


def router_rules(kind: str) -> str:
    return f"""
table ip nat {{
  chain post {{
    type nat hook postrouting priority 100
    oifname "wan" {NAT_RULES[kind]}
  }}
}}
table inet filter {{
  chain input {{
    type filter hook input priority 0; policy drop
    ct state established,related accept
    iifname "lo" accept
  }}
  chain forward {{
    type filter hook forward priority 0; policy drop
    iifname "lan" accept
    ct state established,related accept
  }}
}}
"""


def port_range_rules() -> str:
    """Endpoint-independent NAT that maps UDP to ports 40000-40999: a changed mapping."""
    return router_rules("eim").replace(
        f'oifname "wan" {NAT_RULES["eim"]}',
        'oifname "wan" meta l4proto udp masquerade to :40000-40999 persistent\n'
        f'    oifname "wan" {NAT_RULES["eim"]}',
    )


@dataclass
class Node:
    """A node namespace behind a router, its daemon and its container."""

    lab: Lab
    name: str
    ns: str
    container_ns: str
    index: int
    proc: subprocess.Popen[bytes] | None = None
    events: list[tuple[float, NatEndpointChangedEvent]] = field(default_factory=list)
    container_ip: str = ""
    _listener: Client | None = None

    @property
    def workdir(self) -> Path:
        return self.lab.root / self.name

    @property
    def socket(self) -> Path:
        return self.workdir / "overlayd.sock"

    @property
    def instance(self) -> str:
        return f"{self.name}{self.lab.sfx}"

    @property
    def slice_cidr(self) -> str:
        return f"10.250.{self.index}.0/24"

    @property
    def node_ip(self) -> str:
        return f"10.250.{self.index}.1"

    def client(self) -> Client:
        c = Client(str(self.socket), timeout=30)
        c.connect()
        return c

    def start(self, nat: str) -> None:
        self.workdir.mkdir(exist_ok=True)
        self.proc = start_daemon(
            self.workdir,
            '[drivers]\nenabled = ["linux_bridge", "wireguard"]\n'
            '[drivers.wireguard]\nbackend = "userspace"\n'
            "[engine]\nhealth_interval_secs = 0\n" + nat,
            socket_path=self.socket,
            prefix=("ip", "netns", "exec", self.ns),
            args=("--no-dns", "--log-level", "info"),
        ).proc
        listener = Client(str(self.socket), timeout=None)
        listener.connect()
        self._listener = listener

        def pump() -> None:
            with contextlib.suppress(Exception):
                for ev in listener.events():
                    if isinstance(ev, NatEndpointChangedEvent):
                        self.events.append((time.monotonic(), ev))

        threading.Thread(target=pump, daemon=True).start()

    def setup(self) -> None:
        """Global overlay with nat_enabled, a service and one attached container."""
        with self.client() as c:
            c.setup_global_overlay(
                deployment="nat",
                instance_id=self.instance,
                cluster_cidr=CLUSTER,
                slice_cidr=self.slice_cidr,
                wg_port=WG_PORT,
                nat_enabled=True,
            )
            c.setup_service_overlay("web")
            att = c.attach_container(NetnsHandle(path=f"/run/netns/{self.container_ns}"), "web")
            self.container_ip = att.ip

    def status(self) -> StatusResponse:
        with self.client() as c:
            return c.status()

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.close()
            self._listener = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                terminate(self.proc, 15)
        self.proc = None

    def ping(self, ip: str, *, wait: float = 0.3) -> bool:
        res = run(
            "ip", "netns", "exec", self.container_ns, "ping", "-c", "1", "-W", str(wait), ip,
            check=False,
        )  # fmt: skip
        return res.returncode == 0

    def has_candidates(self, *, relay: bool = True) -> bool:
        """Whether the node has gathered its candidates (with ``relay``, a relayed one
        among them)."""
        st = self.status()
        if st.nat is None or not st.nat.candidates:
            return False
        return not relay or any(c.kind == "relay" for c in st.nat.candidates)

    def path_of(self, other: Node) -> str | None:
        st = self.status()
        if st.nat is None:
            return None
        key = other.public_key
        return next((p.path for p in st.nat.peers if p.public_key == key), None)

    def relay_mode(self) -> str | None:
        """How the last relayed path the daemon set up runs (its log): both, own, theirs."""
        text = (self.workdir / "daemon.log").read_text(errors="replace")
        found = [(text.rfind(line), mode) for mode, line in RELAY_MODE_LOG.items()]
        at, mode = max(found)
        return mode if at >= 0 else None

    @property
    def public_key(self) -> str:
        key = self.status().public_key
        assert key is not None
        return key


class Lab:
    """The namespaces, coturn and the daemons of one test."""

    def __init__(self) -> None:
        self.sfx = secrets.token_hex(3)
        self.root = Path(tempfile.mkdtemp(prefix=f"onat{self.sfx}", dir="/tmp"))
        self.namespaces: list[str] = []
        self.nodes: list[Node] = []
        self.turn: subprocess.Popen[bytes] | None = None
        self.pub = self._ns("pub")
        self.routers: dict[str, str] = {}
        self._exchange: threading.Thread | None = None
        self._stop_exchange = threading.Event()

    def _ns(self, role: str) -> str:
        name = f"onat-{role}-{self.sfx}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def build(self, nat_a: str | None, nat_b: str | None) -> tuple[Node, Node]:
        """The switch, one router per NAT kind given (None: the node sits on the switch)."""
        run("ip", "-n", self.pub, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.pub, "link", "set", "br0", "up")
        for addr in ("10.240.0.1/24", "10.240.0.2/24"):
            run("ip", "-n", self.pub, "addr", "add", addr, "dev", "br0")
        nodes = []
        for index, (name, nat) in enumerate((("a", nat_a), ("b", nat_b)), start=1):
            node_ns = self._ns(f"n{name}")
            if nat is None:
                self._wire(
                    self.pub, f"sw{name}{self.sfx}", node_ns, "eth0", f"10.240.0.{20 + index}"
                )
                run("ip", "-n", node_ns, "route", "add", "default", "dev", "eth0")
            else:
                router = self._ns(f"r{name}")
                self.routers[name] = router
                self._wire(self.pub, f"sw{name}{self.sfx}", router, "wan", f"10.240.0.{10 + index}")
                run("ip", "link", "add", "lan", "netns", router, "type", "veth", "peer",
                    "name", "eth0", "netns", node_ns)  # fmt: skip
                run("ip", "-n", router, "addr", "add", f"10.241.{index}.1/24", "dev", "lan")
                run("ip", "-n", node_ns, "addr", "add", f"10.241.{index}.2/24", "dev", "eth0")
                run("ip", "-n", router, "link", "set", "lan", "up")
                run("ip", "-n", node_ns, "link", "set", "eth0", "up")
                run("ip", "-n", node_ns, "route", "add", "default", "via", f"10.241.{index}.1")
                run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
                run("ip", "netns", "exec", router, "nft", "-f", "-", stdin=router_rules(nat))
            container = self._ns(f"c{name}")
            node = Node(self, name, node_ns, container, index)
            self.nodes.append(node)
            nodes.append(node)
        return nodes[0], nodes[1]

    def change_router(self, side: str, rules: str) -> None:
        """Give router ``side`` (``"a"`` or ``"b"``) the nftables ``rules`` and
        flush its conntrack table, so that every flow is mapped anew."""
        router = self.routers[side]
        run("ip", "netns", "exec", router, "nft", "flush", "ruleset")
        run("ip", "netns", "exec", router, "nft", "-f", "-", stdin=rules)
        run("ip", "netns", "exec", router, "conntrack", "-F", check=False)

    def block(self, side: str, match: str) -> None:
        """Router ``side`` drops what it would forward that ``match`` matches (nft syntax);
        flows it already tracks keep their mappings."""
        router = self.routers[side]
        run("ip", "netns", "exec", router, "nft", "insert", "rule", "inet", "filter", "forward",
            *match.split(), "drop")  # fmt: skip

    def _wire(self, switch_ns: str, port: str, ns: str, ifname: str, addr: str) -> None:
        run("ip", "link", "add", port, "netns", switch_ns, "type", "veth", "peer",
            "name", ifname, "netns", ns)  # fmt: skip
        run("ip", "-n", switch_ns, "link", "set", port, "master", "br0", "up")
        run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
        run("ip", "-n", ns, "link", "set", ifname, "up")

    def start_coturn(self) -> None:
        conf = self.root / "turnserver.conf"
        conf.write_text(
            "listening-ip=10.240.0.1\nlistening-ip=10.240.0.2\nlistening-port=3478\n"
            "relay-ip=10.240.0.1\n"
            f"min-port={RELAY_MIN_PORT}\nmax-port={RELAY_MAX_PORT}\n"
            f"lt-cred-mech\nuser={TURN_USER}:{TURN_PASS}\nrealm=overlayd.test\n"
            "no-tls\nno-dtls\nno-cli\nno-software-attribute\nsimple-log\n"
            f"log-file={self.root / 'turn.log'}\nuserdb={self.root / 'turndb'}\n"
            f"pidfile={self.root / 'turn.pid'}\n"
        )
        self.turn = subprocess.Popen(
            ["ip", "netns", "exec", self.pub, "turnserver", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: "10.240.0.1:3478" in run("ip", "netns", "exec", self.pub, "ss", "-uln").stdout,
            15,
            "coturn to listen",
        )

    def nat_config(
        self, *, stun: bool = True, turn: bool = True, extra: str = "", forwarder: str = "native"
    ) -> str:
        # "native", not "auto": a relayed case fails rather than quietly using Python.
        lines = ["[nat]", f"refresh = {REFRESH}", f'relay_forwarder = "{forwarder}"']
        if stun:
            lines.append('stun_servers = ["10.240.0.1:3478"]')
        if turn:
            lines.append(
                'turn_servers = [{url = "turn:10.240.0.1:3478", '
                f'username = "{TURN_USER}", credential = "{TURN_PASS}"}}]'
            )
        return "\n".join(lines) + "\n" + extra

    def start_pair(
        self, nat_a: str | None, nat_b: str | None, *, turn_b: bool = True, **cfg: Any
    ) -> tuple[Node, Node]:
        """Both nodes up behind their routers, coturn running, and each node's candidates
        gathered (``turn_b`` False: b has no TURN server); not yet told about each other.

        ``cfg``: more of :meth:`nat_config`'s settings.
        """
        a, b = self.build(nat_a, nat_b)
        self.start_coturn()
        for node in (a, b):
            node.start(self.nat_config(turn=turn_b or node is a, **cfg))
            node.setup()
        # Candidates are gathered when the overlay comes up: wait for them.
        wait_until(a.has_candidates, 10, "a's candidates")
        wait_until(lambda: b.has_candidates(relay=turn_b), 10, "b's candidates")
        return a, b

    def introduce(self, a: Node, b: Node, keepalive: int = 25) -> None:
        """add_peer both ways (no endpoint: only the candidates tell where)."""
        sa, sb = a.status(), b.status()
        assert sa.public_key and sb.public_key
        with a.client() as c:
            c.add_peer(sb.public_key, "", b.slice_cidr, keepalive)
        with b.client() as c:
            c.add_peer(sa.public_key, "", a.slice_cidr, keepalive)

    def exchange_once(self, a: Node, b: Node) -> bool:
        """Hand each node the other's current candidates; True if any changed."""
        changed = False
        sa, sb = a.status(), b.status()
        for src, dst, st in ((a, b, sa), (b, a, sb)):
            if st.nat is None or st.public_key is None:
                continue
            key = (src.name, dst.name)
            cands = [c.model_dump(exclude_none=True) for c in st.nat.candidates]
            if self._last.get(key) == cands:
                continue
            self._last[key] = cands
            changed = True
            with dst.client() as c:
                c.nat_peer_candidates(st.public_key, st.nat.candidates)
        return changed

    _last: dict[tuple[str, str], Any] = {}

    def start_exchange(self, a: Node, b: Node, every: float = 0.3) -> None:
        """The orchestrator's loop: re-exchange candidates whenever they change."""
        self._last = {}
        self.exchange_once(a, b)

        def loop() -> None:
            while not self._stop_exchange.wait(every):
                with contextlib.suppress(Exception):
                    self.exchange_once(a, b)

        self._exchange = threading.Thread(target=loop, daemon=True)
        self._exchange.start()

    def first_ping(self, a: Node, b: Node, within: float) -> float:
        return wait_until(lambda: a.ping(b.container_ip, wait=0.2), within, "the first ping", 0.0)

    def close(self) -> None:
        self._stop_exchange.set()
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
        if self.turn is not None:
            self.turn.kill()
            self.turn.wait(5)
        for ns in self.namespaces:
            for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.3)
        for node in self.nodes:
            for sock in Path("/var/run/wireguard").glob(f"zl-*{node.instance}*.sock"):
                sock.unlink(missing_ok=True)
        for ns in reversed(self.namespaces):
            run("ip", "netns", "del", ns, check=False)
        for log in sorted(self.root.glob("*/daemon.log")):
            print(f"--- {log.parent.name} ---\n{log.read_text(errors='replace')[-6000:]}")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    if shutil.which("turnserver") is None:
        pytest.skip("coturn (turnserver) is not installed")
    if shutil.which("wireguard-go") is None:
        pytest.skip("wireguard-go is not installed")
    the_lab = Lab()
    try:
        yield the_lab
    finally:
        the_lab.close()


def _bring_up(
    lab: Lab, nat_a: str | None, nat_b: str | None, *, turn_b: bool = True, **cfg: Any
) -> tuple[Node, Node]:
    """Both nodes up and told about each other; ``turn_b`` False: b has no TURN server."""
    a, b = lab.start_pair(nat_a, nat_b, turn_b=turn_b, **cfg)
    lab.introduce(a, b)
    return a, b


def _paths(a: Node, b: Node) -> tuple[str | None, str | None]:
    return a.path_of(b), b.path_of(a)


@pytest.mark.parametrize(
    ("nat_a", "nat_b", "expected", "turn_b"),
    [
        pytest.param("eim", "eim", "direct", True, id="both-endpoint-independent-direct"),
        pytest.param("eim", "sym", "relayed", True, id="one-symmetric-relayed"),
        pytest.param("sym", "sym", "relayed", True, id="both-symmetric-relayed"),
        # Only a has an allocation: it relays the pair alone (single owner).
        pytest.param("eim", "sym", "relayed", False, id="one-allocation-relayed"),
    ],
)
def test_nat_path_and_ping(lab: Lab, nat_a: str, nat_b: str, expected: str, turn_b: bool) -> None:
    a, b = _bring_up(lab, nat_a, nat_b, turn_b=turn_b)
    lab.start_exchange(a, b)
    took = lab.first_ping(a, b, FIRST_PING_WITHIN)
    print(f"{nat_a}/{nat_b}: first container ping after {took:.3f} s, path {expected}")
    wait_until(lambda: _paths(a, b) == (expected, expected), 10, f"both paths {expected}")
    assert b.ping(a.container_ip, wait=1)
    st = a.status()
    assert st.nat is not None
    reflexive = [c for c in st.nat.candidates if c.kind == "reflexive"]
    if nat_a == "eim":
        # Seen from two STUN addresses (coturn's RFC 5780 alternate) with one
        # mapping: a verified reflexive candidate, the router's WAN and port.
        assert [(c.endpoint, c.guessed) for c in reflexive] == [(f"10.240.0.11:{WG_PORT}", None)]
    else:
        assert reflexive and all(c.guessed for c in reflexive), reflexive
    if expected == "direct":
        # No relay used: every path change went to a peer's reflexive address.
        for node, other in ((a, b), (b, a)):
            assert node.events, f"{node.name} emitted no nat_endpoint_changed"
            router_wan = f"10.240.0.{10 + other.index}"
            assert all(ev.endpoint.startswith(router_wan) for _, ev in node.events)
    else:
        relays = {n.name: _relay_endpoint(n) for n in (a, b)}
        if turn_b:
            # Both have an allocation: each sends through its own, and names the
            # peer's relayed address (where the peer's datagrams come from).
            assert (a.relay_mode(), b.relay_mode()) == ("both", "both")
            assert a.events[-1][1].endpoint == relays["b"]
            assert b.events[-1][1].endpoint == relays["a"]
        else:
            # Only a's allocation: it relays the pair, and both name it.
            assert (a.relay_mode(), b.relay_mode()) == ("own", "theirs")
            assert relays["b"] is None
            assert a.events[-1][1].endpoint == b.events[-1][1].endpoint == relays["a"]
        # The relay's data plane is the native forwarder (relay_forwarder = "native").
        logs = "".join((n.workdir / "daemon.log").read_text() for n in (a, b))
        assert ": native forwarder" in logs and ": Python forwarder" not in logs


def _relay_endpoint(node: Node) -> str | None:
    nat = node.status().nat
    assert nat is not None
    return next((c.endpoint for c in nat.candidates if c.kind == "relay"), None)


def test_both_relay_falls_back_to_one_allocation(lab: Lab) -> None:
    """Both relay cannot work (the owner's router drops what goes to relay ports): one
    allocation, the owner's, relays the pair instead."""
    a, b = _bring_up(lab, "sym", "sym")
    owner, other = (a, b) if a.public_key < b.public_key else (b, a)
    # The owner's keepalives to the other's relayed address never arrive; the
    # single-owner scheme sends nothing from the owner's side to a relay port.
    lab.block(owner.name, f"ip daddr 10.240.0.1 udp dport {RELAY_PORTS}")
    start = time.monotonic()
    lab.start_exchange(a, b)
    wait_until(lambda: _paths(a, b) == ("relayed", "relayed"), 20, "a relayed path")
    took = time.monotonic() - start
    print(f"both relay -> one allocation: relayed after {took:.2f} s")
    # The other node falls back and points WireGuard at the owner's relayed
    # address. The owner falls back too, unless the other's handshake through
    # its allocation confirmed its own attempt first: it then stays in both
    # relay, which carries the pair just the same (it sends through its own
    # allocation to where the other's packets come from).
    assert other.relay_mode() == "theirs"
    assert owner.relay_mode() in ("own", "both")
    fell_back = (other.workdir / "daemon.log").read_text()
    assert "no handshake with each node sending through its own allocation" in fell_back
    # Usually at once; one CI run saw no answer for 5 s right after the switch
    # (cause not found, see the limits in docs/nat.rst): the bound is one
    # persistent-keepalive period (25 s here) and some.
    pinged = wait_until(lambda: a.ping(b.container_ip, wait=0.3), 30, "a ping via the owner", 0.0)
    print(f"first ping after the fallback: {pinged:.2f} s")
    assert b.ping(a.container_ip, wait=1)


def test_mapping_change_is_relearnt(lab: Lab) -> None:
    """A router's mapping changes (new port range, conntrack flushed): path and event follow."""
    a, b = _bring_up(lab, "eim", "eim")
    lab.start_exchange(a, b)
    lab.first_ping(a, b, FIRST_PING_WITHIN)
    wait_until(lambda: _paths(a, b) == ("direct", "direct"), 10, "a direct path")
    b.events.clear()
    changed_at = time.monotonic()
    lab.change_router("a", port_range_rules())

    def relearnt() -> bool:
        return any(ev.endpoint.startswith("10.240.0.11:40") for _, ev in b.events)

    took = wait_until(relearnt, 2 * REFRESH, "b to learn a's new mapping")
    print(f"new mapping re-learnt after {took:.2f} s (refresh {REFRESH} s)")
    assert time.monotonic() - changed_at <= 2 * REFRESH + 0.5
    wait_until(lambda: a.ping(b.container_ip, wait=0.3), 5, "ping after the change", 0.0)
    assert _paths(a, b) == ("direct", "direct")


def test_relayed_peer_moves_to_direct_when_possible(lab: Lab) -> None:
    """Relayed (one symmetric NAT); the NAT turns endpoint-independent: direct, no traffic."""
    a, b = _bring_up(lab, "eim", "sym")
    lab.start_exchange(a, b)
    wait_until(lambda: _paths(a, b) == ("relayed", "relayed"), 10, "a relayed path")
    assert (a.relay_mode(), b.relay_mode()) == ("both", "both")
    lab.change_router("b", router_rules("eim"))
    took = wait_until(
        lambda: _paths(a, b) == ("direct", "direct"), 2 * REFRESH, "a direct path", 0.1
    )
    print(f"relayed -> direct after {took:.2f} s (refresh {REFRESH} s)")
    # A packet sent in the instant the peers switch paths may be lost (one
    # CI run under load lost the single ping sent here): traffic must flow
    # within a few seconds, as after the other path changes of this file.
    wait_until(lambda: a.ping(b.container_ip, wait=0.5), 5, "ping over the direct path", 0.0)
    assert _paths(a, b) == ("direct", "direct")
    assert a.events[-1][1].endpoint == "10.240.0.12:51820"


GARBAGE_SERVER = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, addr = s.recvfrom(2048)
    # the STUN cookie and the request's transaction id, then nonsense
    s.sendto(b"\\x01\\x01\\x00\\x08" + data[4:20] + b"\\xff" * 8, addr)
    s.sendto(b"not stun at all", addr)
"""


def test_unreachable_and_garbage_servers(lab: Lab) -> None:
    """Dead and lying STUN/TURN servers: warnings, host candidates, a direct path anyway."""
    a, b = lab.build(None, None)  # both nodes on the switch, no NAT
    garbage = subprocess.Popen(
        ["ip", "netns", "exec", lab.pub, sys.executable, "-c", GARBAGE_SERVER,
         "10.240.0.2", "3479"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        nat = (
            "[nat]\nrefresh = 3\npunch_timeout = 2\n"
            'stun_servers = ["10.240.0.9:3478", "10.240.0.2:3479"]\n'
            'turn_servers = [{url = "turn:10.240.0.2:3479", username = "u", credential = "p"},'
            ' {url = "turn:10.240.0.9:3478", username = "u", credential = "p"}]\n'
        )
        for node in (a, b):
            node.start(nat)
            node.setup()
        wait_until(
            lambda: (n := a.status().nat) is not None and len(n.warnings) >= 4, 15, "warnings"
        )
        st = a.status()
        assert st.nat is not None
        warnings = " | ".join(st.nat.warnings)
        assert "10.240.0.9:3478 did not answer" in warnings, warnings
        assert "10.240.0.2:3479" in warnings, warnings
        assert "TURN server turn:10.240.0.2:3479 gave no allocation" in warnings, warnings
        assert "TURN server turn:10.240.0.9:3478 gave no allocation" in warnings, warnings
        assert [c.kind for c in st.nat.candidates] == ["host"]
        assert st.nat.candidates[0].endpoint == f"10.240.0.21:{WG_PORT}"
        lab.introduce(a, b)
        lab.start_exchange(a, b)
        lab.first_ping(a, b, FIRST_PING_WITHIN)
        wait_until(lambda: _paths(a, b) == ("direct", "direct"), 10, "a direct path")
        # Both daemons still serve.
        with a.client() as c:
            c.nat_tick()
        assert a.proc is not None and a.proc.poll() is None
        assert b.proc is not None and b.proc.poll() is None
        assert json.dumps(b.status().to_wire())
    finally:
        garbage.kill()
        garbage.wait(5)
