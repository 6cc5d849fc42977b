"""Cluster mode behind NATs: candidates travel through etcd, with no orchestrator at all.

The topology is the lab of ``test_nat_traversal.py`` (a "public" switch
namespace with coturn as STUN and TURN server, two NAT router namespaces
with nftables masquerade, a node namespace behind each), plus a real etcd
(Debian ``etcd-server``) on the switch at 10.240.0.3. Each node runs
``overlayd serve`` with wireguard-go, a ``[cluster]`` table (``nat = true``)
and a ``[nat]`` table; its ``advertise`` address is its private LAN address,
which the other node cannot reach.

Nobody calls ``nat_peer_candidates``: each node publishes its candidates in
its etcd node record and the other node's watch feeds them to its NAT agent.

* both NATs endpoint-independent: a direct path is found, the overlay
  addresses ping each other, the candidates each node holds for its peer are
  the ones the peer published in etcd;
* a router's mapping changes (new port range, conntrack flushed): the node
  re-gathers, republishes its record, and the other node takes the new
  reflexive candidate and switches within two refresh periods.

Every namespace, process and file is the test's own and removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from base64 import b64decode
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("etcd3gw", reason="cluster mode needs the `cluster` extra (etcd3gw)")

from overlayd.errors import OverlaydError
from overlayd.testing.etcd import EtcdServer
from overlayd.testing.etcd import etcd_binary
from overlayd.testing.scripts import load_script

pytestmark = [pytest.mark.privileged, pytest.mark.slow, pytest.mark.timeout(300)]


lab_mod = load_script(Path(__file__).with_name("test_nat_traversal.py"), "cluster_nat_lab")
run = lab_mod.run
wait_until = lab_mod.wait_until
REFRESH = lab_mod.REFRESH
WG_PORT = lab_mod.WG_PORT
ETCD_IP = "10.240.0.3"
CLUSTER_CIDR = "10.250.0.0/16"

#: Runs in the switch namespace (the only one that reaches etcd without a NAT).
RANGE_SCRIPT = """
import json, sys, urllib.request
body = json.dumps({"key": sys.argv[2]}).encode()
with urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=body), timeout=5) as r:
    sys.stdout.write(r.read().decode())
"""

CLUSTER = """
[cluster]
endpoints = ["http://{etcd}:2379"]
name = "{name}"
advertise = "{advertise}"
cluster_cidr = "{cidr}"
wg_port = {port}
ttl = 5
prefix = "/{prefix}"
deployment = "{prefix}"
keepalive_secs = 2
nat = true
"""


class ClusterLab:
    """The NAT lab, an etcd on its switch and two cluster nodes behind the NATs."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.etcd: EtcdServer | None = None
        self.prefix = f"cnat{lab.sfx}"

    def bring_up(self, nat_a: str, nat_b: str) -> tuple[Any, Any]:
        lab = self.lab
        a, b = lab.build(nat_a, nat_b)
        run("ip", "-n", lab.pub, "addr", "add", f"{ETCD_IP}/24", "dev", "br0")
        self.etcd = EtcdServer(lab.root / "etcd", host=ETCD_IP, netns=lab.pub)
        self.etcd.start()
        lab.start_coturn()
        for node in (a, b):
            cluster = CLUSTER.format(
                etcd=ETCD_IP,
                name=node.instance,
                advertise=f"10.241.{node.index}.2",
                cidr=CLUSTER_CIDR,
                port=WG_PORT,
                prefix=self.prefix,
            )
            node.start(lab.nat_config() + cluster)
        for node in (a, b):
            wait_until(node.has_candidates, 20, f"{node.name} to join and gather its candidates")
        return a, b

    def record(self, node: Any) -> dict[str, Any]:
        """The node's record as etcd holds it (etcd's JSON gateway, not overlayd's code)."""
        key = b64encode(f"/{self.prefix}/nodes/{node.instance}".encode()).decode()
        out = run(
            "ip", "netns", "exec", self.lab.pub, sys.executable, "-c", RANGE_SCRIPT,
            f"http://{ETCD_IP}:2379/v3/kv/range", key,
        ).stdout  # fmt: skip
        kvs = json.loads(out).get("kvs", [])
        assert len(kvs) == 1, out
        value: dict[str, Any] = json.loads(b64decode(kvs[0]["value"]))
        return value

    def close(self) -> None:
        if self.etcd is not None:
            with contextlib.suppress(Exception):
                self.etcd.kill()


@pytest.fixture
def clab() -> Iterator[ClusterLab]:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    for program in ("turnserver", "wireguard-go"):
        if not lab_mod.shutil.which(program):
            pytest.skip(f"{program} is not installed")
    lab = lab_mod.Lab()
    the_lab = ClusterLab(lab)
    try:
        yield the_lab
    finally:
        lab.close()  # the daemons first, then etcd (its namespace goes too)
        the_lab.close()


def _peer(node: Any, other: Any) -> Any:
    st = node.status()
    assert st.nat is not None
    return next((p for p in st.nat.peers if p.public_key == other.public_key), None)


def _published(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["kind"], c["endpoint"]) for c in record["candidates"]]


def _ping(node: Any, ip: str) -> bool:
    res = run("ip", "netns", "exec", node.ns, "ping", "-c", "1", "-W", "0.3", ip, check=False)
    return bool(res.returncode == 0)


def test_cluster_nodes_behind_nats_find_a_direct_path_through_etcd(clab: ClusterLab) -> None:
    a, b = clab.bring_up("eim", "eim")
    started = time.monotonic()
    wait_until(
        lambda: (a.path_of(b), b.path_of(a)) == ("direct", "direct"), 20, "a direct path both ways"
    )
    print(f"direct path {time.monotonic() - started:.2f} s after both nodes gathered")
    ip_a, ip_b = a.status().node_ip, b.status().node_ip
    assert ip_a and ip_b and ip_a != ip_b
    wait_until(lambda: _ping(a, ip_b), 5, "a ping from a to b's overlay address", 0.0)
    assert _ping(b, ip_a)
    for node, other in ((a, b), (b, a)):
        # What the node holds for its peer is what the peer published in etcd.
        record = clab.record(other)
        kinds = {c["kind"] for c in record["candidates"]}
        assert kinds == {"host", "reflexive", "relay"}, record
        reflexive = [c for c in record["candidates"] if c["kind"] == "reflexive"]
        assert [(c["endpoint"], c.get("guessed")) for c in reflexive] == [
            (f"10.240.0.{10 + other.index}:{WG_PORT}", None)
        ]
        assert all(c["priority"] > 0 for c in record["candidates"])
        peer = _peer(node, other)
        assert peer is not None
        assert [(c.kind, c.endpoint) for c in peer.candidates] == _published(record)
        # The path is the peer's NAT mapping, not the LAN address it advertises.
        assert peer.endpoint == f"10.240.0.{10 + other.index}:{WG_PORT}"
        assert node.events and all(
            ev.endpoint.startswith(f"10.240.0.{10 + other.index}:") for _, ev in node.events
        )
    # The IPC path is closed in cluster mode: candidates come only from the store.
    st_b = b.status()
    assert st_b.nat is not None and st_b.public_key
    with a.client() as c, pytest.raises(OverlaydError, match="cluster store"):
        c.nat_peer_candidates(st_b.public_key, st_b.nat.candidates)


def test_changed_mapping_is_republished_and_followed(clab: ClusterLab) -> None:
    a, b = clab.bring_up("eim", "eim")
    wait_until(lambda: (a.path_of(b), b.path_of(a)) == ("direct", "direct"), 20, "a direct path")
    b.events.clear()
    changed_at = time.monotonic()
    clab.lab.change_router("a", lab_mod.port_range_rules())

    def republished() -> bool:
        return any(
            kind == "reflexive" and ep.startswith("10.240.0.11:40")
            for kind, ep in _published(clab.record(a))
        )

    def b_holds_it() -> bool:
        peer = _peer(b, a)
        return peer is not None and any(
            c.kind == "reflexive" and c.endpoint.startswith("10.240.0.11:40")
            for c in peer.candidates
        )

    def b_switched() -> bool:
        return any(ev.endpoint.startswith("10.240.0.11:40") for _, ev in b.events)

    wait_until(republished, 2 * REFRESH, "a to republish its new mapping in etcd", 0.1)
    wait_until(b_holds_it, 2 * REFRESH, "b to take a's new candidate from etcd", 0.1)
    took = wait_until(b_switched, 2 * REFRESH, "b to switch to a's new mapping", 0.1)
    elapsed = time.monotonic() - changed_at
    print(f"new mapping republished and followed after {elapsed:.2f} s (refresh {REFRESH} s)")
    assert elapsed <= 2 * REFRESH + 0.5, took
    ip_b = b.status().node_ip
    assert ip_b
    wait_until(lambda: _ping(a, ip_b), 5, "a ping after the change", 0.0)
    assert (a.path_of(b), b.path_of(a)) == ("direct", "direct")
