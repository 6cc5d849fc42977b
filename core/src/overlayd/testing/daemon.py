"""``overlayd serve`` as a subprocess, and raw frames to and from it (POSIX).

For end-to-end tests that need what a client library hides: pipelined or
malformed frames, clients that never read, the daemon's memory and CPU time.

Example::

    daemon = start_daemon(tmp_path)
    try:
        with raw_connect(daemon.socket) as sock:
            send_request(sock, 1, {"op": "hello"})
            assert recv_frame(sock)["response"]["result"] == "hello"
    finally:
        assert daemon.stop() == 0
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlayd.testing.nodes import lone_node

assert sys.platform != "win32", "the daemon test helpers need Unix sockets"

__all__ = [
    "DaemonProcess",
    "frame_bytes",
    "raw_connect",
    "recv_frame",
    "request_as_nobody",
    "running_daemon",
    "send_request",
    "serve_command",
    "setup_lone_node",
    "setup_node",
    "start_daemon",
    "terminate",
]

_HDR = struct.Struct("<I")


@dataclass
class DaemonProcess:
    """A running ``overlayd serve`` and the files it uses."""

    proc: subprocess.Popen[bytes]
    socket: Path
    root: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait, and return the exit code (kill after ``timeout``)."""
        return terminate(self.proc, timeout)

    def metrics_url(self, timeout: float = 10.0) -> str:
        """The ``/metrics`` URL the daemon logged (``[metrics] listen``; port 0 works)."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(r"serving metrics on (http://\S+/metrics)", self.log_text())
            if found:
                return found.group(1)
            if time.monotonic() > deadline:
                raise AssertionError(f"the daemon logged no metrics URL:\n{self.log_text()}")
            time.sleep(0.05)

    def rss_bytes(self) -> int:
        """Resident memory of the daemon (``VmRSS``)."""
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/<pid>/status")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the daemon has used."""
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks


def terminate(proc: subprocess.Popen[Any], timeout: float = 20.0) -> int:
    """SIGTERM ``proc`` if it still runs and return its exit code.

    :raises subprocess.TimeoutExpired: it had not exited after ``timeout``
        seconds, and was killed.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise


def serve_command(*args: str) -> list[str]:
    """The command line of ``overlayd serve args...`` under this interpreter."""
    return [sys.executable, "-m", "overlayd", "serve", *args]


def start_daemon(
    root: Path,
    config: str = "",
    *,
    args: Sequence[str] = (),
    socket_path: Path | None = None,
    prefix: Sequence[str] = (),
    preexec_fn: Callable[[], Any] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> DaemonProcess:
    """Start ``overlayd serve`` with socket ``root/s.sock`` (or ``socket_path``) and
    data in ``root/data``.

    ``config`` is TOML for ``--config`` (default: the fake driver, no DNS, no
    periodic health checks); ``prefix`` runs the daemon under another command
    (``ip netns exec NS``). Returns once the socket accepts connections.
    """
    sock = socket_path or root / "s.sock"
    cfg = root / "overlayd.toml"
    cfg.write_text(
        config
        or '[drivers]\nenabled = ["fake"]\n[dns]\nenabled = false\n[engine]\n'
        "health_interval_secs = 0\n"
    )
    log = root / "daemon.log"
    command = [
        *prefix,
        *serve_command(
            "--config", str(cfg), "--socket", str(sock), "--data-dir", str(root / "data")
        ),
        *args,
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - the test's own command line
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,  # noqa: PLW1509 - single-threaded test helpers
            env=None if env is None else dict(env),
        )
    daemon = DaemonProcess(proc, sock, root, log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"overlayd exited {proc.returncode}:\n{daemon.log_text()}")
        try:
            with raw_connect(sock, timeout=1.0):
                return daemon
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(5)
            raise AssertionError(f"overlayd did not listen on {sock}:\n{daemon.log_text()}")
        time.sleep(0.05)


@contextlib.contextmanager
def running_daemon(root: Path, config: str = "", **options: Any) -> Iterator[DaemonProcess]:
    """:func:`start_daemon` for a ``with`` block, at whose end the daemon must exit 0."""
    daemon = start_daemon(root, config, **options)
    try:
        yield daemon
    finally:
        code = daemon.stop()
        assert code == 0, daemon.log_text()[-3000:]


def raw_connect(path: Path | str, timeout: float = 10.0) -> socket.socket:
    """A connected Unix socket with a timeout."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
    except BaseException:
        sock.close()
        raise
    return sock


def frame_bytes(body: bytes) -> bytes:
    """``body`` with its 4-byte little-endian length prefix."""
    return _HDR.pack(len(body)) + body


def send_request(sock: socket.socket, request_id: int, request: Mapping[str, Any]) -> None:
    """Send one request frame."""
    body = json.dumps({"frame": "request", "id": request_id, "request": request}).encode()
    sock.sendall(frame_bytes(body))


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:
            return None  # a closed Unix socket with unread input reports ECONNRESET
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> dict[str, Any] | None:
    """The next frame as a JSON object; ``None`` when the daemon closed the connection."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = _HDR.unpack(head)
    body = _recv_exact(sock, n)
    if body is None:
        raise AssertionError("the daemon closed the connection inside a frame")
    data: dict[str, Any] = json.loads(body)
    return data


_AS_NOBODY = """
import json, os, socket, struct, sys
os.setgroups([int(g) for g in sys.argv[3].split(",") if g])
os.setgid(65534)
os.setuid(65534)
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
body = json.dumps({"frame": "request", "id": 1, "request": {"op": sys.argv[2]}}).encode()
try:
    s.sendall(struct.pack("<I", len(body)) + body)
except OSError:
    pass  # a refused client may be closed before it has written: the answer waits
head = s.recv(4, socket.MSG_WAITALL)
n, = struct.unpack("<I", head)
frame = json.loads(s.recv(n, socket.MSG_WAITALL))
closed = False
if frame["response"]["result"] == "err":
    try:
        closed = s.recv(1) == b""
    except ConnectionResetError:
        closed = True
print(json.dumps({"response": frame["response"], "closed": closed}))
"""


def request_as_nobody(
    path: Path | str, op: str, groups: Sequence[int] = ()
) -> tuple[dict[str, Any], bool]:
    """Send ``{"op": op}`` from a child process that runs as uid and gid 65534
    with supplementary ``groups`` only (needs root).

    Returns the response object and, after an ``err`` answer, whether the
    daemon then closed the connection (``False`` after any other answer,
    which leaves the connection open).
    """
    out = subprocess.run(  # noqa: S603 - the test's own command line
        [sys.executable, "-I", "-c", _AS_NOBODY, str(path), op, ",".join(map(str, groups))],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result["response"], result["closed"]


def setup_lone_node(client: Any, deployment: str, slice_cidr: str = "10.200.0.0/20") -> str:
    """The global overlay of a node with no peers, through a sync
    :class:`overlayd.client.Client`: instance ``n1`` on cluster
    ``10.200.0.0/16``, WireGuard port 51820, no NAT. Returns the interface name."""
    name: str = client.setup_global_overlay(**lone_node(deployment, slice_cidr=slice_cidr))
    return name


def setup_node(
    client: Any,
    node_id: int,
    *,
    deployment: str,
    cluster_cidr: str,
    slice_cidr: str | None = None,
    services: Sequence[str] = ("web",),
) -> str | None:
    """The set-up ZLayer's agent makes on a node, through a sync
    :class:`overlayd.client.Client`: node id, global overlay (WireGuard port
    ``51820 + node_id``, no NAT) and a shared overlay per service. Returns the
    node's public key."""
    client.set_local_node_id(node_id)
    client.setup_global_overlay(
        deployment=deployment,
        instance_id=f"n{node_id}",
        cluster_cidr=cluster_cidr,
        slice_cidr=slice_cidr,
        wg_port=51820 + node_id,
        nat_enabled=False,
    )
    for service in services:
        client.setup_service_overlay(service)
    key: str | None = client.status().public_key
    return key
