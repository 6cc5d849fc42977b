"""Fuzz a live daemon with frames built from the protocol's own models, then mutated.

Every request model in :data:`overlayd.protocol.REQUEST_TYPES` is filled field
by field (values plausible for the field's name, or drawn from its type),
validated into the model, wrapped in a :class:`~overlayd.protocol.RequestFrame`
and encoded by :func:`~overlayd.protocol.encode_body`. Most frames are then
mutated: a value anywhere in the JSON replaced by something hostile (deep
nesting, huge or negative numbers, non-ASCII digits, megabyte strings, wrong
types), a key dropped or added, or the body's bytes cut or corrupted. Batches
are pipelined over one connection each.

Properties: every frame gets exactly one well-formed answer; a frame that does
not decode is answered ``err`` (with its id when readable); a valid request is
answered with one of its op's results or ``err``; no answer is an "internal
error"; no ``err`` message is longer than 10,000 characters; and the daemon
stays up and serves an observer throughout. The number of frames sent is
printed (``-s``) and checked against a floor.
"""

from __future__ import annotations

import base64
import functools
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import Phase
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from pydantic import ValidationError

from overlayd import protocol as p
from overlayd.client import Client
from overlayd.testing.daemon import DaemonProcess
from overlayd.testing.daemon import frame_bytes
from overlayd.testing.daemon import raw_connect
from overlayd.testing.daemon import recv_frame
from overlayd.testing.daemon import setup_lone_node
from overlayd.testing.daemon import start_daemon

pytestmark = pytest.mark.slow

#: Examples (batches) hypothesis runs, and frames per batch.
EXAMPLES = 60
BATCH = 60
#: Ops left out: they end the run or wipe what the others act on.
SKIPPED_OPS = {"shutdown", "teardown_global_overlay", "teardown_service_overlay"}
OPS = sorted(set(p.REQUEST_TYPES) - SKIPPED_OPS)
KEYS = [base64.b64encode(bytes([i + 1]) * 32).decode() for i in range(3)]

# -- values for fields, by name (what the field means) -------------------------------------------
#
# Hypothesis draws each frame's op and a seed; the seed drives a random.Random
# that fills the fields and picks the mutation. That keeps a run deterministic
# (derandomized) and cheap enough for thousands of frames in CI.

Pick = Callable[[random.Random], Any]


def _one_of(*values: Any) -> Pick:
    return lambda r: r.choice(values)


def _handle(r: random.Random) -> dict[str, Any]:
    return r.choice(
        [
            {"platform": "linux_pid", "pid": r.choice([1, 77, 4194303, r.randrange(1, 2**32)])},
            {"platform": "netns", "path": r.choice(["/run/netns/f", "/"])},
            {"platform": "windows_container", "container_id": r.choice(["c1", "", "0" * 300])},
            {"platform": "guest_managed", "id": r.choice(["vm", ""])},
        ]
    )


_cidrs = _one_of("10.201.0.0/24", "10.200.4.0/22", "0.0.0.0/0", "fd20::/64", "")
_ips = _one_of("10.200.4.7", "10.200.0.9", "10.250.0.1", "fd00::7", "192.0.2.1")


def _peer_change(r: random.Random) -> dict[str, Any]:
    change: dict[str, Any] = {"public_key": r.choice(KEYS)}
    optional: dict[str, Pick] = {
        "remove": lambda r: r.random() < 0.5,
        "endpoint": _one_of("10.9.0.2:51820", "", "peer.example:1"),
        "persistent_keepalive_secs": lambda r: r.choice([0, 25, 65535, 70_000]),
        "allowed_ips": _cidrs,
        "add_allowed_ips": _cidrs,
        "remove_allowed_ips": _cidrs,
    }
    for name, pick in optional.items():
        if r.random() < 0.3:
            change[name] = pick(r)
    return change


BY_NAME: dict[str, Pick] = {
    "node_id": lambda r: r.choice([0, 1, 2**64 - 1, r.randrange(2**64)]),
    "pubkey": lambda r: r.choice(KEYS),
    "public_key": lambda r: r.choice(KEYS),
    "deployment": _one_of("fz"),
    "instance_id": _one_of("n1"),
    "cluster_cidr": _one_of("10.200.0.0/16"),
    "slice_cidr": _one_of("10.200.0.0/20"),
    "wg_port": _one_of(51820),
    "service": _one_of("web", "db", "api", "x" * 70, "", "bad name!"),
    "mode": _one_of("auto", "shared", "dedicated"),
    "ip": _ips,
    "container_ip": _ips,
    "host_ip": _ips,
    "dns_server": _ips,
    "dns_domain": _one_of("fz.local", "bad domain"),
    "cidr": _cidrs,
    "allowed_ips": _cidrs,
    "endpoint": _one_of("10.9.0.2:51820", "", "[fd00::2]:51820", "h:51820"),
    "handle": _handle,
    "live": lambda r: [_handle(r) for _ in range(r.randrange(3))],
    "scope": _one_of({"scope": "global"}, {"scope": "service", "service": "db"}),
    "changes": lambda r: [_peer_change(r) for _ in range(r.randrange(4))],
    "name": _one_of("api", "api.fz.local.", "a" * 63, "example.com."),
    "protocol": _one_of("tcp", "udp"),
    "host_port": lambda r: r.randrange(1, 65536),
    "container_port": lambda r: r.randrange(1, 65536),
    "pool": _one_of("service:web", "node"),
    "dry_run": _one_of(True),  # a fuzzed gc never releases for real
}


def _from_schema(schema: dict[str, Any], r: random.Random) -> Any:
    """A value of a field's JSON schema type, for fields BY_NAME does not know."""
    if "anyOf" in schema:
        return _from_schema(r.choice(schema["anyOf"]), r)
    kind = schema.get("type")
    if kind == "integer":
        return r.randint(schema.get("minimum", -(2**63)), schema.get("maximum", 2**63))
    if kind == "boolean":
        return r.random() < 0.5
    if kind == "null":
        return None
    if kind == "array":
        return [_from_schema(schema.get("items", {}), r) for _ in range(r.randrange(3))]
    if "enum" in schema:
        return r.choice(schema["enum"])
    if "const" in schema:
        return schema["const"]
    return r.choice(["", "fz", "x" * 20])


@functools.cache
def _properties(op: str) -> dict[str, Any]:
    schema: dict[str, Any] = p.REQUEST_TYPES[op].model_json_schema()
    return schema.get("properties", {})  # type: ignore[no-any-return]


def valid_request(op: str, r: random.Random) -> p.AnyRequest:
    """A request of ``op`` built and validated by its model (drawn again until valid)."""
    model = p.REQUEST_TYPES[op]
    for _ in range(20):
        data: dict[str, Any] = {"op": op}
        for name, field in model.model_fields.items():
            if name == "op" or (not field.is_required() and r.random() < 0.5):
                continue
            pick = BY_NAME.get(name)
            data[name] = pick(r) if pick is not None else _from_schema(_properties(op)[name], r)
        try:
            request: p.AnyRequest = model.model_validate(data)  # type: ignore[assignment]
        except ValidationError:
            continue
        return request
    return p.HelloRequest()


# -- mutations ----------------------------------------------------------------------------------

HOSTILE: list[Any] = [
    None,
    True,
    -1,
    0,
    2**64,
    2**70,
    -(2**63) - 1,
    1e308,
    "",
    "\u0663",
    "x" * 100_000,
    "é" * 1000,
    [],
    {},
    [[[[[[[[]]]]]]]],
    {"op": "status"},
    {"scope": "global"},
    {"platform": "linux_pid", "pid": 4194304},
    "10.200.0.0/0",
    "0.0.0.0/0",
    "h:\u00b9",
    "/proc/self/ns/net",
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {**doc, head: _replace(doc[head], rest, value)}
    copy = list(doc)
    copy[head] = _replace(doc[head], rest, value)
    return copy


def _drop(doc: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1 and isinstance(doc, dict):
        return {k: v for k, v in doc.items() if k != path[0]}
    if len(path) == 1:
        return [v for i, v in enumerate(doc) if i != path[0]]
    head = path[0]
    if isinstance(doc, dict):
        return {**doc, head: _drop(doc[head], path[1:])}
    copy = list(doc)
    copy[head] = _drop(doc[head], path[1:])
    return copy


def frame_body(op: str, seed: int, frame_id: int) -> bytes:
    """One frame body: a valid ``op`` request, usually mutated (decided by ``seed``)."""
    r = random.Random(seed)
    body = p.encode_body(p.RequestFrame(id=frame_id, request=valid_request(op, r)))
    how = r.choice(["none", "value", "value", "drop", "add", "bytes", "text"])
    cut = r.randrange(len(body) + 1)
    if how == "none":
        return body
    if how == "bytes":
        junk = r.randbytes(r.randrange(1, 5))
        return body[:cut] + junk + body[cut + len(junk) :]
    if how == "text":
        insert = r.choice([b"9" * 5000, b"[" * 3000, b"\xff", b'"\\ud800"', b"NaN"])
        return body[:cut] + insert + body[cut:]
    doc = json.loads(body)
    hostile = r.choice(HOSTILE)
    if how == "add":  # an unknown key in some object
        target = r.choice([q for q in _paths(doc) if isinstance(_at(doc, q), dict)])
        doc = _replace(doc, target, {**_at(doc, target), "zz": hostile})
    else:
        path = r.choice(list(_paths(doc)))
        doc = _replace(doc, path, hostile) if how == "value" or not path else _drop(doc, path)
    return json.dumps(doc, ensure_ascii=False).encode()


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


# -- the run -------------------------------------------------------------------------------------


def _check_answer(body: bytes, answer: dict[str, Any]) -> None:
    response = answer["response"]
    result = response["result"]
    message = response.get("message", "")
    assert "internal error" not in message, (body[:300], message)
    assert len(message) <= 10_000, len(message)
    try:
        frame = p.decode_frame(body)
    except p.ProtocolError:
        assert result == "err", (body[:300], response)
        return
    assert isinstance(frame, p.RequestFrame)
    assert answer["id"] == frame.id
    assert result in (*p.EXPECTED_RESULTS[frame.request.op], "err"), (body[:300], response)


@pytest.fixture
def daemon() -> Iterator[DaemonProcess]:
    root = Path(tempfile.mkdtemp(prefix="ofm-", dir="/tmp"))
    d = start_daemon(root, args=["--log-level", "warning"])
    try:
        yield d
    finally:
        code = d.stop()
        log = d.log_text()
        shutil.rmtree(root, ignore_errors=True)
        assert code == 0, log[-3000:]
        assert "Traceback" not in log, log[-3000:]


def test_fuzz_with_mutated_model_frames(daemon: DaemonProcess) -> None:
    observer = Client(str(daemon.socket), timeout=30)
    sent = 0
    in_body = 0.0
    started = time.monotonic()
    try:
        setup_lone_node(observer, "fz")
        observer.setup_service_overlay("web", "shared")
        observer.setup_service_overlay("db", "dedicated")

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            # A failure is reported as generated: shrinking would replay
            # thousands of frames against the live daemon.
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(
            st.lists(
                st.tuples(st.sampled_from(OPS), st.integers(0, 2**32 - 1)),
                min_size=BATCH,
                max_size=BATCH,
            )
        )
        def run(specs: list[tuple[str, int]]) -> None:
            nonlocal sent, in_body
            t0 = time.monotonic()
            bodies = [frame_body(op, seed, sent + i + 1) for i, (op, seed) in enumerate(specs)]
            with raw_connect(daemon.socket, timeout=60) as s:
                s.sendall(b"".join(frame_bytes(b) for b in bodies))
                answers = [_next_response(s) for _ in bodies]
            sent += len(bodies)
            assert all(a is not None for a in answers), "a frame went unanswered"
            by_id = {int(a["id"]): a for a in answers if a is not None}
            for body in bodies:
                frame_id = _readable_id(body)
                if frame_id:
                    _check_answer(body, by_id[frame_id])
            for answer in answers:
                assert answer is not None
                message = answer["response"].get("message", "")
                assert "internal error" not in message, message
            assert observer.hello().server_version
            assert daemon.proc.poll() is None
            in_body += time.monotonic() - t0

        run()
    finally:
        observer.close()
    elapsed = time.monotonic() - started
    print(f"\nfuzz: {sent} frames in {elapsed:.1f} s ({in_body:.1f} s sending and checking)")
    assert sent >= EXAMPLES * BATCH


def _next_response(sock: Any) -> dict[str, Any] | None:
    """The next response frame (events pushed to every client are skipped)."""
    while True:
        frame = recv_frame(sock)
        if frame is None or frame.get("frame") == "response":
            return frame
        assert frame.get("frame") == "event", frame


def _readable_id(body: bytes) -> int:
    try:
        frame = p.decode_frame(body)
    except p.ProtocolError as exc:
        return exc.request_id or 0
    return frame.id if isinstance(frame, p.RequestFrame | p.ResponseFrame) else 0
