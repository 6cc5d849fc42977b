"""``overlayd demo --fake``: the two-node scenario without privileges or packets.

Two engines on the fake driver run in this process, each with overlayd's DNS
server on a loopback port; the demo shows keys, addresses, peers and real DNS
answers, everything but a data plane.
"""

from __future__ import annotations

import socket

from overlayd_demo.common import CLUSTER
from overlayd_demo.common import SERVICES
from overlayd_demo.common import SLICES
from overlayd_demo.common import WG_PORT
from overlayd_demo.common import say

__all__ = ["fake_demo"]


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
