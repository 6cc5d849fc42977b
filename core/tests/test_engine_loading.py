"""Loading stored records at start (``overlayd.engine.loading``)."""

from __future__ import annotations

import gc
import ipaddress

import pytest
from pydantic import ValidationError

from overlayd.config import EngineConfig
from overlayd.config import EngineSettings
from overlayd.engine import Engine
from overlayd.engine.dnsview import AddressPool
from overlayd.engine.dnsview import DnsEntry
from overlayd.engine.dnsview import ManualNames
from overlayd.engine.dnsview import entries_from_store
from overlayd.engine.loading import dns_records_from_store
from overlayd.model import DnsRecord
from overlayd.model import PeerConfig
from overlayd.model import shared_address
from overlayd_fake.driver import FakeDriver


def test_stored_dns_records_load_as_before_and_share_addresses_and_sources() -> None:
    stored = [
        {"name": "web", "ip": "10.1.0.2", "source": "handle:linux_pid:1"},
        {"name": "c-1.Web", "ip": "10.1.0.2", "source": "handle:linux_pid:1"},
        {"name": "db", "ip": "fd00::1", "source": "manual"},
        {"name": "n0.svc", "ip": "10.1.0.2", "source": "manual"},
        {"name": "n1.svc", "ip": "10.1.0.3"},
    ]
    # What the loader built before: one DnsRecord per document, keyed by
    # (lower-case name, address text).
    expected = {
        (rec.name.lower(), str(rec.ip)): rec
        for rec in (DnsRecord.model_validate(dict(doc)) for doc in stored)
    }
    loaded = dns_records_from_store([dict(doc) for doc in stored])
    # The engine keeps light entries: the same fields, the same model at the hooks.
    assert {k: e.record() for k, e in loaded.items()} == expected
    assert loaded == {k: DnsEntry.of(rec) for k, rec in expected.items()}
    assert all(type(e) is DnsEntry for e in loaded.values())
    assert list(loaded) == list(expected)
    web = loaded[("web", "10.1.0.2")]
    n0 = loaded[("n0.svc", "10.1.0.2")]
    assert web.ip is n0.ip is loaded[("c-1.web", "10.1.0.2")].ip
    assert n0.source is loaded[("db", "fd00::1")].source


@pytest.mark.parametrize(
    "doc",
    [
        {"name": "web", "ip": "10.1.0.300", "source": "manual"},
        {"name": "", "ip": "10.1.0.2", "source": "manual"},
        "not a record",
    ],
)
def test_a_bad_stored_dns_record_is_reported_by_validation(doc: object) -> None:
    with pytest.raises(ValidationError):
        dns_records_from_store([doc])


def test_dns_entry_converts_to_and_from_the_model_and_dumps_like_it() -> None:
    for rec in (
        DnsRecord(name="web", ip="10.1.0.2"),  # type: ignore[arg-type]
        DnsRecord(name="c-1.Web", ip="fd00::1", source="handle:linux_pid:1"),  # type: ignore[arg-type]
    ):
        entry = DnsEntry.of(rec)
        assert entry.record() == rec
        assert entry.doc() == rec.model_dump(mode="json")
        assert DnsEntry.of(entry.record()) == entry
        assert hash(entry) == hash(DnsEntry.of(rec))
    with pytest.raises(AttributeError):
        entry.name = "other"  # type: ignore[misc]


def test_stored_dns_records_of_unusual_shape_go_through_the_model() -> None:
    # Not the shape the store writes (an int name would be refused by the
    # model; a missing source defaults): the loader defers to DnsRecord.
    loaded = entries_from_store([{"name": "a", "ip": "10.1.0.9"}])
    assert loaded == {("a", "10.1.0.9"): DnsEntry("a", ipaddress.ip_address("10.1.0.9"))}
    with pytest.raises(ValidationError):
        entries_from_store([{"name": "a", "ip": "10.1.0.9", "extra": 1}])
    with pytest.raises(ValidationError):
        entries_from_store([{"name": 5, "ip": "10.1.0.9"}])
    with pytest.raises(ValidationError):
        entries_from_store([{"name": "a" * 254, "ip": "10.1.0.9"}])


def test_address_pool_shares_one_object_per_address_and_interns_the_text() -> None:
    pool = AddressPool()
    a = ipaddress.ip_address("10.1.0.2")
    b = ipaddress.ip_address("10.1.0.2")
    assert a is not b
    assert pool.share(a) is a
    assert pool.share(b) is a
    assert pool.text(a) is pool.text(b)
    loaded = entries_from_store([{"name": "x", "ip": "10.1.0.2", "source": "manual"}], pool)
    assert loaded[("x", "10.1.0.2")].ip is a


def test_manual_names_index() -> None:
    index = ManualNames()
    assert index.get("web") == ()
    index.add("web", "10.1.0.2")
    index.add("web", "10.1.0.2")
    assert index.get("web") == ("10.1.0.2",)
    index.add("web", "10.1.0.3")
    index.add("web", "10.1.0.4")
    assert index.get("web") == ("10.1.0.2", "10.1.0.3", "10.1.0.4")
    index.discard("web", "10.1.0.3")
    index.discard("web", "10.1.0.9")
    index.discard("db", "10.1.0.2")
    assert index.get("web") == ("10.1.0.2", "10.1.0.4")
    index.discard("web", "10.1.0.2")
    assert index.get("web") == ("10.1.0.4",)
    index.discard("web", "10.1.0.4")
    assert index.get("web") == () and len(index) == 0


@pytest.mark.parametrize(
    ("ip", "route", "family"),
    [("10.1.0.2", "0.0.0.0/0", 4), ("fd00::2", "::/0", 6), (167837698, "10.0.0.0/8", 4)],
)
def test_addresses_and_networks_validate_to_their_family(
    ip: object, route: str, family: int
) -> None:
    """Addresses parse once per text and validate left to right: the same results as before."""
    peer = PeerConfig.model_validate(
        {"public_key": "A" * 43 + "=", "allowed_ips": [route], "endpoint": None}
    )
    assert peer.allowed_ips[0].version == family
    rec = DnsRecord.model_validate({"name": "web", "ip": ip})
    assert rec.ip.version == family
    again = PeerConfig.model_validate({"public_key": "B" * 43 + "=", "allowed_ips": [route]})
    assert again.allowed_ips[0] is peer.allowed_ips[0]  # one shared (immutable) object per text
    assert PeerConfig.model_validate(peer.model_dump()) == peer
    text = str(rec.ip)
    assert shared_address(text) is DnsRecord.model_validate({"name": "db", "ip": text}).ip
    with pytest.raises(ValueError, match="not-an-ip"):
        shared_address("not-an-ip")
    for bad in ("10.0.0.1/8", "fd00::1/64", "nope"):  # host bits set, or not a network
        with pytest.raises(ValidationError):
            PeerConfig.model_validate({"public_key": "A" * 43 + "=", "allowed_ips": [bad]})
    with pytest.raises(
        ValidationError, match=r"(?s)not a valid IPv4 address.*not a valid IPv6 address"
    ):
        DnsRecord.model_validate({"name": "web", "ip": "10.0.0.256"})


async def test_start_freezes_what_it_loaded_with_the_gc_on_and_stop_unfreezes_it() -> None:
    cfg = EngineConfig(drivers=[], engine=EngineSettings(health_interval_secs=0))
    assert gc.isenabled()
    async with Engine(cfg, drivers=[FakeDriver()]):
        assert gc.isenabled()  # paused while loading only
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_manual_names_index_of_a_load_matches_one_add_at_a_time() -> None:
    unique = [("web", "10.1.0.2"), ("db", "fd00::1")]
    repeated = [("web", "10.1.0.2"), ("db", "fd00::1"), ("web", "10.1.0.3")]
    for keys in (unique, repeated, []):
        added = ManualNames()
        for lname, text in keys:
            added.add(lname, text)
        built = ManualNames.of(keys)
        assert {n: built.get(n) for n in built} == {n: added.get(n) for n in added}
        assert len(built) == len(added)
    assert ManualNames.of(repeated).get("web") == ("10.1.0.2", "10.1.0.3")


def test_a_load_of_the_stored_shape_is_built_in_bulk_as_record_by_record() -> None:
    stored = [
        {
            "name": f"n{i}.Svc" if i % 7 == 0 else f"n{i}.svc",
            "ip": f"10.1.{i % 3}.{i % 5 + 1}",
            "source": "manual" if i % 2 else f"handle:linux_pid:{i}",
        }
        for i in range(60)
    ] + [
        {"name": "n3.svc", "ip": "10.1.0.4", "source": "manual"},
        {"name": "v6", "ip": "fd00::1", "source": "manual"},
    ]
    bulk_pool, each_pool = AddressPool(), AddressPool()
    bulk = entries_from_store([dict(d) for d in stored], bulk_pool)
    # One document of another shape sends the whole load record by record.
    each = entries_from_store(
        [dict(d) for d in stored] + [{"name": "z", "ip": "10.9.0.1"}], each_pool
    )
    assert each.pop(("z", "10.9.0.1")) == DnsEntry("z", ipaddress.ip_address("10.9.0.1"))
    assert list(bulk.items()) == list(each.items())
    assert all(type(e) is DnsEntry for e in bulk.values())
    by_text = {}
    for (lname, text), entry in bulk.items():
        assert lname == entry.name.lower() and text == str(entry.ip)
        assert by_text.setdefault(text, entry.ip) is entry.ip  # one object per address
    lower = next(k for k in bulk if k[0] == "n1.svc")[0]
    assert lower is bulk[(lower, "10.1.1.2")].name  # a lower-case name is not copied
    assert bulk[("n1.svc", "10.1.1.2")].source is bulk[("n3.svc", "10.1.0.4")].source
    # What no bulk check passes goes record by record, and is reported there.
    for bad in (
        {"name": "a", "ip": "10.1.0.300", "source": "manual"},
        {"name": "", "ip": "10.1.0.1", "source": "manual"},
        {"name": "a", "ip": None, "source": "manual"},
        {"name": "a", "source": "manual", "x": "10.1.0.1"},
    ):
        with pytest.raises(ValidationError):
            entries_from_store([dict(stored[0]), bad])
