"""Clients an operator would rather not have: floods, never reading, too many, odd input.

Each test runs ``overlayd serve --driver fake`` as a subprocess and reproduces
one way a client hurt the daemon before (issue 16): the daemon must stay
within bounds, keep serving others and answer bad input with a clear ``err``.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlayd.testing.daemon import DaemonProcess
from overlayd.testing.daemon import frame_bytes
from overlayd.testing.daemon import raw_connect
from overlayd.testing.daemon import recv_frame
from overlayd.testing.daemon import request_as_nobody
from overlayd.testing.daemon import running_daemon
from overlayd.testing.daemon import send_request
from overlayd.testing.daemon import start_daemon

HELLO = frame_bytes(b'{"frame":"request","id":1,"request":{"op":"hello"}}')
STATUS = frame_bytes(b'{"frame":"request","id":1,"request":{"op":"status"}}')
SETUP = {
    "op": "setup_global_overlay",
    "deployment": "hc",
    "instance_id": "n1",
    "cluster_cidr": "10.200.0.0/16",
    "slice_cidr": "10.200.0.0/20",
    "wg_port": 51820,
    "nat_enabled": False,
}


@pytest.fixture
def daemon(root: Path) -> Iterator[DaemonProcess]:
    with running_daemon(root) as d:
        yield d


def _call(daemon: DaemonProcess, request: dict[str, Any], request_id: int = 1) -> dict[str, Any]:
    with raw_connect(daemon.socket) as s:
        send_request(s, request_id, request)
        frame = recv_frame(s)
    assert frame is not None, "the daemon closed the connection without an answer"
    response: dict[str, Any] = frame["response"]
    return response


def _hello_seconds(path: Path) -> float:
    started = time.monotonic()
    with raw_connect(path) as s:
        s.sendall(HELLO)
        frame = recv_frame(s)
    assert frame is not None and frame["response"]["result"] == "hello"
    return time.monotonic() - started


# -- a client that sends and never reads ---------------------------------------------------


@pytest.mark.parametrize("op", ["hello", "status"])
def test_a_client_that_never_reads_cannot_grow_the_daemon_or_slow_others(
    daemon: DaemonProcess, op: str
) -> None:
    if op == "status":
        # Set up, so that an unchanged status is answered in the fast lane.
        assert _call(daemon, SETUP)["result"] == "bridge_name"
        assert _call(daemon, {"op": "status"})["result"] == "status"
    baseline = daemon.rss_bytes()
    flood = raw_connect(daemon.socket, timeout=2.0)
    batch = (HELLO if op == "hello" else STATUS) * 2000
    sent = 0
    stalled = threading.Event()

    def flooder() -> None:
        nonlocal sent
        try:
            while sent < 40 * 2**20:  # 40 MiB, about 750,000 requests
                flood.sendall(batch)
                sent += len(batch)
        except TimeoutError:
            stalled.set()  # the daemon stopped reading this connection
        except OSError:
            pass

    thread = threading.Thread(target=flooder, daemon=True)
    thread.start()
    latencies: list[float] = []
    peak = 0
    try:
        deadline = time.monotonic() + 20
        while thread.is_alive() and time.monotonic() < deadline:
            latencies.append(_hello_seconds(daemon.socket))
            peak = max(peak, daemon.rss_bytes())
            time.sleep(0.1)
        for _ in range(10):  # and while the flooder sits there, stalled
            latencies.append(_hello_seconds(daemon.socket))
            peak = max(peak, daemon.rss_bytes())
    finally:
        flood.close()
        thread.join(10)
    assert stalled.is_set(), f"the daemon kept reading: {sent} bytes of requests accepted"
    assert sent < 4 * 2**20, f"{sent} bytes were read before the daemon stopped reading"
    grown = (peak - baseline) / 2**20
    assert grown < 48, f"RSS grew by {grown:.0f} MiB while a client flooded without reading"
    assert max(latencies) < 2.0, f"another client's hello took {max(latencies):.2f} s"
    assert daemon.proc.poll() is None


@pytest.mark.parametrize("op", ["hello", "status"])
def test_a_flooding_client_that_reads_gets_every_answer(daemon: DaemonProcess, op: str) -> None:
    """Back-pressure only delays: nothing read is dropped."""
    if op == "status":
        assert _call(daemon, SETUP)["result"] == "bridge_name"
    count = 5000
    with raw_connect(daemon.socket, timeout=30) as s:
        batch = (HELLO if op == "hello" else STATUS) * count
        writer = threading.Thread(target=s.sendall, args=(batch,), daemon=True)
        writer.start()
        answers = 0
        while answers < count:
            frame = recv_frame(s)
            assert frame is not None
            assert frame["response"]["result"] == op
            answers += 1
        writer.join(10)


# -- too many connections ---------------------------------------------------------------------


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_connections_over_the_cap_get_err_and_are_closed(root: Path) -> None:
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    daemon = start_daemon(root, preexec_fn=low_limit)
    held: list[socket.socket] = []
    try:
        for _ in range(32):  # 64 files: 32 for clients by default
            s = raw_connect(daemon.socket)
            s.sendall(HELLO)
            assert recv_frame(s) is not None
            held.append(s)
        for _ in range(20):
            with raw_connect(daemon.socket) as extra:
                frame = recv_frame(extra)
                assert frame is not None
                assert frame["id"] == 0
                assert frame["response"]["result"] == "err"
                assert "at most 32 connections" in frame["response"]["message"]
                assert recv_frame(extra) is None  # and closed
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the daemon notices the close, then serves a newcomer
            with raw_connect(daemon.socket) as again:
                again.sendall(HELLO)
                frame = recv_frame(again)
            assert frame is not None
            if frame["response"]["result"] == "hello":
                break
            assert time.monotonic() < deadline, frame
            time.sleep(0.05)
        log = daemon.log_text()
        assert "at most 32 connections" in log
        assert log.count("refusing a connection") == 1, log  # rate-limited
        assert "Traceback" not in log
    finally:
        for s in held:
            s.close()
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def test_out_of_descriptors_accept_backs_off_instead_of_spinning(
    daemon: DaemonProcess,
) -> None:
    held = [raw_connect(daemon.socket) for _ in range(8)]
    waiting: list[socket.socket] = []
    try:
        for s in held:
            s.sendall(HELLO)
            assert recv_frame(s) is not None
        pid = daemon.proc.pid
        limit = _open_files(pid) + 1
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:"], check=True)
        for _ in range(10):
            s = raw_connect(daemon.socket)
            s.sendall(HELLO)
            waiting.append(s)
        time.sleep(0.5)
        cpu = daemon.cpu_seconds()
        time.sleep(3)
        used = daemon.cpu_seconds() - cpu
        assert used < 0.5, f"the daemon used {used:.2f} s of CPU in 3 s out of descriptors"
        log = daemon.log_text()
        assert log.count("cannot accept connections") <= 1, log[-3000:]
        assert "out of system resource" not in log
        # Descriptors come back: the waiting clients are served.
        for s in held:
            s.close()
        subprocess.run(["prlimit", f"--pid={pid}", "--nofile=1024:"], check=True)
        for s in waiting:
            s.settimeout(15)
            frame = recv_frame(s)
            assert frame is not None and frame["response"]["result"] == "hello", frame
    finally:
        for s in held + waiting:
            s.close()


# -- large frames -----------------------------------------------------------------------------


def test_a_large_frame_is_decoded_while_others_are_served(daemon: DaemonProcess) -> None:
    """A multi-megabyte apply_peers is checked off the event loop: a hello sent after
    it is answered before it. (The last change is invalid, so it is answered err
    as soon as it is decoded.)"""
    key = "mVNGA3KRlsSVAukmk0+nBYbMx8QEySJH8MLMGAGyk0w="
    changes: list[dict[str, Any]] = [
        {
            "public_key": key,
            "endpoint": f"10.9.{i % 250}.{i % 200 + 1}:51820",
            "allowed_ips": f"10.{i % 250}.{i % 200}.0/24,fd00:{i:x}::/64",
        }
        for i in range(50_000)  # about 7 MiB, just under the frame limit
    ]
    changes.append({"public_key": "not a key"})
    body = json.dumps(
        {"frame": "request", "id": 5, "request": {"op": "apply_peers", "changes": changes}}
    ).encode()
    assert len(body) < 8 * 2**20
    order: list[str] = []
    with raw_connect(daemon.socket, timeout=60) as big:
        big.sendall(frame_bytes(body))

        def wait_big() -> None:
            frame = recv_frame(big)
            assert frame is not None and frame["response"]["result"] == "err"
            order.append("big")

        waiter = threading.Thread(target=wait_big, daemon=True)
        waiter.start()
        time.sleep(0.3)  # the daemon has the frame and is decoding it
        _hello_seconds(daemon.socket)
        order.append("hello")
        waiter.join(60)
    assert order == ["hello", "big"]


# -- input the wire accepts but no workload can have ---------------------------------------------


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            {
                "op": "attach_container",
                "service": "web",
                "join_global": False,
                "handle": {"platform": "linux_pid", "pid": 4194304},
            },
            "pid 4194304 is not a Linux process id",
        ),
        (
            {"op": "detach_container", "handle": {"platform": "linux_pid", "pid": 2**32 - 1}},
            "is not a Linux process id",
        ),
        (
            {"op": "gc", "live": [{"platform": "linux_pid", "pid": 4194304}], "dry_run": True},
            "is not a Linux process id",
        ),
        (
            {
                "op": "attach_container",
                "service": "web",
                "join_global": False,
                "handle": {"platform": "netns", "path": "/" + "n" * 5000},
            },
            "'path' is longer than 4096 characters",
        ),
        (
            {
                "op": "attach_container",
                "service": "web",
                "join_global": False,
                "handle": {"platform": "windows_container", "container_id": ""},
            },
            "'container_id' is empty",
        ),
        (
            {
                "op": "detach_container",
                "handle": {"platform": "guest_managed", "id": ""},
            },
            "'id' is empty",
        ),
    ],
    ids=["attach-pid", "detach-pid", "gc-pid", "netns-path", "container-id", "guest-id"],
)
def test_handles_no_workload_can_have_get_a_clear_err(
    daemon: DaemonProcess, request_: dict[str, Any], message: str
) -> None:
    assert _call(daemon, SETUP)["result"] == "bridge_name"
    assert (
        _call(daemon, {"op": "setup_service_overlay", "service": "web", "mode": "shared"})["result"]
        == "service_overlay"
    )
    answer = _call(daemon, request_)
    assert answer["result"] == "err"
    assert message in answer["message"]
    assert "internal error" not in answer["message"]
    assert "Traceback" not in daemon.log_text()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"frame":"request","id":3,"request":' + b"[" * 5000 + b"]" * 5000 + b"}", "deeply"),
        (
            b'{"frame":"request","id":3,"request":{"op":"status","n":' + b"7" * 5000 + b"}}",
            "digits",
        ),
    ],
    ids=["deep-json", "huge-integer"],
)
def test_undecodable_bodies_get_err_and_the_connection_stays(
    daemon: DaemonProcess, body: bytes, message: str
) -> None:
    with raw_connect(daemon.socket) as s:
        s.sendall(frame_bytes(body))
        frame = recv_frame(s)
        assert frame is not None, "the daemon closed the connection without an answer"
        assert frame["response"]["result"] == "err"
        assert message in frame["response"]["message"]
        s.sendall(HELLO)  # the same connection still works
        frame = recv_frame(s)
        assert frame is not None and frame["response"]["result"] == "hello"
    assert "Unhandled exception" not in daemon.log_text()


def test_a_megabyte_op_name_is_not_echoed_back(daemon: DaemonProcess) -> None:
    answer = _call(daemon, {"op": "x" * 2**20})
    assert answer["result"] == "err"
    assert "unknown op" in answer["message"]
    assert len(answer["message"]) < 300


# -- who may connect --------------------------------------------------------------------------


def test_the_socket_directory_is_0750_whatever_the_umask(root: Path) -> None:
    def no_umask() -> None:
        os.umask(0)

    path = root / "run" / "sub" / "s.sock"
    with running_daemon(root, preexec_fn=no_umask, socket_path=path):
        for directory in (root / "run", root / "run" / "sub"):
            assert oct(directory.stat().st_mode & 0o777) == oct(0o750), directory
        assert oct(path.stat().st_mode & 0o777) == oct(0o660)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as uid 65534")
def test_the_callers_own_supplementary_groups_are_checked(root: Path) -> None:
    """A process given the allowed group with setgroups() is served, though
    /etc/group does not list its user in that group; without it, refused."""
    config = 'allowed_gids = [4242]\n[drivers]\nenabled = ["fake"]\n[dns]\nenabled = false\n'
    with running_daemon(root, config) as daemon:
        os.chmod(root, 0o755)
        os.chmod(daemon.socket, 0o666)  # so that only the daemon's check decides

        served, _ = request_as_nobody(daemon.socket, "hello", groups=[4242])
        assert served["result"] == "hello"
        refused, _ = request_as_nobody(daemon.socket, "hello", groups=[4243])
        assert refused["result"] == "err"
        assert "permission denied" in refused["message"]
