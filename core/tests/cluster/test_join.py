"""Nodes join through a real etcd and form the peer set (fake driver, in process)."""

from __future__ import annotations

import ipaddress
from typing import Any

from .conftest import CLUSTER
from .conftest import mesh


async def test_three_nodes_form_a_full_mesh(etcd_server: Any, make_node: Any) -> None:
    nodes = await mesh(make_node, etcd_server.url, "n0", "n1", "n2")
    slices = [n.agent.record.slices[0] for n in nodes]
    assert len(set(slices)) == 3
    for s in slices:
        assert s.subnet_of(ipaddress.ip_network(CLUSTER)) and s.prefixlen == 24
    for node in nodes:
        peers = node.peers()
        for other in nodes:
            if other is node:
                continue
            peer = peers[other.agent.record.public_key]
            assert peer.allowed_ips == other.agent.record.slices
            assert peer.endpoint == "127.0.0.1:51820"
        assert node.engine.global_.slice_cidr == node.agent.record.slices[0]
