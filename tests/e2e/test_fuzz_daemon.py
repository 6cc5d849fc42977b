"""Fuzz a running daemon with malformed frames and random valid-shaped requests.

Properties: the daemon stays up; every answer is a well-formed response frame
(echoing the request's ``id`` when it had a readable one); a framing error
closes only that connection; and state (attachments, leases, status) changes
only through requests that decode as valid.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from overlayd import protocol as p
from overlayd.client import Client
from overlayd.testing.daemon import setup_lone_node
from overlayd.testing.daemon import start_daemon

_HDR = struct.Struct("<I")

_KEYS = [
    "mVNGA3KRlsSVAukmk0+nBYbMx8QEySJH8MLMGAGyk0w=",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "not-a-key",
]
# Everything but the ops that end the run or wipe the overlay the others act on.
_OPS = [
    op
    for op in p.ALL_OPS
    if op not in ("shutdown", "teardown_global_overlay", "teardown_service_overlay")
]


@pytest.fixture
def daemon() -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    root = Path(tempfile.mkdtemp(prefix="ofz-", dir="/tmp"))  # socket paths stay short
    running = start_daemon(root, args=["--driver", "fake", "--no-dns", "--log-level", "warning"])
    try:
        yield running.proc, running.socket
    finally:
        assert running.stop() == 0, running.log_text()
        shutil.rmtree(root, ignore_errors=True)


# -- strategies ----------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)

plausible = {
    "service": st.sampled_from(["web", "db", "", "x" * 70]),
    "mode": st.sampled_from(["auto", "shared", "dedicated", "bogus"]),
    "join_global": st.booleans(),
    "ip": st.sampled_from(["10.200.1.70", "10.200.1.300", "fd00::1", "10.77.0.1"]),
    "pubkey": st.sampled_from(_KEYS),
    "public_key": st.sampled_from(_KEYS),
    "endpoint": st.sampled_from(["10.9.0.2:51820", "", "nohost", "[fd00::2]:51820"]),
    "allowed_ips": st.sampled_from(["10.200.2.0/24", "10.200.2.0/24,10.200.3.0/24", "bad"]),
    "persistent_keepalive_secs": st.sampled_from([0, 25, 70000, -1]),
    "cidr": st.sampled_from(["10.200.8.0/24", "nonsense"]),
    "name": st.sampled_from(["api", "bad name!", "db.svc"]),
    "node_id": st.sampled_from([1, 2**64, -5]),
    "handle": st.sampled_from(
        [
            {"platform": "linux_pid", "pid": 123},
            {"platform": "linux_pid", "pid": 0},
            {"platform": "netns", "path": "/run/netns/f1"},
            {"platform": "guest_managed", "id": "vm"},
            {"platform": "martian"},
        ]
    ),
    "scope": st.sampled_from(
        [{"scope": "global"}, {"scope": "service", "service": "db"}, "global"]
    ),
    "live": st.sampled_from([[], [{"platform": "linux_pid", "pid": 123}], "x"]),
    "dry_run": st.just(True),  # gc in fuzzing never releases for real
    "changes": st.sampled_from([[], [{"public_key": _KEYS[0], "remove": True}], [{"x": 1}]]),
}


@st.composite
def shaped_requests(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(_OPS))
    model = p.REQUEST_TYPES[op]
    request: dict[str, Any] = {"op": op}
    for name in model.model_fields:
        if name == "op":
            continue
        if draw(st.integers(0, 9)) == 0:
            continue  # a missing field
        if name in plausible and draw(st.integers(0, 5)) > 0:
            request[name] = draw(plausible[name])
        else:
            request[name] = draw(json_values)
    if op == "gc":
        request["dry_run"] = True
    return request


@st.composite
def malformed(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["bytes", "json", "types", "huge", "truncated", "frame"]))
    if kind == "bytes":
        body = draw(st.binary(max_size=64))
        return kind, _HDR.pack(len(body)) + body
    if kind == "json":
        body = draw(st.sampled_from([b"{", b"[]", b"null", b'{"frame":1}', b'"x"', b"\xff\xfe"]))
        return kind, _HDR.pack(len(body)) + body
    if kind == "types":
        frame = {"frame": "request", "id": draw(json_values), "request": draw(json_values)}
        body = json.dumps(frame).encode()
        return kind, _HDR.pack(len(body)) + body
    if kind == "huge":
        length = draw(st.integers(p.MAX_FRAME + 1, 2**32 - 1))
        return kind, _HDR.pack(length) + b"{}"
    if kind == "truncated":
        body = json.dumps({"frame": "request", "id": 1, "request": {"op": "status"}}).encode()
        cut = draw(st.integers(1, len(body) + 3))
        return kind, (_HDR.pack(len(body)) + body)[:cut]
    body = json.dumps({"frame": draw(json_values), "id": 3, "request": {"op": "status"}}).encode()
    return kind, _HDR.pack(len(body)) + body


# -- helpers --------------------------------------------------------------------


def _recv_exact(s: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except ConnectionResetError:
            # A closed Unix socket with unread input reports ECONNRESET: also a close.
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def _read_answer(s: socket.socket) -> p.ResponseFrame | None:
    head = _recv_exact(s, 4)
    if head is None:
        return None
    (n,) = _HDR.unpack(head)
    assert n <= p.MAX_FRAME
    body = _recv_exact(s, n)
    assert body is not None, "the daemon sent a truncated frame"
    frame = p.decode_frame(body)  # raises if not well-formed
    assert isinstance(frame, p.ResponseFrame)
    return frame


def _snapshot(c: Client) -> tuple[Any, ...]:
    return (
        [a.to_wire() for a in c.list_attachments()],
        sorted(json.dumps(lease.to_wire(), sort_keys=True) for lease in c.list_leases()),
        c.status().to_wire(),
    )


def _locally_valid(body: bytes) -> bool:
    try:
        return isinstance(p.decode_frame(body), p.RequestFrame)
    except p.ProtocolError:
        return False


def test_fuzz_daemon(daemon: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, sock = daemon
    observer = Client(str(sock), timeout=10)
    try:
        setup_lone_node(observer, "fz", "10.200.1.0/24")
        observer.setup_service_overlay("web", "shared")
        observer.setup_service_overlay("db", "dedicated")
        stats = {"valid": 0, "invalid": 0, "closed": 0}

        @settings(
            max_examples=200,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            derandomize=True,
        )
        @given(
            st.one_of(
                malformed().map(lambda x: ("raw", x)),
                shaped_requests().map(lambda r: ("req", r)),
            ),
            st.integers(0, 2**64 - 1),
        )
        def run(case: tuple[str, Any], request_id: int) -> None:
            before = _snapshot(observer)
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(sock))
                if case[0] == "raw":
                    kind, data = case[1]
                    s.sendall(data)
                    s.shutdown(socket.SHUT_WR)
                    answer = _read_answer(s)
                    if kind in ("huge", "truncated") and answer is None:
                        stats["closed"] += 1
                    elif answer is not None:
                        body = data[4:]
                        valid = _locally_valid(body)
                        if not valid:
                            assert answer.response.result == "err"
                    valid = False
                else:
                    body = json.dumps(
                        {"frame": "request", "id": request_id, "request": case[1]}
                    ).encode()
                    valid = _locally_valid(body)
                    s.sendall(_HDR.pack(len(body)) + body)
                    answer = _read_answer(s)
                    assert answer is not None, "a request frame went unanswered"
                    assert answer.id == request_id
                    if not valid:
                        assert answer.response.result == "err"
                    else:
                        op = case[1]["op"]
                        allowed = (*p.EXPECTED_RESULTS[op], "err")
                        assert answer.response.result in allowed
                stats["valid" if valid else "invalid"] += 1
            assert proc.poll() is None, "the daemon died"
            if not valid:
                assert _snapshot(observer) == before, f"state changed after {case!r}"

        run()
        assert stats["valid"] > 10
        assert stats["invalid"] > 50
        assert stats["closed"] > 0
        # Still healthy afterwards.
        assert observer.status().interface == "zl-fz-n1-g"
    finally:
        observer.close()
