"""``overlayd demo``: two nodes, one encrypted overlay, containers that find and reach each other.

As root, with the ``linux_bridge`` and ``wireguard`` drivers and ``wireguard-go``
installed, the demo builds everything for real inside network namespaces it
creates (never touching the host's own interfaces): two "nodes" joined by an
underlay veth, an overlayd daemon per node, the global WireGuard overlay with
peers exchanged over the IPC, a service with two "containers" (a namespace
holding a ``sleep`` process) per node, DNS records for them; then a container
on node A resolves a container on node B through overlayd's DNS server and
pings it across the tunnel. Everything is torn down at the end, also on Ctrl-C,
unless ``--keep`` is given.

Without root (or with ``--fake``) it runs the same scenario on two in-process
engines with the fake driver, says so, and shows what it can without a data
plane: keys, addresses, peers and real DNS answers from overlayd's DNS server.

The demo installs nothing; when something is missing it names it and how to get it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import TypeVar

__all__ = ["main"]

T = TypeVar("T")

CLUSTER = "10.200.0.0/16"
SLICES = {"a": "10.200.0.0/20", "b": "10.200.16.0/20"}
SERVICES = {"a": "web", "b": "api"}
WG_PORT = 51820
CLONE_NEWNET = 0x40000000


def say(msg: str, *, step: bool = False) -> None:
    prefix = "==> " if step else "    "
    print(prefix + msg, flush=True)


# ---------------------------------------------------------------------------
# prerequisites
# ---------------------------------------------------------------------------


def missing_prerequisites() -> list[str]:
    """What the real demo needs that this host lacks, each with how to get it."""
    missing: list[str] = []
    if sys.platform != "linux":
        return ["Linux (the real demo uses network namespaces)"]
    if os.geteuid() != 0:
        missing.append("root privileges (run with sudo)")
    for module, dist in (
        ("overlayd_linux_bridge", "overlayd-linux-bridge (pip install -e drivers/linux_bridge)"),
        ("overlayd_wireguard", "overlayd-wireguard (pip install -e drivers/wireguard)"),
        ("pyroute2", "pyroute2 (pip install pyroute2)"),
    ):
        if importlib.util.find_spec(module) is None:
            missing.append(dist)
    if shutil.which("wireguard-go") is None:
        missing.append("wireguard-go (apt-get install wireguard-go)")
    if not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun (modprobe tun)")
    return missing


# ---------------------------------------------------------------------------
# namespaces (created with pyroute2; entered with setns)
# ---------------------------------------------------------------------------


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that has entered the network namespace at ``path``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            _setns(path)
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="demo-netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


@dataclass
class Node:
    key: str
    netns: str
    underlay: str
    socket: Path
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    client: Any = None
    interface: str = ""
    public_key: str = ""
    containers: list[Container] = field(default_factory=list)


@dataclass
class Container:
    name: str
    netns: str
    service: str
    proc: subprocess.Popen[bytes] | None = None
    ip: str = ""


class RealDemo:
    """The scenario on real namespaces, WireGuard and bridges."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.prefix = f"ovd-demo-{secrets.token_hex(2)}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        octet = 64 + secrets.randbelow(128)
        self.nodes = {
            k: Node(
                key=k,
                netns=f"{self.prefix}-{k}",
                underlay=f"10.99.{octet}.{1 if k == 'a' else 2}",
                socket=self.tmp / f"node-{k}.sock",
                data_dir=self.tmp / f"node-{k}",
            )
            for k in ("a", "b")
        }
        self.namespaces: list[str] = []

    # -- build --------------------------------------------------------------

    def _netns_create(self, name: str) -> str:
        from pyroute2 import netns

        netns.create(name)
        self.namespaces.append(name)
        path = f"/run/netns/{name}"

        def lo_up() -> None:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

        in_netns(path, lo_up)
        return path

    def _underlay(self) -> None:
        a, b = self.nodes["a"], self.nodes["b"]

        def build_a() -> None:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                ipr.link(
                    "add",
                    ifname="underlay0",
                    kind="veth",
                    peer={"ifname": "underlay0", "net_ns_fd": f"/run/netns/{b.netns}"},
                )
                idx = ipr.link_lookup(ifname="underlay0")[0]
                ipr.addr("add", index=idx, address=a.underlay, prefixlen=30)
                ipr.link("set", index=idx, state="up")

        def build_b() -> None:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname="underlay0")[0]
                ipr.addr("add", index=idx, address=b.underlay, prefixlen=30)
                ipr.link("set", index=idx, state="up")

        in_netns(f"/run/netns/{a.netns}", build_a)
        in_netns(f"/run/netns/{b.netns}", build_b)

    def _start_daemon(self, node: Node) -> None:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.tmp / f"node-{node.key}.toml"
        config.write_text(
            "\n".join(
                [
                    f'socket = "{node.socket}"',
                    f'data_dir = "{node.data_dir}"',
                    "",
                    "[drivers]",
                    'enabled = ["linux_bridge", "wireguard"]',
                    "",
                    "[drivers.wireguard]",
                    'backend = "userspace"',
                    "",
                    "[dns]",
                    "forward = false",
                    "",
                    "[engine]",
                    "health_interval_secs = 5",
                    "",
                ]
            )
        )
        log = (self.tmp / f"node-{node.key}.log").open("wb")
        path = f"/run/netns/{node.netns}"
        node.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "overlayd", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: _setns(path),  # noqa: PLW1509 - setns before exec
        )
        from overlayd.client import Client

        deadline = time.monotonic() + 20
        while not node.socket.exists():
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"overlayd on node {node.key} did not start; see {log.name}:\n"
                    + Path(log.name).read_text()[-2000:]
                )
            time.sleep(0.05)
        node.client = Client(str(node.socket))

    def _container(self, node: Node, index: int) -> Container:
        name = f"{self.prefix}-{node.key}{index}"
        path = self._netns_create(name)
        cont = Container(name=name, netns=path, service=SERVICES[node.key])
        cont.proc = subprocess.Popen(
            ["sleep", "infinity"],  # noqa: S607
            preexec_fn=lambda: _setns(path),  # noqa: PLW1509
        )
        answer = node.client.attach_container(
            {"platform": "linux_pid", "pid": cont.proc.pid}, cont.service
        )
        cont.ip = answer.ip
        node.containers.append(cont)
        return cont

    def run(self) -> int:
        say("building two nodes in network namespaces", step=True)
        for node in self.nodes.values():
            self._netns_create(node.netns)
            say(f"node {node.key}: netns {node.netns}")
        self._underlay()
        say(f"underlay veth: {self.nodes['a'].underlay} <-> {self.nodes['b'].underlay}")

        say("starting an overlayd per node (drivers: linux_bridge, wireguard)", step=True)
        for node in self.nodes.values():
            self._start_daemon(node)
            say(f"node {node.key}: serving on {node.socket}")

        say("setting up the global WireGuard overlay", step=True)
        for node in self.nodes.values():
            node.interface = node.client.setup_global_overlay(
                deployment="demo",
                instance_id=node.key,
                cluster_cidr=CLUSTER,
                slice_cidr=SLICES[node.key],
                wg_port=WG_PORT,
                nat_enabled=False,
            )
            node.public_key = node.client.status().public_key or ""
            say(f"node {node.key}: {node.interface} key {node.public_key} slice {SLICES[node.key]}")

        say("exchanging peers through the IPC", step=True)
        a, b = self.nodes["a"], self.nodes["b"]
        for me, other in ((a, b), (b, a)):
            me.client.add_peer(
                other.public_key, f"{other.underlay}:{WG_PORT}", SLICES[other.key], 25
            )
            say(f"node {me.key} peers with node {other.key} at {other.underlay}:{WG_PORT}")

        say("service overlays and two containers per node", step=True)
        for node in self.nodes.values():
            node.client.setup_service_overlay(SERVICES[node.key], "shared")
            for i in (1, 2):
                cont = self._container(node, i)
                say(f"node {node.key}: {cont.name} ({cont.service}) -> {cont.ip}")

        say("DNS: each node learns the other node's containers", step=True)
        for me, other in ((a, b), (b, a)):
            for cont in other.containers:
                me.client.register_dns(cont.service, cont.ip)
        say("registered web.demo.local and api.demo.local on both nodes")

        source = a.containers[0]
        gateway = _gateway_of(source.ip)
        say(f"{source.name} resolves api.demo.local via {gateway}:53", step=True)
        addresses = in_netns(source.netns, lambda: _resolve("api.demo.local.", gateway))
        say(f"api.demo.local -> {', '.join(addresses)}")
        target = addresses[0]
        say(f"{source.name} pings {target} across the encrypted overlay", step=True)
        rtts = in_netns(source.netns, lambda: _ping(target, count=5))
        ok = [r for r in rtts if r is not None]
        for i, rtt in enumerate(rtts, 1):
            say(f"icmp_seq={i} " + (f"time={rtt * 1000:.2f} ms" if rtt is not None else "lost"))

        self._summary(ok, len(rtts))
        return 0 if ok else 1

    def _summary(self, ok: list[float], sent: int) -> None:
        say("summary", step=True)
        for node in self.nodes.values():
            status = node.client.status()
            say(f"node {node.key}: {status.interface} {status.node_ip} key {status.public_key}")
            for peer in status.peers:
                when = peer.last_handshake_unix_secs
                age = f"{time.time() - when:.0f}s ago" if when else "never"
                say(f"  peer {peer.public_key} at {peer.endpoint} handshake {age}")
            for cont in node.containers:
                say(f"  container {cont.name} {cont.service} {cont.ip}")
        loss = 100 * (sent - len(ok)) / sent
        if ok:
            say(
                f"ping: {len(ok)}/{sent} received ({loss:.0f}% loss), "
                f"min/avg/max {min(ok) * 1000:.2f}/{sum(ok) / len(ok) * 1000:.2f}/"
                f"{max(ok) * 1000:.2f} ms"
            )
        else:
            say(f"ping: 0/{sent} received: the overlay does not carry traffic")

    # -- teardown -------------------------------------------------------------

    def teardown(self) -> None:
        if self.keep:
            say("left running (--keep); explore with:", step=True)
            for node in self.nodes.values():
                say(f"overlayctl --socket {node.socket} status")
            say(f"clean up with: overlayd demo --cleanup {self.prefix}")
            return
        say("tearing everything down", step=True)
        for node in self.nodes.values():
            for cont in node.containers:
                if cont.proc is not None:
                    with contextlib.suppress(Exception):
                        node.client.detach_container(
                            {"platform": "linux_pid", "pid": cont.proc.pid}
                        )
                    cont.proc.kill()
                    cont.proc.wait()
            if node.client is not None:
                with contextlib.suppress(Exception):
                    node.client.teardown_global_overlay()
                with contextlib.suppress(Exception):
                    node.client.shutdown()
                with contextlib.suppress(Exception):
                    node.client.close()
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
        cleanup(self.prefix)
        shutil.rmtree(self.tmp, ignore_errors=True)
        say("done")


def cleanup(prefix: str) -> None:
    """Remove every namespace (and process inside) whose name starts with ``prefix``."""
    if not prefix.startswith("ovd-demo-"):
        raise SystemExit("refusing to clean up names that are not ovd-demo-*")
    from pyroute2 import netns

    for name in netns.listnetns():
        if not name.startswith(prefix):
            continue
        path = f"/run/netns/{name}"
        inode = os.stat(path).st_ino
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                    os.kill(int(pid), signal.SIGKILL)
        netns.remove(name)


def _gateway_of(ip: str) -> str:
    import ipaddress

    iface = ipaddress.ip_interface(f"{ip}/22")
    return str(iface.network.network_address + 1)


def _resolve(name: str, server: str) -> list[str]:
    import dns.message
    import dns.query

    answer = dns.query.udp(dns.message.make_query(name, "A"), server, timeout=3)
    return [r.address for rrset in answer.answer for r in rrset]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _ping(dst: str, count: int = 5, timeout: float = 2.0) -> list[float | None]:
    """ICMP echo over a raw socket (no `ping` binary needed)."""
    out: list[float | None] = []
    ident = os.getpid() & 0xFFFF
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(timeout)
        for seq in range(1, count + 1):
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            payload = b"overlayd-demo" + bytes(19)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq)
            start = time.perf_counter()
            sock.sendto(packet + payload, (dst, 0))
            rtt: float | None = None
            while time.perf_counter() - start < timeout:
                try:
                    data, _ = sock.recvfrom(2048)
                except TimeoutError:
                    break
                ihl = (data[0] & 0x0F) * 4
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
                if kind == 0 and rid == ident and rseq == seq:
                    rtt = time.perf_counter() - start
                    break
            out.append(rtt)
            time.sleep(0.2)
    return out


# ---------------------------------------------------------------------------
# the fake scenario (no privileges)
# ---------------------------------------------------------------------------


async def fake_demo() -> int:
    import dns.asyncquery
    import dns.message

    from overlayd.config import DnsSettings
    from overlayd.config import EngineConfig
    from overlayd.config import EngineSettings
    from overlayd.dns.plugin import DnsPlugin
    from overlayd.engine import Engine

    say("running on the FAKE driver: no root needed, and no packets move", step=True)
    say("(for the real thing run as root with the linux_bridge and wireguard drivers)")
    engines: dict[str, Engine] = {}
    ports: dict[str, int] = {}
    for key in ("a", "b"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            ports[key] = s.getsockname()[1]
        settings = DnsSettings(
            listen=[f"127.0.0.1:{ports[key]}"], listen_on_gateways=False, forward=False
        )
        cfg = EngineConfig(
            drivers=["fake"], dns=settings, engine=EngineSettings(health_interval_secs=0)
        )
        engines[key] = Engine(cfg, plugins=[DnsPlugin(settings)])
        await engines[key].start()
    try:
        say("setting up the global overlay on both nodes", step=True)
        keys: dict[str, str] = {}
        for key, eng in engines.items():
            name = await eng.setup_global_overlay(
                deployment="demo",
                instance_id=key,
                cluster_cidr=CLUSTER,
                slice_cidr=SLICES[key],
                wg_port=WG_PORT,
            )
            keys[key] = eng.node_public_key() or ""
            say(f"node {key}: {name} key {keys[key]} slice {SLICES[key]}")
        say("exchanging peers", step=True)
        for me, other in (("a", "b"), ("b", "a")):
            await engines[me].add_peer(
                keys[other], f"node-{other}.invalid:{WG_PORT}", SLICES[other], 25
            )
            say(f"node {me} peers with node {other}")
        say("service overlays and two containers per node", step=True)
        ips: dict[str, list[str]] = {}
        for key, eng in engines.items():
            await eng.setup_service_overlay(SERVICES[key], "shared")
            for i in (1, 2):
                att = await eng.attach({"platform": "linux_pid", "pid": 1000 + i}, SERVICES[key])
                ips.setdefault(key, []).append(str(att.ip))
                say(f"node {key}: container {i} ({SERVICES[key]}) -> {att.ip}")
        for me, other in (("a", "b"), ("b", "a")):
            for ip in ips[other]:
                await engines[me].register_dns(SERVICES[other], ip)
        say("node a's DNS server answers for api.demo.local", step=True)
        query = dns.message.make_query("api.demo.local.", "A")
        answer = await dns.asyncquery.udp(query, "127.0.0.1", port=ports["a"], timeout=2)
        got = sorted(r.address for rrset in answer.answer for r in rrset)
        say(f"api.demo.local -> {', '.join(got)}")
        status = await engines["a"].status()
        say("summary", step=True)
        say(
            f"node a: {status.interface} {status.node_ip}, {status.peer_count} peer(s), "
            f"{status.service_count} service(s)"
        )
        say("no ping on the fake driver: it models the host, it does not forward packets")
        return 0 if got == sorted(ips["b"]) else 1
    finally:
        for eng in engines.values():
            await eng.stop()


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="overlayd demo",
        description="Two nodes, an encrypted overlay, containers resolving and pinging each other.",
    )
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    parser.add_argument("--fake", action="store_true", help="use the fake driver (no root)")
    parser.add_argument(
        "--cleanup", metavar="PREFIX", help="remove what `--keep` left (ovd-demo-xxxx)"
    )
    args = parser.parse_args(argv)
    if args.cleanup:
        cleanup(args.cleanup)
        return 0
    missing = [] if args.fake else missing_prerequisites()
    if args.fake or missing:
        if missing:
            say("the real demo needs:", step=True)
            for item in missing:
                say(f"- {item}")
        return asyncio.run(fake_demo())
    demo = RealDemo(keep=args.keep)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return demo.run()
    except KeyboardInterrupt:
        say("interrupted", step=True)
        return 130
    finally:
        demo.teardown()
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
