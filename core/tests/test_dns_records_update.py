"""``RecordStore.update`` against a record-by-record reference (``overlayd.dns._records``)."""

from __future__ import annotations

import ipaddress
import random

from overlayd.dns._records import RecordStore
from overlayd.dns._records import _Entry
from overlayd.dns._records import reverse_wire
from overlayd.errors import InvalidRequest


def _reference(
    store: RecordStore, removed: list[tuple[str, str]], added: list[tuple[str, str]]
) -> None:
    for name, ip in removed:
        store.remove_record(name, ip)
    for name, ip in added:
        store.add_record(name, ip)


def _state(store: RecordStore) -> tuple[object, ...]:
    t = store.tables
    names = {k: (e.a, e.a_rr, e.aaaa, e.aaaa_rr) for k, e in t.names.items()}
    return (
        names,
        dict(t.ents),
        {k: set(v) for k, v in t.ptr.items()},
    )  # owners' order: as before, not compared


def test_update_matches_removing_then_adding_one_record_at_a_time() -> None:
    rng = random.Random(20)
    names = ["web", "db", "a.b.svc", "c.b.svc", "x"]
    ips = [f"10.1.0.{i}" for i in range(1, 8)] + ["fd00::1", "fd00::2"]
    fast, slow = RecordStore("prod.local.", 30), RecordStore("prod.local.", 30)
    for _ in range(300):
        removed = [(rng.choice(names), rng.choice(ips)) for _ in range(rng.randint(0, 4))]
        added = [(rng.choice(names), rng.choice(ips)) for _ in range(rng.randint(0, 4))]
        serial = fast.serial
        fast.update(removed, added)
        _reference(slow, removed, added)
        assert _state(fast) == _state(slow)
        assert fast.serial >= serial
    assert len(fast) > 0


def test_update_keeps_prepared_answers_and_turns_of_a_large_name() -> None:
    store = RecordStore("prod.local.", 30)
    store.update([], [("web", f"10.1.{i // 250}.{i % 250 + 1}") for i in range(2000)])
    key = store.key("web")
    before = store.tables.names[key]
    before.turn_a = 7
    store.update([("web", "10.1.0.1")], [("web", "10.1.9.9")])
    after = store.tables.names[key]
    assert len(after.a) == 2000
    assert after.a[-1] == ipaddress.ip_address("10.1.9.9")
    assert after.a_rr[:10] == before.a_rr[1:11]  # the same bytes objects, not rebuilt
    assert after.a_rr[0] is before.a_rr[1]
    assert after.turn_a == 7
    fresh = _Entry(after.a, after.aaaa, 30)
    assert fresh.a_rr == after.a_rr
    assert reverse_wire(ipaddress.ip_address("10.1.0.1")) not in store.tables.ptr
    serial = store.serial
    store.update([("web", "10.9.9.9")], [("web", "10.1.9.9")])  # no change
    assert store.serial == serial
    store.update([("web", a) for a in list(after.a)], [])
    assert len(store) == 0 and not store.tables.ptr and not store.tables.ents


def test_update_takes_addresses_as_text_from_a_generator() -> None:
    store = RecordStore("prod.local.", 30)
    store.update([], ((f"n{i}", str(ipaddress.ip_address("10.1.0.1") + i)) for i in range(500)))
    assert all(store.get(f"n{i}") == [ipaddress.ip_address("10.1.0.1") + i] for i in range(500))
    store.update(
        ((f"n{i}", str(ipaddress.ip_address("10.1.0.1") + i)) for i in range(0, 500, 2)), []
    )
    assert len(store) == 250


def test_replace_all_and_a_load_build_what_adding_each_record_builds() -> None:
    rng = random.Random(21)
    names = ["web", "Web", "db", "a.b.svc", "c.b.svc", "x", "db.prod.local.", " y "]
    ips = [f"10.1.0.{i}" for i in range(1, 8)] + ["fd00::1", "fd00::2"]
    shared = {ip: ipaddress.ip_address(ip) for ip in ips[::2]}  # objects and texts mixed
    mapping: dict[str, list[object]] = {}
    for _ in range(60):
        ip = rng.choice(ips)
        mapping.setdefault(rng.choice(names), []).append(shared.get(ip, ip))
    pairs = [(n, ip) for n, group in mapping.items() for ip in group]
    bulk, slow = RecordStore("prod.local.", 30), RecordStore("prod.local.", 30)
    bulk.add_record("gone", "10.9.9.9")  # replaced, not kept
    bulk.replace_all(mapping)  # type: ignore[arg-type]
    _reference(slow, [], [(n, str(ip)) for n, ip in pairs])
    assert _state(bulk) == _state(slow)
    for key, entry in slow.tables.names.items():  # the same order of addresses too
        assert bulk.tables.names[key].addresses() == entry.addresses()
    rng.shuffle(pairs)
    loaded, slow = RecordStore("prod.local.", 30), RecordStore("prod.local.", 30)
    loaded.update([], pairs)  # type: ignore[arg-type]  # an empty table: built in one pass
    _reference(slow, [], [(n, str(ip)) for n, ip in pairs])
    assert _state(loaded) == _state(slow)
    for key, entry in slow.tables.names.items():
        assert loaded.tables.names[key].addresses() == entry.addresses()
    loaded.update([], [("web", "10.1.0.1"), ("new", "10.1.0.9")])  # not empty: changes
    slow.update([], [("web", "10.1.0.1"), ("new", "10.1.0.9")])
    assert _state(loaded) == _state(slow)


def test_replace_all_shares_the_answers_of_an_address_between_names() -> None:
    store = RecordStore("prod.local.", 30)
    ip = ipaddress.ip_address("10.1.0.5")
    store.replace_all({"a": [ip], "b": [ip], "web": [ip, "10.1.0.6"]})
    a, b, web = (store.tables.names[store.key(n)] for n in ("a", "b", "web"))
    assert a is b  # one entry for the names of one address alone (never changed in place)
    assert web.a_rr[0] is a.a_rr[0]
    assert set(store.tables.ptr[reverse_wire(ip)]) == {store.key(n) for n in ("a", "b", "web")}
    store.update([("a", ip)], [("b", "10.1.0.7")])  # later changes build on the shared tuples
    assert store.get("a") == [] and store.get("b") == [ip, ipaddress.ip_address("10.1.0.7")]
    assert store.get("web") == [ip, ipaddress.ip_address("10.1.0.6")]


def test_a_load_keys_every_name_as_key_does() -> None:
    """The bulk key of a load (a parent's key made once) is ``key``'s, errors included."""
    store = RecordStore("prod.local.", 30)
    names = [
        *(f"n{i}.svc" for i in range(5)),
        "Pid-7.Web",
        "a.b.svc",
        "x",
        "a_b-c.d_e",
        "a.b.prod.local.",
        "a\\.b.svc",
        "a..b",
        "\u00e9.svc",
        "a." + "b" * 63,
        ".".join(["abc"] * 60),
    ]
    parents: dict[str, bytes] = {}
    for name in names:
        try:
            expected: object = store.key(name)
        except InvalidRequest as exc:
            expected = str(exc)
        try:
            got: object = store._bulk_key(name, parents)
        except InvalidRequest as exc:
            got = str(exc)
        assert got == expected, name
