"""Three real nodes form the overlay through etcd, with no orchestrator and no add_peer.

Namespaces made here: a "switch" namespace holding the underlay bridge and a
real etcd (10.235.0.254), and three node namespaces joined to it by veths
(10.235.0.1-3). In each node an ``overlayd serve`` runs with the
``linux_bridge`` and ``wireguard`` (wireguard-go) drivers and a ``[cluster]``
table; each attaches one container (a ``sleep`` in a namespace of its own).

* every container pings every other across WireGuard;
* a node's daemon is killed: the others drop its peer within ttl + 5 s; it
  starts again with the same slice and key and is back in the mesh;
* etcd is stopped for 30 s: pings keep flowing, no peer is removed; etcd
  starts again from its data directory: no peer is removed and re-added (the
  agents' peer hook calls, counted in ``cluster_status``, do not change).

Addresses exist only in these namespaces; everything is removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("etcd3gw", reason="cluster mode needs the `cluster` extra (etcd3gw)")

from overlayd.client import Client
from overlayd.names import global_device_name
from overlayd.testing.daemon import start_daemon
from overlayd.testing.daemon import terminate
from overlayd.testing.etcd import EtcdServer
from overlayd.testing.etcd import etcd_binary

pytestmark = [pytest.mark.privileged, pytest.mark.slow, pytest.mark.timeout(420)]

TTL = 5
UNDERLAY = "10.235.0"
CLUSTER = "10.236.0.0/16"
CONFIG = """
[drivers]
enabled = ["linux_bridge", "wireguard"]

[drivers.wireguard]
backend = "userspace"

[dns]
forward = false

[engine]
health_interval_secs = 0

[cluster]
endpoints = ["http://{etcd}:2379"]
name = "{name}"
advertise = "{underlay}"
cluster_cidr = "{cluster}"
ttl = {ttl}
prefix = "/{prefix}"
deployment = "{prefix}"
keepalive_secs = 2
"""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - start


@dataclass
class Node:
    name: str
    ns: str
    underlay: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    container_ns: str = ""
    container: subprocess.Popen[bytes] | None = None
    ip: str = ""
    extra: list[str] = field(default_factory=list)

    @property
    def socket(self) -> str:
        return str(self.workdir / "overlayd.sock")

    def start(self, etcd: str, prefix: str) -> None:
        config = CONFIG.format(
            etcd=etcd,
            name=self.name,
            underlay=self.underlay,
            cluster=CLUSTER,
            ttl=TTL,
            prefix=prefix,
        )
        self.proc = start_daemon(
            self.workdir,
            config,
            socket_path=Path(self.socket),
            prefix=("ip", "netns", "exec", self.ns),
            args=("--log-level", "info"),
        ).proc

    def kill_daemon(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop_daemon(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                terminate(self.proc, 20)
        self.proc = None

    def call(self, fn: Callable[[Client], Any]) -> Any:
        with Client(self.socket, timeout=30) as c:
            return fn(c)

    def cluster(self) -> dict[str, Any]:
        return dict(self.call(lambda c: c.cluster_status().to_wire()))

    def peer_keys(self) -> set[str]:
        return {p.public_key for p in self.call(lambda c: c.status().peers)}

    def ping(self, dst: str, count: int = 1) -> bool:
        out = _run(
            "ip", "netns", "exec", self.container_ns, "ping", "-c", str(count), "-W", "2", dst,
            check=False,
        )  # fmt: skip
        return out.returncode == 0


@dataclass
class Cluster:
    nodes: list[Node]
    etcd: EtcdServer
    prefix: str


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if shutil.which("wireguard-go") is None:
        pytest.fail("wireguard-go is not installed (apt-get install wireguard-go)")
    if etcd_binary() is None:
        pytest.fail("etcd is not installed (apt-get install etcd-server)")
    sfx = secrets.token_hex(3)
    root = Path(tempfile.mkdtemp(prefix=f"ocn{sfx}", dir="/tmp"))
    switch = f"ocn-sw-{sfx}"
    nodes = [Node(f"n{i}", f"ocn-n{i}-{sfx}", f"{UNDERLAY}.{i}", root / f"n{i}") for i in (1, 2, 3)]
    created: list[str] = []
    etcd: EtcdServer | None = None
    prefix = f"ocn{sfx}"
    try:
        for ns in [switch, *(n.ns for n in nodes)]:
            _run("ip", "netns", "add", ns)
            created.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", switch, "addr", "add", f"{UNDERLAY}.254/24", "dev", "br0")
        _run("ip", "-n", switch, "link", "set", "br0", "up")
        for n in nodes:
            n.workdir.mkdir()
            _run("ip", "link", "add", "eth0", "netns", n.ns, "type", "veth", "peer",
                 "name", f"p-{n.name}", "netns", switch)  # fmt: skip
            _run("ip", "-n", switch, "link", "set", f"p-{n.name}", "master", "br0", "up")
            _run("ip", "-n", n.ns, "addr", "add", f"{n.underlay}/24", "dev", "eth0")
            _run("ip", "-n", n.ns, "link", "set", "eth0", "up")
        etcd = EtcdServer(root / "etcd", host=f"{UNDERLAY}.254", netns=switch)
        etcd.start()
        for n in nodes:
            n.start(etcd.host, prefix)
        yield Cluster(nodes, etcd, prefix)
    finally:
        for n in nodes:
            for argv in (("ip", "-n", n.ns, "addr"), ("ip", "-n", n.ns, "route")):
                res = _run(*argv, check=False)
                print(f"--- {n.ns}: {' '.join(argv)}\n{res.stdout}{res.stderr}")
        for n in nodes:
            with contextlib.suppress(Exception):
                n.stop_daemon()
            if n.container is not None and n.container.poll() is None:
                n.container.kill()
                n.container.wait(5)
        if etcd is not None:
            print(f"--- etcd ---\n{etcd.log_tail()}")
            etcd.kill()
        for ns in [*(n.container_ns for n in nodes if n.container_ns), *created]:
            pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run("ip", "netns", "del", ns, check=False)
        for n in nodes:
            # wireguard-go unlinks its UAPI socket on SIGTERM, not on SIGKILL
            with contextlib.suppress(FileNotFoundError):
                Path(f"/var/run/wireguard/{global_device_name(prefix, n.name)}.sock").unlink()
        for log in sorted(root.glob("*/daemon.log")):
            print(f"--- {log.parent.name} ---\n{log.read_text(errors='replace')[-6000:]}")
        shutil.rmtree(root, ignore_errors=True)


def _attach(node: Node, sfx: str) -> None:
    node.container_ns = f"ocn-c{node.name}-{sfx}"
    _run("ip", "netns", "add", node.container_ns)
    node.container = subprocess.Popen(["ip", "netns", "exec", node.container_ns, "sleep", "600"])
    target = os.stat(f"/run/netns/{node.container_ns}").st_ino
    wait_until(
        lambda: os.stat(f"/proc/{node.container.pid}/ns/net").st_ino == target,  # type: ignore[union-attr]
        5,
        "the container process to enter its namespace",
    )
    pid = node.container.pid

    def attach(c: Client) -> str:
        c.setup_service_overlay("web", "shared")
        answer = c.attach_container({"platform": "linux_pid", "pid": pid}, "web")
        return str(answer.ip)

    node.ip = node.call(attach)


def _all_pings(nodes: list[Node]) -> list[tuple[str, str]]:
    return [(a.name, b.name) for a in nodes for b in nodes if a is not b and not a.ping(b.ip)]


def test_containers_on_three_nodes_reach_each_other(cluster: Cluster) -> None:
    nodes = cluster.nodes
    for n in nodes:
        wait_until(lambda n=n: len(n.cluster()["nodes"]) == 3, 30, f"{n.name} to see 3 nodes")
        wait_until(lambda n=n: len(n.peer_keys()) == 2, 30, f"{n.name} to have 2 peers")
    views = [n.cluster() for n in nodes]
    slices = {node["name"]: tuple(node["slices"]) for node in views[0]["nodes"]}
    assert len(set(slices.values())) == 3
    for view in views:
        assert {node["name"]: tuple(node["slices"]) for node in view["nodes"]} == slices
    sfx = cluster.prefix[3:]
    for n in nodes:
        _attach(n, sfx)
    wait_until(lambda: not _all_pings(nodes), 30, "every container to ping every other")
    # the names of containers on other nodes resolve through the local gateway
    gateway = _run("ip", "-n", nodes[0].container_ns, "route", "show", "default").stdout.split()[2]
    zone = f"{cluster.prefix}.local"
    answer = _run(
        "ip", "netns", "exec", nodes[0].container_ns, "dig", "+short", "+time=2",
        f"@{gateway}", f"web.{zone}",
    ).stdout.split()  # fmt: skip
    assert sorted(answer) == sorted(n.ip for n in nodes)
    # handshakes happened and are reported
    for node in views[0]["nodes"]:
        assert node["lease_ttl_secs"] is not None and 0 < node["lease_ttl_secs"] <= TTL


def test_a_killed_node_is_dropped_and_comes_back(cluster: Cluster) -> None:
    n1, n2, n3 = cluster.nodes
    before = {n["name"]: n for n in n1.cluster()["nodes"]}
    key3 = before["n3"]["public_key"]
    n3.kill_daemon()
    took = wait_until(
        lambda: key3 not in n1.peer_keys() and key3 not in n2.peer_keys(),
        TTL + 5,
        "n1 and n2 to drop n3's peer",
    )
    print(f"n3's peer was dropped {took:.1f} s after its daemon was killed")
    assert not n1.ping(n3.ip)
    assert n1.ping(n2.ip)
    n3.start(cluster.etcd.host, cluster.prefix)
    wait_until(lambda: key3 in n1.peer_keys() and key3 in n2.peer_keys(), 30, "n3 back")
    after = {n["name"]: n for n in n1.cluster()["nodes"]}
    assert after["n3"]["public_key"] == key3
    assert after["n3"]["slices"] == before["n3"]["slices"]
    wait_until(lambda: not _all_pings(cluster.nodes), 30, "the full mesh again")


def test_etcd_outage_keeps_traffic_and_causes_no_churn(cluster: Cluster) -> None:
    nodes = cluster.nodes
    for n in nodes:
        wait_until(lambda n=n: n.cluster()["connected"], 20, f"{n.name} connected")
    wait_until(lambda: not _all_pings(nodes), 30, "the full mesh")
    stats = {n.name: n.cluster()["stats"] for n in nodes}
    peers = {n.name: n.peer_keys() for n in nodes}
    cluster.etcd.stop()
    started = time.monotonic()
    while time.monotonic() - started < 30:
        assert not _all_pings(nodes), "traffic stopped while etcd was down"
        for n in nodes:
            assert n.peer_keys() == peers[n.name], f"{n.name} lost a peer during the outage"
        time.sleep(2)
    assert not any(n.cluster()["connected"] for n in nodes)
    cluster.etcd.start()
    for n in nodes:
        wait_until(lambda n=n: n.cluster()["connected"], 30, f"{n.name} to reconnect")
    time.sleep(TTL + 2)
    for n in nodes:
        now = n.cluster()["stats"]
        assert now["sessions"] > stats[n.name]["sessions"]
        # no peer hook call at all: nothing was removed, re-added or updated
        for counter in ("peer_batches", "peers_added", "peers_removed", "peers_updated"):
            assert now[counter] == stats[n.name][counter], (n.name, counter, json.dumps(now))
        assert n.peer_keys() == peers[n.name]
    assert not _all_pings(nodes)
