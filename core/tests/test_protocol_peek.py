"""``peek_bare_request``: the poller's lane reads only what ``decode_frame`` would give."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from overlayd import protocol as p

BARE_OPS = sorted(op for op in p.REQUEST_TYPES if set(p.REQUEST_TYPES[op].model_fields) == {"op"})


def _agrees(body: bytes) -> tuple[int, p.Request] | None:
    """``peek_bare_request(body)``, checked against ``decode_frame`` of the same body."""
    peeked = p.peek_bare_request(body)
    if peeked is not None:
        frame = p.decode_frame(body)
        assert isinstance(frame, p.RequestFrame)
        assert (frame.id, frame.request) == peeked
        assert frame.request is peeked[1]  # the shared instance decode_frame gives
    return peeked


def test_there_are_bare_ops_and_status_is_one() -> None:
    assert "status" in BARE_OPS


@pytest.mark.parametrize("op", BARE_OPS)
@pytest.mark.parametrize("fid", [0, 1, 12345, 2**64 - 1])
def test_a_bare_request_is_read_in_any_key_order_and_spacing(op: str, fid: int) -> None:
    compact = b'{"frame":"request","id":%d,"request":{"op":"%s"}}' % (fid, op.encode())
    spaced = b'{ "request" : { "op" : "%s" } ,\n "id" : %d , "frame" : "request" }' % (
        op.encode(),
        fid,
    )
    extra = b'{"frame":"request","id":%d,"request":{"op":"%s"},"trace":"x"}' % (fid, op.encode())
    for body in (compact, spaced, extra):
        peeked = _agrees(body)
        assert peeked is not None and peeked[0] == fid
        assert peeked[1].op == op


@pytest.mark.parametrize(
    "body",
    [
        b'{"frame":"request","id":true,"request":{"op":"status"}}',
        b'{"frame":"request","id":-1,"request":{"op":"status"}}',
        b'{"frame":"request","id":18446744073709551616,"request":{"op":"status"}}',
        b'{"frame":"request","id":1.0,"request":{"op":"status"}}',
        b'{"frame":"request","id":"1","request":{"op":"status"}}',
        b'{"frame":"request","request":{"op":"status"}}',
        b'{"frame":"response","id":1,"request":{"op":"status"}}',
        b'{"id":1,"request":{"op":"status"}}',
        b'{"frame":"request","id":1,"request":{"op":"status","x":1}}',
        b'{"frame":"request","id":1,"request":{"op":"nope"}}',
        b'{"frame":"request","id":1,"request":{"op":["status"]}}',
        b'{"frame":"request","id":1,"request":["status"]}',
        b'{"frame":"request","id":1,"request":{"op":"attach_container"}}',
        b'["frame","request"]',
        b'{"frame":"request","id":1,"request":{"op":"status"}',
        b'\xff{"frame":"request","id":1,"request":{"op":"status"}}',
        '{"frame":"request","id":1,"request":{"op":"status"}}'.encode("utf-16"),
        b'{"frame":"request","id":1,"request":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"frame":"request","id":' + b"9" * 5000 + b',"request":{"op":"status"}}',
        b"",
    ],
    ids=lambda body: repr(body[:48]),
)
def test_anything_else_is_left_to_decode_frame(body: bytes) -> None:
    assert _agrees(body) is None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None)
@given(
    frame=st.sampled_from(["request", "response", "event", "REQUEST"]) | _JSON,
    fid=st.integers(min_value=-2, max_value=2**64 + 2) | _JSON,
    op=st.sampled_from([*BARE_OPS, "attach_container", "Status"]) | _JSON,
    more=st.dictionaries(st.sampled_from(["x", "op", "id"]), _JSON, max_size=2),
    keep=st.sets(st.sampled_from(["frame", "id", "request"])),
)
def test_whatever_it_reads_is_what_decode_frame_gives(
    frame: object, fid: object, op: object, more: dict[str, object], keep: set[str]
) -> None:
    data = {"frame": frame, "id": fid, "request": {"op": op, **more}}
    body = json.dumps({k: v for k, v in data.items() if k in keep}).encode()
    _agrees(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_any_bytes_are_read_or_left_alone(body: bytes) -> None:
    _agrees(body)
