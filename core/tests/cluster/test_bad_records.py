"""Bad records in the store: each is ignored with one warning naming its key, never applied."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from overlayd import keys as wgkeys
from overlayd.cluster.records import Keys
from overlayd.cluster.records import claim_value
from overlayd.cluster.store import EtcdStore

from .conftest import settings
from .conftest import wait_for

K = Keys("/t")


def _key() -> str:
    return wgkeys.public_key(wgkeys.generate_private_key())


def node(name: str, slice_: str, /, **over: Any) -> bytes:
    data = {
        "version": 1,
        "name": name,
        "public_key": _key(),
        "endpoint": "127.0.0.2:51820",
        "slices": [slice_],
        "node_ip": slice_.split("/")[0][:-1] + "1",
        "candidates": [],
    }
    data.update(over)
    return json.dumps(data).encode()


def claim(store: EtcdStore, slice_: str, holder: str) -> None:
    import ipaddress

    store.put(K.slice(ipaddress.ip_network(slice_)), claim_value(holder))


def put_node(
    store: EtcdStore, name: str, slice_: str, /, *, claimed: bool = True, **over: Any
) -> str:
    """Write the record of node ``name`` with ``slice_`` (claimed for it first
    unless ``claimed`` is false; ``over``: other fields, even its name) and
    return its key."""
    if claimed:
        claim(store, slice_, name)
    store.put(K.node(name), node(name, slice_, **over))
    return K.node(name)


# Each case writes its records and returns the key that must be warned about.
Case = Callable[[EtcdStore], str]


def malformed(store: EtcdStore) -> str:
    store.put(K.node("bad"), b"{not json")
    return K.node("bad")


def slice_of_another_node(store: EtcdStore) -> str:
    put_node(store, "owner", "10.240.200.0/24")
    return put_node(store, "thief", "10.240.200.0/24", claimed=False)


def invalid_public_key(store: EtcdStore) -> str:
    return put_node(store, "badkey", "10.240.201.0/24", public_key="not-a-key")


def allowed_ip_outside_cluster(store: EtcdStore) -> str:
    return put_node(store, "outside", "10.99.0.0/24")


def unclaimed_slice(store: EtcdStore) -> str:
    return put_node(store, "squatter", "10.240.202.0/24", claimed=False)


def name_differs_from_key(store: EtcdStore) -> str:
    return put_node(store, "alias", "10.240.203.0/24", name="someone")


def bad_endpoint(store: EtcdStore) -> str:
    return put_node(store, "noport", "10.240.204.0/24", endpoint="10.0.0.1")


def huge_port(store: EtcdStore) -> str:
    # int() refuses more than 4300 digits with a ValueError that is no BadRecord.
    return put_node(store, "hugeport", "10.240.209.0/24", endpoint="10.0.0.1:" + "9" * 5000)


def duplicate_public_key(store: EtcdStore) -> str:
    key = _key()
    put_node(store, "first", "10.240.205.0/24", public_key=key)
    return put_node(store, "copycat", "10.240.206.0/24", public_key=key)


def bad_candidates(store: EtcdStore) -> str:
    # Candidates are advisory: the node is applied without them (test_candidates.py).
    return put_node(store, "cand", "10.240.207.0/24", candidates=["nope"])


def bad_claim(store: EtcdStore) -> str:
    store.put(K.slices + "10.240.208.0_24", b'{"version":1,"node":"Not A Name"}')
    return K.slices + "10.240.208.0_24"


def bad_dns_record(store: EtcdStore) -> str:
    key = K.dns + "other/web/10.240.9.9"
    store.put(key, b'{"version":1,"name":"web","ip":"10.240.9.10"}')
    return key


CASES = [
    malformed,
    slice_of_another_node,
    invalid_public_key,
    allowed_ip_outside_cluster,
    unclaimed_slice,
    name_differs_from_key,
    bad_endpoint,
    huge_port,
    duplicate_public_key,
    bad_candidates,
    bad_claim,
    bad_dns_record,
]
#: Cases whose records include one valid node besides the bad one.
VALID_EXTRA = {slice_of_another_node: 1, duplicate_public_key: 1}
#: Cases whose bad record is still applied, without its bad parts.
APPLIED = {bad_candidates: 1}


@pytest.mark.parametrize("when", ["before-join", "while-watching"])
@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
async def test_bad_record_is_ignored_with_one_warning(
    etcd_server: Any, make_node: Any, caplog: pytest.LogCaptureFixture, case: Case, when: str
) -> None:
    caplog.set_level(logging.WARNING, logger="overlayd.cluster")
    store = EtcdStore(settings(etcd_server.url, "writer"))
    try:
        if when == "before-join":
            bad_key = case(store)
            a = await make_node(etcd_server.url, "a")
            await wait_for(a.agent.joined.is_set, 10, "a to join")
        else:
            a = await make_node(etcd_server.url, "a")
            await wait_for(a.agent.joined.is_set, 10, "a to join")
            bad_key = case(store)
        expected = VALID_EXTRA.get(case, 0) + APPLIED.get(case, 0)
        await wait_for(lambda: len(a.peers()) == expected, 10, "the valid records")
        calls = a.peer_calls
        # The same bad value again, and a valid node after it: the valid one is
        # applied (so the pipeline is live), the bad one still is not.
        if when == "while-watching":
            store.put(bad_key, store.get(bad_key).value)  # type: ignore[union-attr]
        claim(store, "10.240.250.0/24", "good")
        store.put(K.node("good"), node("good", "10.240.250.0/24"))
        await wait_for(lambda: len(a.peers()) == expected + 1, 10, "the good node")
        await asyncio.sleep(0.3)
        assert a.peer_calls == calls + 1  # only the good node's change
        warnings = [
            r for r in caplog.records if r.levelno == logging.WARNING and bad_key in r.getMessage()
        ]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert a.agent.membership.bad_records >= 1
        for peer in a.peers().values():
            assert all(str(ip).startswith("10.240.") for ip in peer.allowed_ips)
        if case is bad_dns_record:
            assert not a.agent.remote.entries
    finally:
        store.close()
