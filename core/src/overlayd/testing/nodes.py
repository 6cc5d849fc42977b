"""The global overlay of a test node: one set of ``setup_global_overlay`` arguments.

The engine, :class:`overlayd.client.AsyncClient` and :class:`overlayd.client.Client`
take the same keyword arguments, so one dictionary serves all three::

    await engine.setup_global_overlay(**lone_node(nat_enabled=True))
    client.setup_global_overlay(**lone_node("e2e", slice_cidr="10.200.1.0/24"))
"""

from __future__ import annotations

from typing import Any

__all__ = ["lone_node"]


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
