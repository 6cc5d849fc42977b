"""Loading stored records at start (``overlayd.engine.loading``)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from overlayd.engine.loading import dns_records_from_store
from overlayd.model import DnsRecord


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
    assert loaded == expected
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
