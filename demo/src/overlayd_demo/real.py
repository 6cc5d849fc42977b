"""The real two-node demo: namespaces, two daemons, WireGuard, bridges, DNS and a ping.

Everything is built inside network namespaces the demo creates (never the
host's own interfaces): two "nodes" joined by an underlay veth, an ``overlayd
serve`` per node with the ``linux_bridge`` and ``wireguard`` drivers, driven
only through :class:`overlayd.client.Client`, and containers (a namespace
holding a ``sleep`` process) attached by pid. Namespaces are entered with
:mod:`overlayd_linux.netns` and the ping is :func:`overlayd_linux.icmp.echo`.
:mod:`overlayd_demo.cleanup` removes what a run leaves.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import TypeVar

from overlayd.names import global_device_name
from overlayd_demo.cleanup import cleanup
from overlayd_demo.common import CLUSTER
from overlayd_demo.common import MANIFEST
from overlayd_demo.common import PINGS
from overlayd_demo.common import PREFIX_ROOT
from overlayd_demo.common import SERVICES
from overlayd_demo.common import SLICES
from overlayd_demo.common import WG_PORT
from overlayd_demo.common import ZONE
from overlayd_demo.common import DemoFailed
from overlayd_demo.common import attempt
from overlayd_demo.common import check_interrupted
from overlayd_demo.common import plan
from overlayd_demo.common import say
from overlayd_demo.common import step
from overlayd_demo.common import tail
from overlayd_linux import icmp
from overlayd_linux.netns import open_network_namespace
from overlayd_linux.netns import preexec_setns
from overlayd_linux.netns import run_in_netns

__all__ = ["RealDemo", "in_netns"]

T = TypeVar("T")


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that has entered the network namespace at ``path``."""
    fd = open_network_namespace(path)
    try:
        return run_in_netns(fd, fn)
    finally:
        os.close(fd)


def _spawn_in_netns(
    argv: list[str], netns: str, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside ``netns`` in its own session (a terminal's Ctrl-C reaches only us)."""
    fd = open_network_namespace(netns)
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(  # noqa: S603 - our own interpreter, module and `sleep`
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec_setns(fd),  # noqa: PLW1509 - setns before exec
        )
    finally:
        os.close(fd)
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
                    + tail(node.log)
                )
            check_interrupted()
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
        plan(9)  # the step() calls below
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
                check_interrupted()
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
                for line in tail(node.log).splitlines():
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
                    attempt("close the client", node.client.close)
            return
        say("tearing everything down", step=True)
        for node in self.nodes.values():
            if node.client is None:
                continue
            for cont in node.containers:
                if cont.proc is not None and cont.ip:
                    handle = {"platform": "linux_pid", "pid": cont.proc.pid}
                    attempt(
                        f"detach {cont.name}",
                        functools.partial(node.client.detach_container, handle),
                    )
            attempt(
                f"tear down the overlay of node {node.key}", node.client.teardown_global_overlay
            )
            attempt(f"stop overlayd on node {node.key}", node.client.shutdown)
            attempt("close the client", node.client.close)
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


def _ping(dst: str, count: int = 5, timeout: float = 2.0) -> list[float | None]:
    """ICMP echo over a raw socket (no `ping` binary needed); RTT in seconds or None."""
    out: list[float | None] = []
    ident = secrets.randbelow(0xFFFF) + 1
    with icmp.echo_socket(icmp.family_of(dst)) as sock:
        for seq in range(1, count + 1):
            out.append(icmp.echo(sock, dst, ident=ident, seq=seq, timeout=timeout))
            if seq < count:
                time.sleep(0.2)
    return out


def _wg_transfer(interface: str) -> dict[str, tuple[int, int]]:
    """Per-peer (received, sent) bytes from ``wg show IFACE transfer``; empty if unreadable.

    ``wg`` (wireguard-tools) reads wireguard-go's UAPI socket, which lives in the
    host's ``/var/run/wireguard`` whatever namespace the device is in.
    """
    if shutil.which("wg") is None:
        return {}
    try:
        out = subprocess.run(  # noqa: S603 - the wg program with our own arguments
            ["wg", "show", interface, "transfer"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    transfer: dict[str, tuple[int, int]] = {}
    for line in out.splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
            transfer[fields[0]] = (int(fields[1]), int(fields[2]))
    return transfer
