"""Cluster-mode test helpers: in-process nodes (engine, fake driver, agent) on a real etcd."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("etcd3gw", reason="cluster mode needs the `cluster` extra (etcd3gw)")

from overlayd.cluster.agent import ClusterAgent
from overlayd.cluster.config import ClusterSettings
from overlayd.cluster.dns import LocalNames
from overlayd.config import DnsSettings
from overlayd.config import EngineConfig
from overlayd.config import EngineSettings
from overlayd.engine import Engine
from overlayd.testing.plugin import HookRecorder

CLUSTER = "10.240.0.0/16"


@dataclass
class Node:
    name: str
    engine: Engine
    agent: ClusterAgent
    driver: Any
    data_dir: Path

    recorder: HookRecorder

    @property
    def peer_calls(self) -> int:
        """Peer hook calls the engine made (``overlayd_peer_apply``)."""
        return len(self.recorder.getcalls("overlayd_peer_apply"))

    def peers(self) -> dict[str, Any]:
        g = self.engine.global_
        return dict(self.engine.peers.get(g.device.name, {})) if g else {}

    async def stop(self) -> None:
        await self.agent.stop()
        await self.engine.stop()


def settings(url: str, name: str, **kw: Any) -> ClusterSettings:
    base: dict[str, Any] = {
        "endpoints": [url],
        "name": name,
        "advertise": "127.0.0.1",
        "cluster_cidr": CLUSTER,
        "ttl": 3,
        "prefix": "/t",
    }
    base.update(kw)
    return ClusterSettings.model_validate(base)


def dns_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 (the DNS server binds both)."""
    import socket

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


async def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def mesh(make_node: Callable[..., Any], url: str, *names: str, **kw: Any) -> list[Node]:
    """Nodes ``names`` joined through the etcd at ``url``, each seeing all the others."""
    nodes: list[Node] = [await make_node(url, name, **kw) for name in names]
    for node in nodes:
        await wait_for(
            lambda n=node: len(n.peers()) == len(nodes) - 1,
            10,
            f"{node.name} to see {len(nodes) - 1} peers",
        )
    return nodes


@pytest.fixture
async def make_node(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    nodes: list[Node] = []

    async def make(
        url: str,
        name: str,
        *,
        data_dir: Path | None = None,
        dns_port: int = 0,
        driver: Any = None,
        **kw: Any,
    ) -> Node:
        data_dir = data_dir or tmp_path / name
        from overlayd_fake.driver import FakeDriver

        driver = driver or FakeDriver()
        local = LocalNames()
        plugins: list[object] = [local]
        dns = DnsSettings(enabled=False, listen_on_gateways=False)
        if dns_port:
            from overlayd.dns.plugin import DnsPlugin

            dns = DnsSettings(
                listen=[f"127.0.0.1:{dns_port}"], listen_on_gateways=False, forward=False
            )
            plugins.append(DnsPlugin(dns))
        config = EngineConfig(
            data_dir=data_dir,
            drivers=[],
            dns=dns,
            engine=EngineSettings(health_interval_secs=0, reconcile_interval_secs=0),
        )
        engine = Engine(config, drivers=[driver], plugins=plugins)
        recorder = HookRecorder()
        recorder.attach(engine.pm)
        await engine.start()
        agent = ClusterAgent(settings(url, name, **kw), engine, local)
        await agent.start()
        node = Node(name, engine, agent, driver, data_dir, recorder)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        if node.engine._started:
            await node.stop()
        node.recorder.close()
