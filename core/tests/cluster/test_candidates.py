"""NAT candidates in node records: encoding, hostile data, and the exchange through etcd."""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

import pytest

from overlayd import keys as wgkeys
from overlayd.cluster.exchange import ClusterExchange
from overlayd.cluster.membership import Membership
from overlayd.cluster.records import MAX_CANDIDATES
from overlayd.cluster.records import Keys
from overlayd.cluster.records import NodeRecord
from overlayd.cluster.records import claim_value
from overlayd.cluster.records import parse_candidates
from overlayd.cluster.records import parse_node
from overlayd.cluster.store import EtcdStore
from overlayd.model import NatCandidate

from .conftest import settings
from .conftest import wait_for

K = Keys("/t")
CLUSTER = (ipaddress.ip_network("10.240.0.0/16"),)
LENGTHS = (24,)

HOST = NatCandidate(kind="host", endpoint="10.241.1.2:51820", priority=2130706431)
SRFLX = NatCandidate(kind="reflexive", endpoint="10.240.0.11:51820", priority=1694498815)
GUESSED = NatCandidate(
    kind="reflexive", endpoint="10.240.0.11:40001", priority=1526726655, guessed=True
)
RELAY = NatCandidate(kind="relay", endpoint="10.240.0.1:49170", priority=16777215)
V6 = NatCandidate(kind="host", endpoint="[fd00::2]:51820", priority=2113929471)


def _key() -> str:
    return wgkeys.public_key(wgkeys.generate_private_key())


def record(name: str = "n1", net: str = "10.240.3.0/24", **over: Any) -> bytes:
    data: dict[str, Any] = {
        "version": 1,
        "name": name,
        "public_key": _key(),
        "endpoint": "10.0.0.1:51820",
        "slices": [net],
        "node_ip": net.split("/")[0][:-1] + "1",
    }
    data.update(over)
    return json.dumps(data).encode()


def parse(raw: bytes, name: str = "n1", net: str = "10.240.3.0/24") -> NodeRecord:
    return parse_node(name, raw, CLUSTER, LENGTHS, {ipaddress.ip_network(net): name})


# -- encoding ------------------------------------------------------------------


def test_candidates_round_trip_through_the_record() -> None:
    rec = NodeRecord(
        name="n1",
        public_key=_key(),
        endpoint="10.0.0.1:51820",
        slices=(ipaddress.ip_network("10.240.3.0/24"),),
        node_ip=ipaddress.ip_address("10.240.3.1"),
        candidates=(HOST, V6, SRFLX, GUESSED, RELAY),
    )
    raw = rec.to_json()
    stored = json.loads(raw)["candidates"]
    assert stored[0] == {"kind": "host", "endpoint": "10.241.1.2:51820", "priority": 2130706431}
    assert stored[3]["guessed"] is True
    assert "guessed" not in stored[2]
    back = parse(raw)
    assert back == rec
    assert back.candidates == (HOST, V6, SRFLX, GUESSED, RELAY)
    assert back.dropped == ()


def test_record_without_candidates_is_valid() -> None:
    """An older node (or one with NAT traversal off) writes no candidates, or an empty list."""
    assert parse(record()).candidates == ()
    assert parse(record(candidates=[])).candidates == ()


HOSTILE: list[tuple[object, str]] = [
    ("nope", "not an object"),
    (["10.0.0.1:1"], "not an object"),
    ({"kind": "prflx", "endpoint": "10.0.0.1:1"}, "kind"),
    ({"kind": "host"}, "endpoint"),
    ({"kind": "host", "endpoint": "10.0.0.1"}, "address:port"),
    ({"kind": "host", "endpoint": "example.org:51820"}, "IP address"),
    ({"kind": "host", "endpoint": "10.0.0.1:0"}, "address:port"),
    ({"kind": "host", "endpoint": "10.0.0.1:70000"}, "address:port"),
    ({"kind": "host", "endpoint": "fd00::1:51820"}, "brackets"),
    ({"kind": "host", "endpoint": "0.0.0.0:51820"}, "unicast"),
    ({"kind": "host", "endpoint": "224.0.0.1:51820"}, "unicast"),
    ({"kind": "host", "endpoint": "[ff02::1]:51820"}, "unicast"),
    ({"kind": "host", "endpoint": "[::]:51820"}, "unicast"),
    ({"kind": "host", "endpoint": 51820}, "endpoint"),
    ({"kind": "host", "endpoint": "10.0.0.1:1", "priority": -1}, "priority"),
    ({"kind": "host", "endpoint": "10.0.0.1:1", "priority": 2**32}, "priority"),
    ({"kind": "host", "endpoint": "10.0.0.1:1", "priority": 1.5}, "priority"),
    ({"kind": "host", "endpoint": "10.0.0.1:1", "priority": True}, "priority"),
    ({"kind": "host", "endpoint": "10.0.0.1:1", "priority": "9"}, "priority"),
    ({"kind": "reflexive", "endpoint": "10.0.0.1:1", "guessed": "yes"}, "guessed"),
    ({"kind": "host", "endpoint": "10.0.0.1:" + "9" * 5000}, "address:port"),
    ({"kind": "host", "endpoint": "10.0.0.1:1\u00b2"}, "address:port"),
    ({"kind": "host", "endpoint": "x" * 100_000 + ":1"}, "IP address"),
]


@pytest.mark.parametrize(("item", "reason"), HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_a_bad_candidate_is_dropped_and_the_rest_kept(item: object, reason: str) -> None:
    good = {"kind": "host", "endpoint": "10.241.1.2:51820", "priority": 5}
    cands, dropped = parse_candidates([good, item, {**good, "endpoint": "10.241.9.2:1"}])
    assert [c.endpoint for c in cands] == ["10.241.1.2:51820", "10.241.9.2:1"]
    assert len(dropped) == 1
    assert reason in dropped[0], dropped
    assert len(dropped[0]) < 300  # hostile sizes are not repeated into the log


@pytest.mark.parametrize(
    "value", [{"kind": "host"}, "10.0.0.1:1", 7, None, [{"kind": "host"}] * (MAX_CANDIDATES + 1)]
)
def test_candidates_that_are_not_a_short_list_are_all_dropped(value: object) -> None:
    cands, dropped = parse_candidates(value)
    assert cands == ()
    assert len(dropped) == 1


def test_unknown_fields_of_a_candidate_are_ignored() -> None:
    """A newer node may add fields: older nodes skip them."""
    cands, dropped = parse_candidates(
        [{"kind": "relay", "endpoint": "10.240.0.1:49170", "priority": 1, "via": "turn"}]
    )
    assert cands == (NatCandidate(kind="relay", endpoint="10.240.0.1:49170", priority=1),)
    assert dropped == []


def test_membership_applies_a_record_with_bad_candidates_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="overlayd.cluster")
    m = Membership(keys=K, self_name="me", cluster=CLUSTER, slice_lengths=LENGTHS)
    net = ipaddress.ip_network("10.240.3.0/24")
    m.put(K.slice(net), claim_value("n1"), 0)
    bad = record(candidates=[{"kind": "host", "endpoint": "224.0.0.9:1"}, HOST.model_dump()])
    touched = m.put(K.node("n1"), bad, 7)
    (key,) = touched
    assert m.nodes["n1"].candidates == (HOST,)
    assert m.desired(key) is not None  # the node is a peer, as without candidates
    m.load([(K.slice(net), claim_value("n1"), 0), (K.node("n1"), bad, 7)])
    warned = [r for r in caplog.records if K.node("n1") in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert "unicast" in warned[0].getMessage()
    assert m.bad_records == 1


# -- the exchange ----------------------------------------------------------------


def test_cluster_exchange_publishes_only_changes() -> None:
    calls: list[int] = []
    ex = ClusterExchange(lambda: calls.append(1))
    ex.publish("k", (HOST,))
    ex.publish("k", (HOST,))
    assert calls == [1]
    ex.publish("k", (HOST, SRFLX))
    assert calls == [1, 1]
    assert ex.local() == (HOST, SRFLX)


def test_cluster_exchange_sync_touches_only_the_changed_peer() -> None:
    m = Membership(keys=K, self_name="me", cluster=CLUSTER, slice_lengths=LENGTHS)
    keys = {}
    for i, name in enumerate(("n1", "n2", "me"), start=3):
        net = ipaddress.ip_network(f"10.240.{i}.0/24")
        m.put(K.slice(net), claim_value(name), 0)
        (keys[name],) = m.put(
            K.node(name), record(name, str(net), candidates=[HOST.model_dump()]), 1
        )
    ex = ClusterExchange(lambda: None)
    seen: list[str] = []
    ex.on_change(seen.append)
    programmed = {keys["n1"], keys["n2"]}
    assert ex.sync(set(keys.values()), m, programmed) == 2
    assert sorted(seen) == sorted([keys["n1"], keys["n2"]])  # never this node itself
    assert ex.peer_candidates(keys["me"]) is None
    seen.clear()
    # n2 republishes: one change touches one peer.
    touched = m.put(
        K.node("n2"),
        json.dumps(
            {**json.loads(m.raw["n2"]), "candidates": [HOST.model_dump(), RELAY.model_dump()]}
        ).encode(),
        1,
    )
    assert touched == {keys["n2"]}
    assert ex.sync(touched, m, programmed) == 1
    assert seen == [keys["n2"]]
    assert ex.peer_candidates(keys["n2"]) == (HOST, RELAY)
    # Not programmed on the device (yet): no candidates for the NAT agent.
    seen.clear()
    assert ex.sync({keys["n1"]}, m, {keys["n2"]}) == 1
    assert ex.peer_candidates(keys["n1"]) is None
    # The node leaves: forgotten.
    touched = m.delete(K.node("n2"))
    assert ex.sync(touched, m, programmed) == 1
    assert ex.peer_candidates(keys["n2"]) is None


# -- through a real etcd -----------------------------------------------------------


async def test_candidates_travel_between_nodes_through_etcd(
    etcd_server: Any, make_node: Any
) -> None:
    a = await make_node(etcd_server.url, "a")
    b = await make_node(etcd_server.url, "b")
    for n in (a, b):
        await wait_for(n.agent.joined.is_set, 10, f"{n.name} to join")
    key_a = a.engine.global_.device.public_key
    key_b = b.engine.global_.device.public_key
    await wait_for(lambda: key_b in a.peers() and key_a in b.peers(), 10, "the mesh")
    seen: list[str] = []
    a.agent.exchange.on_change(seen.append)
    calls = a.peer_calls

    # b's NAT agent gathered candidates: they reach a, no IPC involved.
    b.agent.exchange.publish(key_b, (HOST, SRFLX, RELAY))
    await wait_for(
        lambda: a.agent.exchange.peer_candidates(key_b) is not None, 10, "b's candidates on a"
    )
    assert a.agent.exchange.peer_candidates(key_b) == (HOST, SRFLX, RELAY)
    stored = EtcdStore(settings(etcd_server.url, "reader"))
    try:
        kv = stored.get(K.node("b"))
        assert kv is not None
        assert [c["endpoint"] for c in json.loads(kv.value)["candidates"]] == [
            HOST.endpoint,
            SRFLX.endpoint,
            RELAY.endpoint,
        ]
    finally:
        stored.close()

    # b's mapping changes: it republishes and a follows.
    b.agent.exchange.publish(key_b, (HOST, GUESSED))
    await wait_for(
        lambda: a.agent.exchange.peer_candidates(key_b) == (HOST, GUESSED), 10, "the update"
    )
    assert seen == [key_b, key_b]
    # Only candidates changed: no peer hook call on a, and a's own record is untouched.
    assert a.peer_calls == calls
    assert b.agent.stats.candidate_updates == 2
    assert a.agent.stats.candidate_updates == 0


async def test_hostile_candidates_in_etcd_never_stop_the_watch(
    etcd_server: Any, make_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="overlayd.cluster")
    a = await make_node(etcd_server.url, "a")
    await wait_for(a.agent.joined.is_set, 10, "a to join")
    store = EtcdStore(settings(etcd_server.url, "writer"))
    try:
        values: list[object] = [
            "x" * 100_000,
            [{"kind": "host", "endpoint": "10.0.0.1:1", "priority": 10**40}],
            [[[[[]]]]] * 16,
            [{"kind": {"nested": True}, "endpoint": ["a"]}],
            [{"kind": "relay", "endpoint": "[ff02::1]:1"}],
            [{"kind": "host", "endpoint": "10.241.7.2:51820"}] * 17,
        ]
        keys: dict[str, str] = {}
        for i, value in enumerate(values):
            name = f"h{i}"
            net = f"10.240.{100 + i}.0/24"
            store.put(K.slice(ipaddress.ip_network(net)), claim_value(name))
            raw = record(name, net, candidates=value)
            store.put(K.node(name), raw)
            keys[name] = json.loads(raw)["public_key"]
        await wait_for(lambda: len(a.peers()) == len(values), 10, "every hostile node as a peer")
        # The watch still works: a well-formed node's candidates arrive.
        store.put(K.slice(ipaddress.ip_network("10.240.99.0/24")), claim_value("good"))
        good = record("good", "10.240.99.0/24", candidates=[RELAY.model_dump()])
        store.put(K.node("good"), good)
        good_key = json.loads(good)["public_key"]
        await wait_for(
            lambda: a.agent.exchange.peer_candidates(good_key) == (RELAY,), 10, "good candidates"
        )
    finally:
        store.close()
    for name, key in keys.items():
        cands = a.agent.exchange.peer_candidates(key)
        assert cands is None or all(c.endpoint == "10.241.7.2:51820" for c in cands), name
        warned = [r for r in caplog.records if r.getMessage().find(K.node(name) + ":") >= 0]
        assert len(warned) == 1, (name, [r.getMessage() for r in warned])
    assert a.agent.connected
    assert a.agent.last_error is None


async def test_nat_agent_publishes_into_the_record_also_after_a_restart(
    etcd_server: Any, make_node: Any, tmp_path: Any
) -> None:
    """``nat = true``: the agent's candidates land in the record, also when the
    agent already ran (overlay restored at start-up) before cluster mode began."""
    store = EtcdStore(settings(etcd_server.url, "reader"))

    def stored(name: str) -> list[str]:
        kv = store.get(K.node(name))
        return [] if kv is None else [c["endpoint"] for c in json.loads(kv.value)["candidates"]]

    try:
        a = await make_node(etcd_server.url, "a", data_dir=tmp_path / "a", nat=True)
        await wait_for(lambda: a.engine.nat is not None, 10, "a's NAT agent")
        assert a.engine.nat.exchange is a.agent.exchange
        await wait_for(lambda: bool(a.engine.nat.local), 10, "a's candidates")
        want = [c.endpoint for c in a.engine.nat.local]
        await wait_for(lambda: stored("a") == want, 10, "a's candidates in etcd")
        await a.stop()

        store.delete(K.node("a"))  # as if its lease had expired meanwhile
        again = await make_node(etcd_server.url, "a", data_dir=tmp_path / "a", nat=True)
        assert again.engine.nat is not None  # restored before the cluster agent started
        assert again.engine.nat.exchange is again.agent.exchange
        await wait_for(lambda: stored("a") == want, 10, "a's candidates in etcd again")
    finally:
        store.close()
