"""Cluster DNS: a name registered on one node resolves on every node, and dies with it."""

from __future__ import annotations

from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode

from overlayd.model import LinuxPidHandle

from .conftest import dns_port as free_port
from .conftest import wait_for

TTL = 3


async def answers(name: str, port: int) -> set[str]:
    query = dns.message.make_query(name, "A")
    reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=2)
    if reply.rcode() != dns.rcode.NOERROR:
        return set()
    return {r.address for rrset in reply.answer for r in rrset}


async def served(port: int, want: dict[str, set[str]], tries: int) -> None:
    """Poll every 0.05 s, at most ``tries`` times, until each name of ``want``
    answers on ``port`` with its addresses (an empty set: not at all)."""
    for _ in range(tries):
        for name, addresses in want.items():
            if await answers(name, port) != addresses:
                break
        else:
            return
        await _sleep()
    raise AssertionError(f"{sorted(want)} not served as expected on port {port}")


async def test_names_resolve_on_every_node_and_expire_with_their_node(
    etcd_server: Any, make_node: Any
) -> None:
    ports = [free_port() for _ in range(3)]
    nodes = [
        await make_node(etcd_server.url, f"d{i}", dns_port=ports[i], ttl=TTL) for i in range(3)
    ]
    for node in nodes:
        await wait_for(node.agent.joined.is_set, 10, "join")
    a, b, c = nodes
    await a.engine.register_dns("db", "10.240.77.7")
    # a container attached on b with its service name
    await b.engine.setup_service_overlay("web", "shared")
    att = await b.engine.attach(LinuxPidHandle(pid=4242), "web")
    zone = "overlay.local."

    for port in ports:
        await served(port, {f"db.{zone}": {"10.240.77.7"}, f"web.{zone}": {str(att.ip)}}, 100)
    # unregistering removes it everywhere
    await a.engine.unregister_dns("db")
    for port in ports:
        await served(port, {f"db.{zone}": set()}, 100)
    # b dies: its names go with its lease
    await b.stop()
    for port in (ports[0], ports[2]):
        await served(port, {f"web.{zone}": set()}, 200)
    # the remote names were never stored locally
    assert not [r for r in c.engine.dns.values() if r.name == "web"]


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.05)
