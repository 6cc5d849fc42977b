"""overlayd-cni as a runtime drives it, against a real daemon with the linux_bridge driver.

Everything runs in namespaces the test creates: a "host" namespace in which
the daemon runs and the runtime executes the plugins (``ip netns exec``, as a
runtime runs them in its own namespace), container namespaces, and an
"outside" namespace linked to the host by a veth, whose address stands for a
client on the node's network. The WireGuard device comes from the fake driver
(this kernel has no WireGuard module); bridges, veths, routes, iptables rules
of the reference plugins and traffic are real.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlayd_cni.testing import Chain
from overlayd_cni.testing import Plugin
from overlayd_cni.testing import reference_plugin
from overlayd_linux_bridge.testing import Netns
from overlayd_linux_bridge.testing import ping

from .conftest import BridgeDaemon

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


@pytest.fixture
def make_chain(daemon: BridgeDaemon) -> Iterator[Callable[[dict[str, Any]], Chain]]:
    """Chains run in the host namespace; whatever they still hold is DEL'd at the end.

    (The reference plugins keep state outside the namespaces too, e.g. tuning's
    data directory, which the tests point into their temporary directory.)
    """
    made: list[Chain] = []

    def make(conflist: dict[str, Any]) -> Chain:
        chain = Chain(conflist, netns_exec=daemon.host.name)
        made.append(chain)
        return chain

    yield make
    for chain in made:
        for container, ifname in list(chain.cache):
            chain.delete(container, "", ifname)


def _plugin(daemon: BridgeDaemon, argv: list[str] | None = None, **conf: Any) -> Plugin:
    return Plugin(daemon.socket, name="ovl", service="web", argv=argv, **conf)


def _add(daemon: BridgeDaemon, plugin: Plugin, ns: Netns, cid: str) -> dict[str, Any]:
    out = plugin.run("ADD", container=cid, netns=ns.path, netns_exec=daemon.host.name)
    assert out.rc == 0, (out, daemon.log())
    return dict(out.out)


def _ip_of(res: dict[str, Any]) -> str:
    return str(ipaddress.ip_interface(res["ips"][-1]["address"]).ip)


@pytest.mark.parametrize("kind", ["script", "launcher", "native"])
def test_add_ping_check_del_gc_status(daemon: BridgeDaemon, argv: list[str]) -> None:
    """The executable a runtime is given: the console script, the launcher of
    ``overlayd-cni install`` or the front end of ``install --native`` (its
    ADD, DEL, GC and STATUS answered by the daemon, CHECK and the daemon-down
    cases by the Python plugin it runs then)."""
    plugin = _plugin(daemon, argv)
    a, b, c = daemon.make_netns("ca"), daemon.make_netns("cb"), daemon.make_netns("cc")
    res_a, res_b = _add(daemon, plugin, a, "ctr-a"), _add(daemon, plugin, b, "ctr-b")
    ip_a, ip_b = _ip_of(res_a), _ip_of(res_b)
    # The result describes what is really in the namespace.
    assert f"inet {res_a['ips'][0]['address']}" in a.ip("-o", "addr", "show", "dev", "eth0")
    assert res_a["interfaces"][1]["mac"] in a.ip("link", "show", "eth0")
    assert f"default via {res_a['ips'][0]['gateway']}" in a.ip("route")
    assert res_a["interfaces"][0]["name"] in daemon.host_links()
    assert ping(a, ip_b) and ping(b, ip_a)

    def check(ns: Netns, cid: str, res: dict[str, Any]) -> Any:
        conf = {**plugin.conf, "prevResult": res}
        return plugin.run(
            "CHECK", container=cid, netns=ns.path, conf=conf, netns_exec=daemon.host.name
        )

    assert check(a, "ctr-a", res_a).rc == 0, check(a, "ctr-a", res_a)
    assert check(b, "ctr-b", res_b).rc == 0
    # CHECK sees what changed inside the namespace...
    wrong_mac = {**res_a, "interfaces": [res_a["interfaces"][0], {**res_a["interfaces"][1]}]}
    wrong_mac["interfaces"][1]["mac"] = "02:00:00:00:00:99"
    out = check(a, "ctr-a", wrong_mac)
    assert out.rc == 1 and out.out["code"] == 101 and "02:00:00:00:00:99" in out.out["details"]
    b.ip("route", "del", "default")
    out = check(b, "ctr-b", res_b)
    assert out.rc == 1 and out.out["code"] == 101 and "route 0.0.0.0/0" in out.out["details"]
    b.ip("addr", "flush", "dev", "eth0")
    out = check(b, "ctr-b", res_b)
    assert out.rc == 1 and "lacks address" in out.out["details"], out
    # DEL twice; the host end is gone, the address free.
    for _ in range(2):
        out = plugin.run("DEL", container="ctr-b", netns=b.path, netns_exec=daemon.host.name)
        assert (out.rc, out.out) == (0, None), out
    assert res_b["interfaces"][0]["name"] not in daemon.host_links()
    assert "eth0" not in b.ip("-o", "link", "show")
    assert not ping(a, ip_b, timeout=1.0)
    # GC with the runtime's valid list: c goes, a stays and still works.
    res_c = _add(daemon, plugin, c, "ctr-c")
    gc_conf = {
        **plugin.conf,
        "cni.dev/valid-attachments": [{"containerID": "ctr-a", "ifname": "eth0"}],
    }
    out = plugin.run("GC", conf=gc_conf, ifname="", netns_exec=daemon.host.name)
    assert (out.rc, out.out) == (0, None), out
    assert res_c["interfaces"][0]["name"] not in daemon.host_links()
    atts = daemon.call({"op": "list_attachments"})["attachments"]
    assert [x["handle"]["container_id"] for x in atts] == ["ctr-a"]
    assert check(a, "ctr-a", res_a).rc == 0
    assert ping(a, res_a["ips"][0]["gateway"])
    # STATUS: up, then down.
    up = plugin.run("STATUS", ifname="", netns_exec=daemon.host.name)
    assert (up.rc, up.out) == (0, None), up
    daemon.stop()
    down = plugin.run("STATUS", ifname="", netns_exec=daemon.host.name)
    assert down.rc == 1 and down.out["code"] == 50
    # DEL with the daemon down still succeeds (and says what happens next).
    out = plugin.run("DEL", container="ctr-a", netns=a.path, netns_exec=daemon.host.name)
    assert (out.rc, out.out) == (0, None) and "when it starts" in out.err


@pytest.mark.parametrize("kind", ["script", "native"])
def test_del_after_the_namespace_is_gone_frees_everything(
    daemon: BridgeDaemon, argv: list[str]
) -> None:
    plugin = _plugin(daemon, argv)
    ns = daemon.make_netns("gone")
    res = _add(daemon, plugin, ns, "ctr-gone")
    subprocess.run(["ip", "netns", "del", ns.name], check=True)
    out = plugin.run("DEL", container="ctr-gone", netns=ns.path, netns_exec=daemon.host.name)
    assert (out.rc, out.out) == (0, None), out
    assert daemon.call({"op": "list_attachments"})["attachments"] == []
    assert daemon.call({"op": "list_leases", "pool": "service:web"})["leases"] == []
    assert res["interfaces"][0]["name"] not in daemon.host_links()


def test_bad_add_leaves_nothing_in_the_namespace_or_the_host(daemon: BridgeDaemon) -> None:
    plugin = _plugin(daemon)
    ns = daemon.make_netns("busy")
    ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth9")  # eth0 is taken
    # The service overlay belongs to the network, not the container: a failed
    # ADD may leave it created. Here it exists before.
    daemon.call({"op": "setup_service_overlay", "service": "web", "mode": "auto"})
    before = daemon.host_links()
    out = plugin.run("ADD", container="ctr-busy", netns=ns.path, netns_exec=daemon.host.name)
    assert out.rc == 1 and out.out["code"] == 100, out
    assert "eth0 already exists" in out.out["details"]
    assert daemon.call({"op": "list_attachments"})["attachments"] == []
    assert daemon.call({"op": "list_leases", "pool": "service:web"})["leases"] == []
    assert sorted(before.split("\n")) == sorted(daemon.host_links().split("\n"))


# -- chaining the reference plugins -------------------------------------------------


def _reference(name: str) -> None:
    if reference_plugin(name) is None:
        pytest.fail(
            f"the reference CNI plugin {name} is missing: "
            "apt-get install containernetworking-plugins"
        )


def _serve_tcp(ns: Netns, port: int) -> threading.Thread:
    """Answer one TCP connection on ``port`` in ``ns`` with b'hello from <port>'."""
    listener = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(4)

    def serve() -> None:
        with listener:
            ready, _, _ = select.select([listener], [], [], 20)
            if ready:
                conn, _ = listener.accept()
                with conn:
                    conn.sendall(b"hello from %d" % port)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _fetch(ns: Netns, host: str, port: int) -> bytes | None:
    with ns.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        try:
            sock.connect((host, port))
            return sock.recv(64)
        except OSError:
            return None


def test_portmap_after_overlayd_reaches_the_container(
    daemon: BridgeDaemon, make_chain: Callable[[dict[str, Any]], Chain]
) -> None:
    _reference("portmap")
    conflist = {
        "cniVersion": "1.0.0",
        "name": "ovl",
        "plugins": [
            {"type": "overlayd-cni", "socket": daemon.socket, "service": "web"},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    chain = make_chain(conflist)
    ns = daemon.make_netns("web")
    mappings = [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]
    out = chain.add("ctr-web", ns.path, portMappings=mappings)
    assert out.rc == 0, (out, daemon.log())
    assert out.out["ips"][0]["address"].startswith("10.241.")
    # From the node's network (PREROUTING) and from the host itself (OUTPUT).
    # Each listener is closed (its thread joined) before the next one binds
    # the same port: a listener still open makes the next bind fail.
    server = _serve_tcp(ns, 8080)
    assert _fetch(daemon.outside, "192.168.79.1", 18080) == b"hello from 8080"
    server.join(5)
    server = _serve_tcp(ns, 8080)
    assert _fetch(daemon.host, "192.168.79.1", 18080) == b"hello from 8080"
    server.join(5)
    # CHECK with the chain's final result. portmap 1.1.1's own CHECK fails on
    # IPv4-only containers (it looks for ip6tables chains it never made:
    # containernetworking/plugins issue 819), so it is left out.
    checked = chain.check("ctr-web", ns.path, skip=("portmap",))
    assert checked.rc == 0, checked
    out = chain.delete("ctr-web", ns.path)
    assert out.rc == 0, out
    _serve_tcp(ns, 8080)  # nothing maps to it any more (and the veth is gone)
    assert _fetch(daemon.outside, "192.168.79.1", 18080) is None
    assert daemon.call({"op": "list_attachments"})["attachments"] == []


def test_tuning_bandwidth_firewall_accept_our_result(
    daemon: BridgeDaemon, make_chain: Callable[[dict[str, Any]], Chain]
) -> None:
    for name in ("tuning", "bandwidth", "firewall"):
        _reference(name)
    conflist = {
        "cniVersion": "1.0.0",
        "name": "ovl",
        "plugins": [
            {"type": "overlayd-cni", "socket": daemon.socket, "service": "web"},
            {
                "type": "tuning",
                "dataDir": str(daemon.workdir / "tuning"),
                "mac": "02:aa:bb:cc:dd:ee",
                "sysctl": {"net.ipv4.conf.eth0.rp_filter": "2"},
            },
            {
                "type": "bandwidth",
                "ingressRate": 8_000_000,
                "ingressBurst": 100_000,
                "egressRate": 8_000_000,
                "egressBurst": 100_000,
            },
            {"type": "firewall", "backend": "iptables"},
        ],
    }
    chain = make_chain(conflist)
    ns, peer = daemon.make_netns("tuned"), daemon.make_netns("peer")
    out = chain.add("ctr-tuned", ns.path)
    assert out.rc == 0, (out, daemon.log())
    res = out.out
    host_end = res["interfaces"][0]["name"]
    # tuning changed the MAC and reported it; the sysctl is set in the container.
    assert res["interfaces"][1]["mac"] == "02:aa:bb:cc:dd:ee"
    assert "02:aa:bb:cc:dd:ee" in ns.ip("link", "show", "eth0")
    assert ns.sysctl("net/ipv4/conf/eth0/rp_filter") == "2"
    # bandwidth found our host end and shaped it.
    qdisc = subprocess.run(
        ["ip", "netns", "exec", daemon.host.name, "tc", "qdisc", "show", "dev", host_end],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "tbf" in qdisc, qdisc
    # firewall admitted the container's address.
    rules = subprocess.run(
        ["ip", "netns", "exec", daemon.host.name, "iptables", "-S", "CNI-FORWARD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(ipaddress.ip_interface(res["ips"][0]["address"]).ip) in rules, rules
    # The chain still carries traffic, and CHECK of every plugin passes.
    # The peer's chain without tuning: two containers must not share a MAC.
    plain = {**conflist, "plugins": [conflist["plugins"][0]]}
    peer_res = make_chain(plain)
    peer_out = peer_res.add("ctr-peer", peer.path)
    assert peer_out.rc == 0, peer_out
    assert ping(ns, _ip_of(peer_out.out))
    out = chain.check("ctr-tuned", ns.path)
    assert out.rc == 0, out
    assert chain.delete("ctr-tuned", ns.path).rc == 0
    assert peer_res.delete("ctr-peer", peer.path).rc == 0
    assert daemon.call({"op": "list_attachments"})["attachments"] == []
    assert host_end not in daemon.host_links()


@pytest.mark.parametrize("daemon_dns", [True])
def test_the_resolver_in_the_result_answers_for_the_service(daemon: BridgeDaemon) -> None:
    """With overlayd's DNS server on, the result names it; a real client resolves through it."""
    ns = daemon.make_netns("dnsc")
    res = _add(daemon, _plugin(daemon), ns, "ctr-dns")
    dns = res["dns"]
    gateway = res["ips"][0]["gateway"]
    assert dns["nameservers"] == [gateway]
    assert dns["domain"] == "cni.local" and dns["search"] == ["cni.local"]
    ip = _ip_of(res)
    deadline = time.monotonic() + 10
    answer = ""
    while ip not in answer and time.monotonic() < deadline:
        answer = subprocess.run(
            [
                *("ip", "netns", "exec", ns.name, "dig", "+short", "+time=1"),
                *("+tries=1", f"@{gateway}", f"web.{dns['domain']}"),
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    assert ip in answer.split(), answer


def test_a_second_network_after_bridge_keeps_the_first_default_route(
    daemon: BridgeDaemon, tmp_path: Path
) -> None:
    """overlayd-cni as a container's second interface, given the first one's result."""
    _reference("bridge")
    bridge_conf = {
        "cniVersion": "1.0.0",
        "name": "lan",
        "type": "bridge",
        "bridge": "cnilan0",
        "isGateway": True,
        "ipam": {
            "type": "host-local",
            "subnet": "10.78.0.0/24",
            "dataDir": str(tmp_path / "ipam"),
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    }
    lan = Chain({**bridge_conf, "plugins": [bridge_conf]}, netns_exec=daemon.host.name)
    plugin = _plugin(daemon)
    a, b = daemon.make_netns("twoa"), daemon.make_netns("twob")
    peer = _add(daemon, plugin, b, "ctr-b")  # b: overlay only
    first = lan.add("ctr-a", a.path)
    assert first.rc == 0, first
    try:
        conf = {**plugin.conf, "cniVersion": "1.0.0", "prevResult": first.out}
        out = plugin.run(
            "ADD",
            container="ctr-a",
            netns=a.path,
            ifname="net1",
            conf=conf,
            netns_exec=daemon.host.name,
        )
        assert out.rc == 0, out
        res = out.out
        # The bridge's interface and default route are kept; overlayd adds net1
        # and routes only the cluster through it.
        assert res["interfaces"][: len(first.out["interfaces"])] == first.out["interfaces"]
        gw = res["ips"][-1]["gateway"]
        assert {"dst": daemon.cluster, "gw": gw} in res["routes"]
        routes = a.ip("route")
        assert "default via 10.78.0.1 dev eth0" in routes, routes
        assert f"{daemon.cluster} via {gw} dev net1" in routes, routes
        assert ping(a, _ip_of(peer)) and ping(b, _ip_of(res))
        check = plugin.run(
            "CHECK",
            container="ctr-a",
            netns=a.path,
            ifname="net1",
            conf={**conf, "prevResult": res},
            netns_exec=daemon.host.name,
        )
        assert check.rc == 0, check
        out = plugin.run(
            "DEL", container="ctr-a", netns=a.path, ifname="net1", netns_exec=daemon.host.name
        )
        assert out.rc == 0, out
        assert "net1" not in a.ip("-o", "link", "show")
    finally:
        lan.delete("ctr-a", a.path)
