"""A test node: its ``setup_global_overlay`` arguments, an engine set up with
them, and the identity attach hooks get.

The engine, :class:`overlayd.client.AsyncClient` and :class:`overlayd.client.Client`
take the same keyword arguments, so one dictionary serves all three::

    await engine.setup_global_overlay(**lone_node(nat_enabled=True))
    client.setup_global_overlay(**lone_node("e2e", slice_cidr="10.200.1.0/24"))

    async with lone_engine(config, [FakeDriver()], "web") as engine:
        await engine.attach({"platform": "linux_pid", "pid": 7}, "web")
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

from overlayd.model import NodeInfo

if TYPE_CHECKING:
    from overlayd.config import EngineConfig
    from overlayd.engine import Engine

__all__ = ["lone_engine", "lone_node", "node_info"]


def lone_node(
    deployment: str = "prod",
    *,
    instance_id: str = "n1",
    cluster_cidr: str = "10.200.0.0/16",
    slice_cidr: str | None = "10.200.0.0/20",
    wg_port: int = 51820,
    nat_enabled: bool = False,
) -> dict[str, Any]:
    """The ``setup_global_overlay`` arguments of a node with no peers: instance
    ``n1`` on cluster ``10.200.0.0/16`` with slice ``10.200.0.0/20``, WireGuard
    port 51820, no NAT, unless told otherwise (``slice_cidr=None``: no slice)."""
    return {
        "deployment": deployment,
        "instance_id": instance_id,
        "cluster_cidr": cluster_cidr,
        "slice_cidr": slice_cidr,
        "wg_port": wg_port,
        "nat_enabled": nat_enabled,
    }


@contextlib.asynccontextmanager
async def lone_engine(
    config: EngineConfig,
    drivers: Sequence[object],
    *services: str,
    plugins: Sequence[object] = (),
    **node: Any,
) -> AsyncIterator[Engine]:
    """A started engine with the global overlay of :func:`lone_node` (``node``: its
    arguments) and the shared ``services``, stopped at the end."""
    from overlayd.engine import Engine

    async with Engine(config, drivers=drivers, plugins=plugins) as engine:
        await engine.setup_global_overlay(**lone_node(**node))
        for service in services:
            await engine.setup_service_overlay(service, "shared")
        yield engine


def node_info(
    cluster_cidr: str,
    slice_cidr: str,
    *,
    public_key: str | None = None,
    listen_port: int = 51820,
    interface: str = "zl-t-g",
) -> NodeInfo:
    """The :class:`~overlayd.model.NodeInfo` of an attach request: this node is
    the first address of ``slice_cidr`` inside ``cluster_cidr``."""
    node_slice = ipaddress.ip_network(slice_cidr)
    return NodeInfo(
        interface=interface,
        public_key=public_key,
        node_ip=node_slice.network_address + 1,
        cluster_cidr=ipaddress.ip_network(cluster_cidr),
        slice_cidr=node_slice,
        listen_port=listen_port,
    )
