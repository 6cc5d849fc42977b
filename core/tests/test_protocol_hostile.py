"""Frames a hostile or broken client sends: every one decodes to a clear ProtocolError."""

from __future__ import annotations

import json

import pytest

from overlayd import protocol as p

KEY = "mVNGA3KRlsSVAukmk0+nBYbMx8QEySJH8MLMGAGyk0w="


def _request(body: dict[str, object]) -> bytes:
    return json.dumps({"frame": "request", "id": 7, "request": body}).encode()


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json_is_a_protocol_error(depth: int) -> None:
    body = b'{"frame":"request","id":1,"request":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(p.ProtocolError, match="nests arrays or objects too deeply"):
        p.decode_frame(body)


def test_an_integer_of_thousands_of_digits_is_a_protocol_error() -> None:
    body = b'{"frame":"request","id":1,"request":{"op":"status","x":' + b"9" * 4301 + b"}}"
    with pytest.raises(p.ProtocolError, match="number with thousands of digits"):
        p.decode_frame(body)


@pytest.mark.parametrize(
    "port", ["\u0663", "\u00b9", "\uff18\uff10"], ids=["arabic", "sup", "wide"]
)
def test_endpoint_ports_must_be_ascii_digits(port: str) -> None:
    body = _request(
        {
            "op": "add_peer",
            "public_key": KEY,
            "endpoint": f"h:{port}",
            "allowed_ips": "10.201.0.0/24",
            "persistent_keepalive_secs": 0,
        }
    )
    with pytest.raises(p.ProtocolError, match=r"is not a number in 1\.\.65535") as info:
        p.decode_frame(body)
    assert "invalid literal" not in str(info.value)  # not Python's int() message
    assert info.value.request_id == 7


def test_a_long_op_name_is_not_echoed_whole() -> None:
    op = "x" * 1_000_000
    with pytest.raises(p.ProtocolError) as info:
        p.decode_frame(_request({"op": op}))
    message = str(info.value)
    assert "unknown op" in message
    assert "(1000000 characters)" in message
    assert len(message) < 200


@pytest.mark.parametrize(
    "body",
    [
        {"op": "release_ip", "ip": "1" * 100_000},
        {"op": "add_allowed_ip", "pubkey": KEY, "cidr": "c" * 100_000},
        {"op": "attach_container", "service": "w", "join_global": False, "handle": "h" * 99_999},
    ],
    ids=["ip", "cidr", "handle"],
)
def test_long_values_are_not_echoed_whole(body: dict[str, object]) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_frame(_request(body))
    assert len(str(info.value)) < 1_000


def test_quote_cuts_long_values_and_keeps_short_ones() -> None:
    from overlayd.errors import QUOTE_LIMIT
    from overlayd.errors import quote

    assert quote("abc") == "'abc'"
    long = quote("y" * 500)
    assert long.startswith("'" + "y" * QUOTE_LIMIT)
    assert long.endswith("(500 characters)")
    assert quote(10**200).endswith("(201 characters)")
