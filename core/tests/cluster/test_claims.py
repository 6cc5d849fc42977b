"""Slice claims by transaction: concurrent claims never overlap and none is lost."""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from overlayd.cluster.claim import claim_slice
from overlayd.cluster.claim import read_claims
from overlayd.cluster.errors import ClusterConflict
from overlayd.cluster.errors import ClusterError
from overlayd.cluster.records import Keys
from overlayd.cluster.store import EtcdStore

from .conftest import settings


def _claim_all(url: str, cidr: str, length: int, names: list[str]) -> list[Any]:
    keys = Keys("/t")
    net = ipaddress.ip_network(cidr)

    def one(name: str) -> Any:
        store = EtcdStore(settings(url, name))  # one client per simulated node
        try:
            return claim_slice(store, keys, net, length, name)
        except ClusterError as exc:
            return exc
        finally:
            store.close()

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        return list(pool.map(one, names))


def test_fifty_concurrent_claims_do_not_overlap(etcd_server: Any) -> None:
    names = [f"node-{i}" for i in range(50)]
    # 64 slices for 50 nodes: the start points collide, so transactions race.
    results = _claim_all(etcd_server.url, "10.241.0.0/22", 28, names)
    assert not [r for r in results if isinstance(r, Exception)]
    assert len(set(results)) == 50
    for a in results:
        for b in results:
            assert a is b or not a.overlaps(b)
    store = EtcdStore(settings(etcd_server.url, "check"))
    claims = read_claims(store, Keys("/t"))
    store.close()
    # none lost: every node's claim is in etcd, naming that node
    assert {claims[net] for net in results} == set(names)
    assert dict(zip(results, names, strict=True)) == claims


def test_more_nodes_than_slices_fails_clearly_for_the_rest(etcd_server: Any) -> None:
    names = [f"m-{i}" for i in range(20)]
    results = _claim_all(etcd_server.url, "10.242.0.0/24", 28, names)  # 16 slices
    won = [r for r in results if not isinstance(r, Exception)]
    lost = [r for r in results if isinstance(r, Exception)]
    assert len(won) == 16 and len(set(won)) == 16
    assert len(lost) == 4
    assert all("no free /28 slice" in str(e) for e in lost)


def test_a_node_finds_its_slice_again_and_cannot_take_anothers(etcd_server: Any) -> None:
    keys = Keys("/t")
    net = ipaddress.ip_network("10.243.0.0/16")
    store = EtcdStore(settings(etcd_server.url, "x"))
    try:
        first = claim_slice(store, keys, net, 24, "x")
        assert claim_slice(store, keys, net, 24, "x") == first
        assert claim_slice(store, keys, net, 24, "x", preferred=first) == first
        other = claim_slice(store, keys, net, 24, "y")
        with pytest.raises(ClusterConflict, match="held by node 'y'"):
            claim_slice(store, keys, net, 24, "x", preferred=other)
    finally:
        store.close()
