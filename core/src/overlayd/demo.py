"""``overlayd demo``: two nodes, one encrypted overlay, containers that find and reach each other.

As root, with the ``linux_bridge`` and ``wireguard`` drivers and ``wireguard-go``
installed, the demo builds everything for real inside network namespaces it
creates (never touching the host's own interfaces): two "nodes" joined by an
underlay veth, an overlayd daemon per node, the global WireGuard overlay with
peers exchanged over the IPC, a service with two "containers" (a namespace
holding a ``sleep`` process) per node, DNS records for them; then a container
on node A resolves a container on node B through overlayd's DNS server and
pings it across the tunnel. Everything is torn down at the end, also on Ctrl-C
(SIGINT) or SIGTERM, unless ``--keep`` is given; ``--cleanup PREFIX`` removes
what ``--keep`` left.

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
import functools
import importlib.util
import json
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
from types import FrameType
from typing import Any
from typing import Final
from typing import TypeVar

from overlayd.errors import OverlaydError
from overlayd.names import global_device_name

__all__ = ["DemoFailed", "build_parser", "cleanup", "main", "missing_prerequisites"]

T = TypeVar("T")

CLUSTER: Final = "10.200.0.0/16"
SLICES: Final = {"a": "10.200.0.0/20", "b": "10.200.16.0/20"}
SERVICES: Final = {"a": "web", "b": "api"}
ZONE: Final = "demo.local."
WG_PORT: Final = 51820
PINGS: Final = 5
PREFIX_ROOT: Final = "ovd-demo-"
MANIFEST: Final = "demo.json"
#: Where wireguard-go puts its UAPI sockets (fixed by wireguard-go itself).
WG_SOCKET_DIR: Final = "/var/run/wireguard"
CLONE_NEWNET: Final = 0x40000000
#: SIGKILL (the module imports on Windows too, where the demo only runs --fake).
_HARD_KILL: Final[int] = getattr(signal, "SIGKILL", signal.SIGTERM)


def say(msg: str, *, step: bool = False) -> None:
    prefix = "==> " if step else "    "
    print(prefix + msg, flush=True)


def step(msg: str) -> None:
    """Start a step of the real demo (a pending Ctrl-C stops it here at the latest)."""
    _check_interrupted()
    say(msg, step=True)


# ---------------------------------------------------------------------------
# prerequisites
# ---------------------------------------------------------------------------


def missing_prerequisites() -> list[str]:
    """What the real demo needs that this host lacks, each with how to get it."""
    if sys.platform != "linux":
        return ["Linux (the real demo uses network namespaces)"]
    else:  # one branch per platform keeps mypy --platform win32 quiet
        missing: list[str] = []
        if os.geteuid() != 0:
            missing.append("root privileges (run it with sudo)")
        for module, dist in (
            (
                "overlayd_linux_bridge",
                "the linux_bridge driver (pip install -e drivers/linux_bridge)",
            ),
            ("overlayd_wireguard", "the wireguard driver (pip install -e drivers/wireguard)"),
            ("pyroute2", "pyroute2 (pip install pyroute2)"),
        ):
            if importlib.util.find_spec(module) is None:
                missing.append(dist)
        if shutil.which("wireguard-go") is None:
            missing.append("wireguard-go (apt-get install wireguard-go)")
        if shutil.which("sleep") is None:
            missing.append("sleep (apt-get install coreutils)")
        if not Path("/dev/net/tun").exists():
            missing.append("/dev/net/tun (modprobe tun; in a container: --device /dev/net/tun)")
        if not Path("/proc/self/ns/net").exists():
            missing.append("network namespaces (a kernel with CONFIG_NET_NS)")
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

    thread = threading.Thread(target=target, name="demo-netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _spawn_in_netns(
    argv: list[str], netns: str, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside ``netns`` in its own session (a terminal's Ctrl-C reaches only us)."""
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(  # noqa: S603 - our own interpreter, module and `sleep`
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: _setns(netns),  # noqa: PLW1509 - setns before exec
        )
    finally:
        if not isinstance(out, int):
            out.close()


@dataclass
class Container:
    name: str
    netns: str
    service: str
    proc: subprocess.Popen[bytes] | None = None
    ip: str = ""


@dataclass
class Node:
    key: str
    netns: str
    underlay: str
    socket: Path
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    client: Any = None
    interface: str = ""
    public_key: str = ""
    containers: list[Container] = field(default_factory=list)


class DemoFailed(OverlaydError):
    """The real demo could not complete a step."""


class RealDemo:
    """The scenario on real namespaces, WireGuard (wireguard-go) and bridges."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        tag = secrets.token_hex(2)
        self.prefix = f"{PREFIX_ROOT}{tag}"
        #: Unique per run: device names (and wireguard-go's UAPI sockets, which
        #: live in the host's /var/run/wireguard) never collide with another run.
        self.deployment = f"demo{tag}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        octet = 64 + secrets.randbelow(128)
        self.nodes = {
            k: Node(
                key=k,
                netns=f"{self.prefix}-{k}",
                underlay=f"10.99.{octet}.{1 if k == 'a' else 2}",
                socket=self.tmp / f"node-{k}.sock",
                data_dir=self.tmp / f"node-{k}",
                log=self.tmp / f"node-{k}.log",
            )
            for k in ("a", "b")
        }
        self._write_manifest()

    def _write_manifest(self) -> None:
        """What ``--cleanup`` needs to stop the daemons and remove what they left."""
        manifest = {
            "prefix": self.prefix,
            "sockets": [str(n.socket) for n in self.nodes.values()],
            "interfaces": [global_device_name(self.deployment, k) for k in self.nodes],
        }
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    # -- build --------------------------------------------------------------

    def _netns_create(self, name: str) -> str:
        from pyroute2 import netns

        netns.create(name)
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
                    f'zone = "{ZONE}"',
                    "forward = false",
                    "",
                    "[engine]",
                    "health_interval_secs = 5",
                    "",
                ]
            )
        )
        node.proc = _spawn_in_netns(
            [sys.executable, "-m", "overlayd", "serve", "--config", str(config)],
            f"/run/netns/{node.netns}",
            node.log,
        )
        from overlayd.client import Client

        deadline = time.monotonic() + 20
        while not node.socket.exists():
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise DemoFailed(
                    f"overlayd on node {node.key} did not start; its log ({node.log}) ends with:\n"
                    + _tail(node.log)
                )
            time.sleep(0.05)
        node.client = Client(str(node.socket), timeout=10.0)

    def _container(self, node: Node, index: int) -> Container:
        name = f"{self.prefix}-{node.key}{index}"
        path = self._netns_create(name)
        cont = Container(name=name, netns=path, service=SERVICES[node.key])
        node.containers.append(cont)
        cont.proc = _spawn_in_netns(["sleep", "infinity"], path)
        answer = node.client.attach_container(
            {"platform": "linux_pid", "pid": cont.proc.pid}, cont.service
        )
        cont.ip = answer.ip
        return cont

    def run(self) -> int:
        step("building two nodes in network namespaces")
        for node in self.nodes.values():
            self._netns_create(node.netns)
            say(f"node {node.key}: netns {node.netns}")
        self._underlay()
        a, b = self.nodes["a"], self.nodes["b"]
        say(f"underlay veth: node a {a.underlay} <-> node b {b.underlay}")

        step("starting an overlayd per node (drivers: linux_bridge, wireguard)")
        for node in self.nodes.values():
            self._start_daemon(node)
            say(f"node {node.key}: overlayd serving on {node.socket}")

        step("setting up the global WireGuard overlay (userspace wireguard-go)")
        for node in self.nodes.values():
            node.interface = node.client.setup_global_overlay(
                deployment=self.deployment,
                instance_id=node.key,
                cluster_cidr=CLUSTER,
                slice_cidr=SLICES[node.key],
                wg_port=WG_PORT,
                nat_enabled=False,
            )
            node.public_key = node.client.status().public_key or ""
            say(f"node {node.key}: {node.interface} slice {SLICES[node.key]}")
            say(f"        public key {node.public_key}")

        step("exchanging peers through the IPC (add_peer)")
        for me, other in ((a, b), (b, a)):
            me.client.add_peer(
                other.public_key, f"{other.underlay}:{WG_PORT}", SLICES[other.key], 25
            )
            say(f"node {me.key} -> peer node {other.key} at {other.underlay}:{WG_PORT}")

        step("a service per node, two containers each (netns + sleep, attached by pid)")
        for node in self.nodes.values():
            node.client.setup_service_overlay(SERVICES[node.key], "shared")
            for i in (1, 2):
                _check_interrupted()
                cont = self._container(node, i)
                pid = cont.proc.pid if cont.proc is not None else 0
                say(
                    f"node {node.key}: container {cont.name} (pid {pid}) "
                    f"service {cont.service} -> {cont.ip}"
                )

        step(f"DNS: each node registers both services in {ZONE}")
        for node in self.nodes.values():
            for holder in self.nodes.values():
                for cont in holder.containers:
                    node.client.register_dns(cont.service, cont.ip)
        names = ", ".join(f"{s}.{ZONE.rstrip('.')}" for s in SERVICES.values())
        say(f"registered {names} on both nodes")

        source = a.containers[0]
        query = f"{SERVICES['b']}.{ZONE}"
        gateway = in_netns(source.netns, _default_gateway)
        step(f"{source.name} ({source.ip}) resolves {query.rstrip('.')} via {gateway}:53")
        addresses = in_netns(source.netns, lambda: _resolve(query, gateway))
        if not addresses:
            raise DemoFailed(f"{query} has no address in node a's DNS server")
        say(f"{query.rstrip('.')} -> {', '.join(addresses)}")
        target = addresses[0]
        step(f"{source.name} pings {target} on node b across the encrypted overlay")
        rtts = in_netns(source.netns, lambda: _ping(target, count=PINGS))
        ok = [r for r in rtts if r is not None]
        for i, rtt in enumerate(rtts, 1):
            reply = f"reply from {target}: time={rtt * 1000:.2f} ms" if rtt is not None else "lost"
            say(f"icmp_seq={i} {reply}")

        self._summary(ok, len(rtts))
        return 0 if ok else 1

    def _summary(self, ok: list[float], sent: int) -> None:
        step("summary")
        for node in self.nodes.values():
            status = node.client.status()
            say(
                f"node {node.key} (netns {node.netns}, underlay {node.underlay}): "
                f"{status.interface} {status.node_ip}"
            )
            say(f"  public key {status.public_key}")
            transfer = _wg_transfer(status.interface)
            for peer in status.peers:
                when = peer.last_handshake_unix_secs
                age = f"{max(0.0, time.time() - when):.0f}s ago" if when else "never"
                say(f"  peer {peer.public_key} at {peer.endpoint} allowed {peer.allowed_ips}")
                extra = ""
                if peer.public_key in transfer:
                    rx, tx = transfer[peer.public_key]
                    extra = f", received {rx} B, sent {tx} B (encrypted)"
                say(f"    last handshake {age}{extra}")
            for cont in node.containers:
                say(f"  container {cont.name} {cont.service} {cont.ip}")
        loss = 100 * (sent - len(ok)) / sent
        if ok:
            say(
                f"ping: {len(ok)}/{sent} received ({loss:.0f}% loss), latency min/avg/max "
                f"{min(ok) * 1000:.2f}/{sum(ok) / len(ok) * 1000:.2f}/{max(ok) * 1000:.2f} ms"
            )
        else:
            say(f"ping: 0/{sent} received (100% loss): the overlay does not carry traffic")

    def print_logs(self) -> None:
        for node in self.nodes.values():
            if node.log.exists():
                say(f"overlayd log of node {node.key} ({node.log}), last lines:")
                for line in _tail(node.log).splitlines():
                    say(f"  {line}")

    # -- teardown -------------------------------------------------------------

    def teardown(self) -> None:
        if self.keep:
            say("left running (--keep); explore with:", step=True)
            for node in self.nodes.values():
                say(f"overlayctl --socket {node.socket} status")
            a = self.nodes["a"]
            say(f"overlayctl --socket {a.socket} state")
            say(f"ip netns exec {a.netns} wg show {a.interface or 'all'}")
            say(f"ip netns exec {a.containers[0].name if a.containers else a.netns} ip addr")
            say(f"clean up with: overlayd demo --cleanup {self.prefix}")
            for node in self.nodes.values():
                if node.client is not None:
                    _attempt("close the client", node.client.close)
            return
        say("tearing everything down", step=True)
        for node in self.nodes.values():
            if node.client is None:
                continue
            for cont in node.containers:
                if cont.proc is not None and cont.ip:
                    handle = {"platform": "linux_pid", "pid": cont.proc.pid}
                    _attempt(
                        f"detach {cont.name}",
                        functools.partial(node.client.detach_container, handle),
                    )
            _attempt(
                f"tear down the overlay of node {node.key}", node.client.teardown_global_overlay
            )
            _attempt(f"stop overlayd on node {node.key}", node.client.shutdown)
            _attempt("close the client", node.client.close)
        for node in self.nodes.values():
            if node.proc is None:
                continue
            if node.client is None:
                node.proc.terminate()  # interrupted while it was starting
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                say(f"warning: overlayd on node {node.key} did not stop; killing it")
                node.proc.kill()
                node.proc.wait()
        for node in self.nodes.values():
            for cont in node.containers:
                if cont.proc is not None:
                    cont.proc.kill()
                    cont.proc.wait()
        removed = cleanup(f"{self.prefix}-", quiet=True, graceful=False)
        say(f"removed {removed} namespaces, the daemons' state and sockets")
        say("done")


def _attempt(what: str, fn: Callable[[], object]) -> None:
    """Best-effort teardown step: a failure is reported, and the teardown goes on."""
    try:
        fn()
    except (OverlaydError, OSError) as exc:
        say(f"warning: could not {what}: {exc}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


def _netns_pids(path: str) -> list[int]:
    """Processes whose network namespace is the one pinned at ``path``."""
    target = os.stat(path)
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue  # exited meanwhile, or a kernel thread
        if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
            pids.append(int(entry))
    return pids


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def cleanup(prefix: str, *, quiet: bool = False, graceful: bool = True) -> int:
    """Remove what a demo run left: daemons, processes, namespaces, sockets, temp dirs.

    Every name starting with ``prefix`` (``ovd-demo-xxxx`` as printed by
    ``--keep``) goes: the daemons are asked to tear their overlay down and stop,
    the processes left in the namespaces get SIGTERM (wireguard-go removes its
    UAPI socket then) and SIGKILL after a grace period, then the namespaces,
    any stale UAPI sockets and the temporary directory are removed. Returns the
    number of namespaces removed. ``graceful=False`` skips asking the daemons
    (the caller has stopped them already).
    """
    if not prefix.startswith(PREFIX_ROOT) or not all(c.isalnum() or c == "-" for c in prefix):
        raise DemoFailed(
            f"refusing to clean up {prefix!r}: give the prefix the demo printed, "
            f"such as {PREFIX_ROOT}1a2b"
        )
    from pyroute2 import netns

    from overlayd.client import Client

    dirs = sorted(p for p in Path(tempfile.gettempdir()).glob(f"{prefix}*") if p.is_dir())
    manifests: list[dict[str, Any]] = []
    for tmp in dirs:
        with contextlib.suppress(OSError, ValueError):
            manifests.append(json.loads((tmp / MANIFEST).read_text()))
    for manifest in manifests if graceful else []:
        for sock in manifest.get("sockets", []):
            if not Path(sock).exists():
                continue
            try:
                client = Client(sock, timeout=10.0, connect_attempts=1)
            except OverlaydError:
                continue
            _attempt("tear down the global overlay", client.teardown_global_overlay)
            _attempt("stop overlayd", client.shutdown)
            _attempt("close the client", client.close)

    names = sorted(n for n in netns.listnetns() if n.startswith(prefix))
    paths = [f"/run/netns/{n}" for n in names]
    deadline = time.monotonic() + 5
    sig: int = signal.SIGTERM
    while True:
        pids = [pid for path in paths for pid in _netns_pids(path)]
        if not pids:
            break
        if time.monotonic() > deadline:
            sig = _HARD_KILL
        _signal_all(pids, sig)
        time.sleep(0.1)
    for name in names:
        netns.remove(name)
        if not quiet:
            say(f"removed netns {name}")
    for manifest in manifests:
        for ifname in manifest.get("interfaces", []):
            sock = Path(WG_SOCKET_DIR) / f"{ifname}.sock"
            if sock.exists():
                sock.unlink()
                if not quiet:
                    say(f"removed stale {sock}")
    for tmp in dirs:
        shutil.rmtree(tmp, ignore_errors=True)
        if not quiet:
            say(f"removed {tmp}")
    if not quiet and not names and not dirs:
        say(f"nothing named {prefix}* to clean up")
    return len(names)


# ---------------------------------------------------------------------------
# inside a container: route, DNS, ICMP, WireGuard counters
# ---------------------------------------------------------------------------


def _default_gateway() -> str:
    """The IPv4 default gateway of the calling thread's namespace (the service bridge)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for route in ipr.route("dump", family=socket.AF_INET):
            gateway = route.get("RTA_GATEWAY")
            if route["dst_len"] == 0 and gateway:
                return str(gateway)
    raise DemoFailed("the container has no IPv4 default route; the attach did not set it up")


def _resolve(name: str, server: str) -> list[str]:
    import dns.exception
    import dns.message
    import dns.query

    try:
        answer = dns.query.udp(dns.message.make_query(name, "A"), server, timeout=3)
    except dns.exception.DNSException as exc:
        raise DemoFailed(f"no DNS answer for {name} from {server}: {exc}") from exc
    return sorted(str(r.address) for rrset in answer.answer for r in rrset)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _ping(dst: str, count: int = 5, timeout: float = 2.0) -> list[float | None]:
    """ICMP echo over a raw socket (no `ping` binary needed); RTT in seconds or None."""
    out: list[float | None] = []
    ident = secrets.randbelow(0xFFFF) + 1
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        for seq in range(1, count + 1):
            payload = b"overlayd-demo" + bytes(19)
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq)
            start = time.perf_counter()
            sock.sendto(packet + payload, (dst, 0))
            rtt: float | None = None
            while (left := timeout - (time.perf_counter() - start)) > 0:
                sock.settimeout(left)
                try:
                    data, addr = sock.recvfrom(2048)
                except TimeoutError:
                    break
                ihl = (data[0] & 0x0F) * 4
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
                if kind == 0 and rid == ident and rseq == seq and addr[0] == dst:
                    rtt = time.perf_counter() - start
                    break
            out.append(rtt)
            if seq < count:
                time.sleep(0.2)
    return out


def _wg_transfer(interface: str) -> dict[str, tuple[int, int]]:
    """Per-peer (received, sent) bytes from wireguard-go's UAPI socket; empty if unreadable."""
    try:
        from overlayd_wireguard.uapi import UapiClient
    except ImportError:
        return {}
    try:
        state = UapiClient(WG_SOCKET_DIR).get(interface)
    except (OverlaydError, OSError):
        return {}
    return {peer.public_key: (peer.rx_bytes, peer.tx_bytes) for peer in state.peers}


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


def build_parser() -> argparse.ArgumentParser:
    """The ``overlayd demo`` command line (``overlayd demo --help``)."""
    parser = argparse.ArgumentParser(
        prog="overlayd demo",
        description="Two nodes, an encrypted overlay, containers resolving and pinging each "
        "other. As root it builds everything for real in network namespaces and removes it "
        "afterwards; without root it runs the same scenario on the fake driver.",
        epilog="exit codes: 0 success; 1 a step failed or the ping got no reply; "
        "2 usage error; 130 interrupted (everything was torn down).",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the nodes, daemons and containers running for exploration with overlayctl",
    )
    parser.add_argument(
        "--fake", action="store_true", help="run on the fake driver (no root, no packets)"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="three nodes that form the mesh themselves through a real etcd (cluster mode)",
    )
    parser.add_argument(
        "--cleanup",
        metavar="PREFIX",
        help="remove what a --keep run left (the ovd-demo-xxxx prefix it printed) and exit",
    )
    return parser


_interrupted = threading.Event()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Raising here can be swallowed (a handler that runs inside a fork hook is
    # "ignored"), so the flag is also checked between the demo's steps.
    _interrupted.set()
    raise KeyboardInterrupt


def _check_interrupted() -> None:
    if _interrupted.is_set():
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cluster:  # cluster mode's demo lives in its own module
        if args.keep or args.cleanup:
            parser.error("--cluster takes only --fake")
        if sys.platform == "win32":
            say("overlayd demo --cluster is not supported on Windows")
            return 2
        else:
            from overlayd.demo_cluster import main as cluster_demo

            return cluster_demo(fake=args.fake)
    if args.cleanup:
        if args.keep or args.fake:
            parser.error("--cleanup goes alone")
        if (missing := missing_prerequisites()) and "root privileges (run it with sudo)" in missing:
            say("cleaning up needs root privileges (run it with sudo)")
            return 1
        try:
            cleanup(args.cleanup)
        except DemoFailed as exc:
            say(str(exc))
            return 2
        return 0
    missing = [] if args.fake else missing_prerequisites()
    if args.fake or missing:
        if missing:
            say("the real demo needs what this host lacks:", step=True)
            for item in missing:
                say(f"- {item}")
            if args.keep:
                say("(--keep has no effect on the fake driver)")
        return asyncio.run(fake_demo())
    _interrupted.clear()
    demo = RealDemo(keep=args.keep)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 1
    try:
        code = demo.run()
    except KeyboardInterrupt:
        say("interrupted", step=True)
        demo.keep = False
        code = 130
    except (OverlaydError, OSError) as exc:
        say(f"the demo failed: {exc}", step=True)
        demo.print_logs()
        demo.keep = False
        code = 1
    finally:
        # The teardown must finish: a second Ctrl-C would leave half of it behind.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            demo.teardown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
