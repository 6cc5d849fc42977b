"""``overlayd demo --cluster``: three nodes form the overlay themselves through etcd.

As root, with ``wireguard-go``, Debian's ``etcd-server`` and the ``cluster``
extra installed, it builds, inside network namespaces it creates (never
touching the host's interfaces): a "switch" namespace holding the underlay
bridge and a real etcd, and three node namespaces, each running ``overlayd
serve`` with the ``linux_bridge`` and ``wireguard`` drivers and nothing but a
``[cluster]`` table. No IPC call sets anything up and no ``add_peer`` is sent:
the demo watches the nodes claim slices and find each other, attaches one
container per node, resolves the service name through the first node's DNS
server and pings the other nodes' containers across WireGuard, then removes
everything (also on Ctrl-C).

Without root (or with ``--fake``) it runs three in-process engines on the fake
driver against a real etcd on loopback: the same joining and peer sets,
without packets. It installs nothing; what is missing is named.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overlayd_demo.common import check_interrupted
from overlayd_demo.common import interruptible
from overlayd_demo.common import plan
from overlayd_demo.common import say
from overlayd_demo.common import step

# POSIX only (mypy --platform win32 skips the rest).
assert sys.platform != "win32", "overlayd demo --cluster runs on Linux only"

__all__ = ["main", "missing_prerequisites"]

CLUSTER = "10.210.0.0/16"
UNDERLAY = "10.209.0"
TTL = 5
NODES = ("n1", "n2", "n3")


def missing_prerequisites(fake: bool) -> list[str]:
    """What this host lacks for the demo (empty: it can run)."""
    missing = []
    if importlib.util.find_spec("etcd3gw") is None:
        missing.append("the cluster extra: pip install 'overlayd[cluster]'")
    if shutil.which("etcd") is None and not os.access("/usr/bin/etcd", os.X_OK):
        missing.append("etcd: apt-get install etcd-server")
    if fake:
        if importlib.util.find_spec("overlayd_fake") is None:
            missing.append("the fake driver: pip install overlayd-fake")
        return missing
    if os.geteuid() != 0:
        missing.append("root privileges (run it with sudo)")
    if shutil.which("wireguard-go") is None:
        missing.append("wireguard-go: apt-get install wireguard-go")
    if shutil.which("ip") is None:
        missing.append("ip: apt-get install iproute2")
    for dist in ("overlayd_linux_bridge", "overlayd_wireguard"):
        if importlib.util.find_spec(dist) is None:
            missing.append(f"the {dist} driver: pip install {dist.replace('_', '-')}")
    return missing


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the ip program with our own arguments
        ["ip", *args],  # noqa: S607
        check=check,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        check_interrupted()
        time.sleep(0.2)
    return time.monotonic() - start


def _ping(netns: str, target: str, count: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        ["ip", "netns", "exec", netns, "ping", "-c", str(count), "-W", "2", target],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _answers(netns: str, target: str) -> bool:
    return _ping(netns, target, 1).returncode == 0


_RESOLVE = (
    "import sys, dns.resolver\n"
    "r = dns.resolver.Resolver(configure=False)\n"
    "r.nameservers = [sys.argv[1]]\n"
    "print(' '.join(sorted(a.address for a in r.resolve(sys.argv[2], 'A'))))\n"
)


class RealClusterDemo:
    """Three namespaced nodes, a namespaced etcd, wireguard-go and bridges."""

    def __init__(self) -> None:
        tag = secrets.token_hex(2)
        self.tag = tag
        self.prefix = f"ovdc{tag}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.switch = f"{self.prefix}-sw"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.etcd: Any = None
        self.containers: dict[str, tuple[str, str]] = {}

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def socket(self, node: str) -> str:
        return str(self.tmp / node / "overlayd.sock")

    def _netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _spawn(self, ns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - ip netns exec with our own program
                ["ip", "netns", "exec", ns, *argv],  # noqa: S607
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def client(self, node: str) -> Any:
        from overlayd.client import Client

        return Client(self.socket(node), timeout=30)

    def run(self) -> int:
        from overlayd.cluster.view import print_cluster
        from overlayd.testing.etcd import EtcdServer

        plan(5 + len(NODES) - 1)  # the step() calls below: a ping step per other node
        step("an underlay switch with etcd, and three nodes, in network namespaces")
        self._netns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "addr", "add", f"{UNDERLAY}.254/24", "dev", "br0")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, node in enumerate(NODES, 1):
            self._netns(self.ns(node))
            _ip("link", "add", "eth0", "netns", self.ns(node), "type", "veth",
                "peer", "name", f"p-{node}", "netns", self.switch)  # fmt: skip
            _ip("-n", self.switch, "link", "set", f"p-{node}", "master", "br0", "up")
            _ip("-n", self.ns(node), "addr", "add", f"{UNDERLAY}.{i}/24", "dev", "eth0")
            _ip("-n", self.ns(node), "link", "set", "eth0", "up")
            say(f"node {node}: netns {self.ns(node)}, underlay {UNDERLAY}.{i}")
        self.etcd = EtcdServer(self.tmp / "etcd", host=f"{UNDERLAY}.254", netns=self.switch)
        self.etcd.start()
        say(f"etcd {self.etcd.url} in {self.switch}")

        step("starting overlayd on each node with only a [cluster] table")
        for i, node in enumerate(NODES, 1):
            workdir = self.tmp / node
            workdir.mkdir()
            config = workdir / "overlayd.toml"
            config.write_text(
                "[drivers]\n"
                'enabled = ["linux_bridge", "wireguard"]\n'
                "[drivers.wireguard]\n"
                'backend = "userspace"\n'
                "[dns]\n"
                "forward = false\n"
                "[cluster]\n"
                f'endpoints = ["{self.etcd.url}"]\n'
                f'name = "{node}"\n'
                f'advertise = "{UNDERLAY}.{i}"\n'
                f'cluster_cidr = "{CLUSTER}"\n'
                f"ttl = {TTL}\n"
                f'prefix = "/{self.prefix}"\n'
                f'deployment = "{self.prefix}"\n'
            )
            self._spawn(
                self.ns(node),
                [sys.executable, "-m", "overlayd", "serve", "--config", str(config),
                 "--socket", self.socket(node), "--data-dir", str(workdir / "data")],
                workdir / "daemon.log",
            )  # fmt: skip
        for node in NODES:
            path = self.socket(node)
            _wait(functools.partial(os.path.exists, path), 30, f"overlayd on {node}")
        print(f"    cat {self.tmp}/n1/overlayd.toml")
        for line in (self.tmp / "n1" / "overlayd.toml").read_text().splitlines()[-8:]:
            say(f"  {line}")

        step("the mesh forms by itself (no setup_global_overlay, no add_peer)")
        start = time.monotonic()
        seen: set[tuple[str, str]] = set()
        while True:
            done = True
            for node in NODES:
                with self.client(node) as c:
                    view = c.cluster_status()
                    peers = {p.public_key for p in c.status().peers}
                for other in view.nodes:
                    if other.local or (node, other.name) in seen:
                        continue
                    if other.public_key in peers:
                        seen.add((node, other.name))
                        say(
                            f"{time.monotonic() - start:5.1f}s  {node}: peer {other.name} "
                            f"({other.slices[0]} via {other.endpoint})"
                        )
                done = done and len(view.nodes) == len(NODES) and len(peers) == len(NODES) - 1
            if done:
                break
            if time.monotonic() - start > 60:
                raise RuntimeError("the mesh did not form within 60 s")
            time.sleep(0.2)
        with self.client("n1") as c:
            print_cluster(c.cluster_status())

        step("one container per node (netns + sleep) in service web")
        for node in NODES:
            cns = f"{self.prefix}-c{node}"
            self._netns(cns)
            proc = self._spawn(cns, ["sleep", "infinity"], self.tmp / "sleep.log")
            target = os.stat(f"/run/netns/{cns}").st_ino
            pid = proc.pid

            def entered(pid: int = pid, target: int = target) -> bool:
                return os.stat(f"/proc/{pid}/ns/net").st_ino == target

            _wait(entered, 5, "the container to enter its namespace")
            with self.client(node) as c:
                c.setup_service_overlay("web", "shared")
                ip = c.attach_container({"platform": "linux_pid", "pid": proc.pid}, "web").ip
            self.containers[node] = (cns, str(ip))
            say(f"{node}: container {cns} -> {ip}")

        source_ns, source_ip = self.containers["n1"]
        gateway = _ip("-n", source_ns, "route", "show", "default").stdout.split()[2]
        name = f"web.{self.prefix}.local"
        step(f"n1's container resolves {name} via its gateway {gateway}")
        answer = subprocess.run(  # noqa: S603 - our interpreter, a fixed script
            ["ip", "netns", "exec", source_ns, sys.executable, "-c", _RESOLVE, gateway, name],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        say(f"{name} -> {answer.stdout.strip() or answer.stderr.strip()}")

        ok = True
        for node in ("n2", "n3"):
            target_ip = self.containers[node][1]
            step(f"n1's container ({source_ip}) pings {node}'s ({target_ip})")
            # WireGuard resends a lost handshake initiation only after 5 s (one
            # sent before the other node's device was listening is lost), so
            # the first reply can take that long: wait for it, then measure.
            waited = _wait(
                functools.partial(_answers, source_ns, target_ip),
                20,
                f"a first reply from {node} (the WireGuard handshake)",
            )
            say(f"first reply after {waited:.1f} s")
            out = _ping(source_ns, target_ip, 3)
            for line in out.stdout.strip().splitlines()[-2:]:
                say(line)
            ok = ok and out.returncode == 0
        return 0 if ok else 1

    def teardown(self) -> None:
        from overlayd.names import global_device_name

        say("tearing everything down", step=True)
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        if self.etcd is not None:
            self.etcd.kill()
        for ns in reversed(self.namespaces):
            for pid in _ip("netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", ns, check=False)
        for node in NODES:
            sock = Path(f"/var/run/wireguard/{global_device_name(self.prefix, node)}.sock")
            sock.unlink(missing_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        say(f"removed {len(self.namespaces)} namespaces, etcd and the daemons' state")


async def fake_cluster_demo() -> int:
    """Three engines on the fake driver, joined through a real etcd on loopback."""
    from overlayd.cluster.agent import ClusterAgent
    from overlayd.cluster.config import ClusterSettings
    from overlayd.cluster.dns import LocalNames
    from overlayd.cluster.view import cluster_status
    from overlayd.cluster.view import print_cluster
    from overlayd.config import DnsSettings
    from overlayd.config import EngineConfig
    from overlayd.config import EngineSettings
    from overlayd.engine import Engine
    from overlayd.testing.etcd import EtcdServer

    say("fake driver: three in-process engines, a real etcd on loopback, no packets", step=True)
    tmp = Path(tempfile.mkdtemp(prefix="ovdc-fake-"))
    etcd = EtcdServer(tmp / "etcd")
    etcd.start()
    say(f"etcd {etcd.url}")
    nodes: list[tuple[Engine, ClusterAgent]] = []
    try:
        start = time.monotonic()
        for name in NODES:
            local = LocalNames()
            engine = Engine(
                EngineConfig(
                    data_dir=tmp / name,
                    drivers=["fake"],
                    dns=DnsSettings(enabled=False, listen_on_gateways=False),
                    engine=EngineSettings(health_interval_secs=0),
                ),
                plugins=[local],
            )
            await engine.start()
            settings = ClusterSettings(
                endpoints=[etcd.url],
                name=name,
                advertise="127.0.0.1",
                cluster_cidr=CLUSTER,
                ttl=TTL,
            )
            agent = ClusterAgent(settings, engine, local)
            await agent.start()
            nodes.append((engine, agent))
            say(f"node {name} started with only [cluster] settings")

        async def full_mesh() -> bool:
            for engine, _ in nodes:
                if (await engine.status()).peer_count != len(NODES) - 1:
                    return False
            return True

        while not await full_mesh():
            if time.monotonic() - start > 30:
                say("the mesh did not form within 30 s")
                return 1
            await asyncio.sleep(0.05)
        say(f"full mesh after {time.monotonic() - start:.1f} s: every node has 2 peers", step=True)
        print_cluster(await cluster_status(nodes[0][1]))
        return 0
    finally:
        for engine, agent in nodes:
            await agent.stop()
            await engine.stop()
        etcd.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main(fake: bool = False) -> int:
    """Run the cluster demo; returns the exit code."""
    missing = missing_prerequisites(fake)
    if not fake and missing and not missing_prerequisites(True):
        say("the real cluster demo needs what this host lacks:", step=True)
        for item in missing:
            say(f"- {item}")
        return asyncio.run(fake_cluster_demo())
    if missing:
        say("the cluster demo needs what this host lacks:", step=True)
        for item in missing:
            say(f"- {item}")
        return 1
    if fake:
        return asyncio.run(fake_cluster_demo())
    demo = RealClusterDemo()
    with interruptible(demo.teardown):
        try:
            return demo.run()
        except KeyboardInterrupt:
            say("interrupted", step=True)
            return 130
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            say(f"the demo failed: {exc}", step=True)
            for node in NODES:
                log = demo.tmp / node / "daemon.log"
                if log.exists():
                    say(f"log of {node}:")
                    for line in log.read_text(errors="replace").splitlines()[-15:]:
                        say(f"  {line}")
            return 1
