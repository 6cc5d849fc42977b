"""An in-process WireGuard UAPI server that models wireguard-go, for tests.

It speaks the text protocol on a unix socket and keeps device state in memory
with wireguard-go's rules (docs/reference/wireguard.rst §1, verified against 0.0.20220316):

* lines are applied as they are read; the first invalid line stops the
  transaction with a negative errno and leaves earlier lines applied;
* device keys are only accepted before the first ``public_key``;
* keys are hex; ``private_key`` is clamped; all-zero keys mean "none";
* ``update_only`` for an unknown peer creates nothing; a peer equal to the
  device's own public key is ignored;
* ``allowed_ip`` is masked on insert and moves a prefix owned by another peer;
  comma lists, ``-prefix`` removal and host-name endpoints are ``EINVAL``;
* ``listen_port`` on a busy port answers ``EADDRINUSE`` and leaves the device
  listening nowhere; ``0`` picks a random port;
* many transactions per connection, each answered before the next is read.

Run as a process it imitates ``wireguard-go -f IFNAME`` (without a TUN), which is
how the userspace backend's supervisor is tested without root::

    python -m overlayd_wireguard.fakeuapi --socket-dir DIR -f IFNAME
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import io
import ipaddress
import os
import random
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from types import TracebackType
from typing import Final
from typing import Self

from overlayd.errors import InvalidRequest
from overlayd_wireguard.keys import PrivateKey
from overlayd_wireguard.keys import b64_to_hex
from overlayd_wireguard.uapi import normalize_endpoint

__all__ = ["FakeDevice", "FakePeer", "FakeUapiServer", "main"]

_ZERO: Final = bytes(32)
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class _UapiFail(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class FakePeer:
    """One peer of a :class:`FakeDevice` (raw 32-byte keys)."""

    public_key: bytes
    preshared_key: bytes = _ZERO
    endpoint: str | None = None
    persistent_keepalive_interval: int = 0
    last_handshake_time_sec: int = 0
    last_handshake_time_nsec: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass
class FakeDevice:
    """Device state. Allowed IPs live in one table, as in wireguard-go's trie."""

    private_key: bytes | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: dict[bytes, FakePeer] = field(default_factory=dict)
    #: prefix -> owning peer's public key, in insertion order.
    allowed_ips: dict[_Net, bytes] = field(default_factory=dict)

    def public_key(self) -> bytes | None:
        """The device's own public key, if it has a private key."""
        if self.private_key is None:
            return None
        return base64.b64decode(PrivateKey(self.private_key).public_key())

    def remove_peer(self, key: bytes) -> None:
        """Remove a peer and every prefix it owns."""
        self.peers.pop(key, None)
        for net in [n for n, k in self.allowed_ips.items() if k == key]:
            del self.allowed_ips[net]

    def peer_prefixes(self, key: bytes) -> list[_Net]:
        """The prefixes routed to ``key``."""
        return [n for n, k in self.allowed_ips.items() if k == key]


class _PeerCursor:
    def __init__(self, key: bytes, peer: FakePeer | None, created: bool) -> None:
        self.key = key
        self.peer = peer  # None = dummy: lines are validated but not applied
        self.created = created


def _parse_hex_key(value: str) -> bytes:
    if len(value) != 64:
        raise _UapiFail(errno.EINVAL)
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise _UapiFail(errno.EINVAL) from None


def _parse_uint(value: str, high: int) -> int:
    if not value.isdigit():
        raise _UapiFail(errno.EINVAL)
    n = int(value)
    if n > high:
        raise _UapiFail(errno.EINVAL)
    return n


def _true(value: str) -> None:
    if value != "true":
        raise _UapiFail(errno.EINVAL)


class FakeUapiServer:
    """A threaded unix-socket UAPI server for one device.

    ``busy_ports``: ports a ``listen_port`` set fails on with ``EADDRINUSE``.
    ``errno_sign``: -1 like wireguard-go, +1 like boringtun.
    """

    def __init__(
        self,
        socket_dir: str | os.PathLike[str],
        ifname: str,
        *,
        busy_ports: Iterable[int] = (),
        errno_sign: int = -1,
    ) -> None:
        self.socket_path = Path(socket_dir) / f"{ifname}.sock"
        self.ifname = ifname
        self.device = FakeDevice()
        self.busy_ports = set(busy_ports)
        self.errno_sign = errno_sign
        #: Every request text received, in order (for assertions on batching).
        self.requests: list[str] = []
        self.lock = threading.RLock()
        self._fail_next: int | None = None
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Self:
        """Bind the socket (mode 0600, like wireguard-go) and serve in a thread."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.socket_path))
            except OSError:
                self.socket_path.unlink()  # stale, as wireguard-go does
            else:
                raise OSError(errno.EADDRINUSE, "UAPI listen error: unix socket in use")
            finally:
                probe.close()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer._serve_connection(self.rfile, self.wfile)

        old = os.umask(0o077)
        try:
            server = socketserver.ThreadingUnixStreamServer(str(self.socket_path), Handler)
        finally:
            os.umask(old)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fakeuapi-{self.ifname}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and unlink the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- test helpers ---------------------------------------------------------------

    def fail_next_set(self, code: int) -> None:
        """Make the next ``set`` answer ``errno=code`` without applying anything."""
        self._fail_next = code

    def set_peer_stats(
        self,
        public_key: str,
        *,
        rx_bytes: int | None = None,
        tx_bytes: int | None = None,
        handshake: tuple[int, int] | None = None,
    ) -> None:
        """Simulate traffic/handshakes for the peer with this base64 key."""
        key = bytes.fromhex(b64_to_hex(public_key))
        with self.lock:
            peer = self.device.peers[key]
            if rx_bytes is not None:
                peer.rx_bytes = rx_bytes
            if tx_bytes is not None:
                peer.tx_bytes = tx_bytes
            if handshake is not None:
                peer.last_handshake_time_sec, peer.last_handshake_time_nsec = handshake

    # -- protocol -------------------------------------------------------------------

    def _serve_connection(self, reader: io.BufferedIOBase, writer: io.BufferedIOBase) -> None:
        while True:
            raw = reader.readline()
            if not raw:
                return
            op = raw.decode("utf-8", "replace")
            if op == "get=1\n":
                nxt = reader.readline()
                with self.lock:
                    self.requests.append("get=1\n" + nxt.decode("utf-8", "replace"))
                    if nxt != b"\n":
                        answer = self._errno(errno.EINVAL)
                    else:
                        answer = self._get() + "errno=0\n\n"
            elif op == "set=1\n":
                lines: list[str] = []
                while True:
                    line = reader.readline()
                    if not line:
                        return
                    if line == b"\n":
                        break
                    lines.append(line.decode("utf-8", "replace").rstrip("\n"))
                with self.lock:
                    self.requests.append("set=1\n" + "".join(f"{x}\n" for x in lines))
                    answer = self._set(lines)
            else:
                return  # wireguard-go closes the connection on an unknown operation
            writer.write(answer.encode())
            writer.flush()

    def _errno(self, code: int) -> str:
        return f"errno={self.errno_sign * code if code else 0}\n\n"

    def _get(self) -> str:
        d = self.device
        out: list[str] = []
        if d.private_key is not None:
            out.append(f"private_key={d.private_key.hex()}")
        if d.listen_port:
            out.append(f"listen_port={d.listen_port}")
        if d.fwmark:
            out.append(f"fwmark={d.fwmark}")
        for key, p in d.peers.items():
            out.append(f"public_key={key.hex()}")
            out.append(f"preshared_key={p.preshared_key.hex()}")
            out.append("protocol_version=1")
            if p.endpoint is not None:
                out.append(f"endpoint={p.endpoint}")
            out.append(f"last_handshake_time_sec={p.last_handshake_time_sec}")
            out.append(f"last_handshake_time_nsec={p.last_handshake_time_nsec}")
            out.append(f"tx_bytes={p.tx_bytes}")
            out.append(f"rx_bytes={p.rx_bytes}")
            out.append(f"persistent_keepalive_interval={p.persistent_keepalive_interval}")
            out.extend(f"allowed_ip={n}" for n in d.peer_prefixes(key))
        return "".join(f"{line}\n" for line in out)

    def _set(self, lines: list[str]) -> str:
        if self._fail_next is not None:
            code, self._fail_next = self._fail_next, None
            return self._errno(code)
        cursor: _PeerCursor | None = None
        try:
            for line in lines:
                key, sep, value = line.partition("=")
                if not sep:
                    raise _UapiFail(errno.EPROTO)
                if key == "public_key":
                    cursor = self._start_peer(_parse_hex_key(value))
                elif cursor is None:
                    self._set_device_key(key, value)
                else:
                    self._set_peer_key(cursor, key, value)
        except _UapiFail as fail:
            return self._errno(fail.code)
        return self._errno(0)

    def _set_device_key(self, key: str, value: str) -> None:
        d = self.device
        if key == "private_key":
            raw = _parse_hex_key(value)
            if raw == _ZERO:
                d.private_key = None
                return
            d.private_key = PrivateKey(raw).raw
            own = d.public_key()
            if own is not None and own in d.peers:
                d.remove_peer(own)  # wireguard-go drops a peer equal to itself
        elif key == "listen_port":
            port = _parse_uint(value, 0xFFFF)
            d.listen_port = 0  # the old socket is closed first (BindUpdate)
            if port in self.busy_ports:
                raise _UapiFail(errno.EADDRINUSE)
            while port == 0:
                port = random.randint(20000, 60000)  # noqa: S311 - not security relevant
                if port in self.busy_ports:
                    port = 0
            d.listen_port = port
        elif key == "fwmark":
            d.fwmark = _parse_uint(value, 0xFFFFFFFF)
        elif key == "replace_peers":
            _true(value)
            for k in list(d.peers):
                d.remove_peer(k)
        else:
            raise _UapiFail(errno.EINVAL)

    def _start_peer(self, key: bytes) -> _PeerCursor:
        d = self.device
        if key == d.public_key():
            return _PeerCursor(key, None, created=False)
        peer = d.peers.get(key)
        if peer is not None:
            return _PeerCursor(key, peer, created=False)
        peer = FakePeer(public_key=key)
        d.peers[key] = peer
        return _PeerCursor(key, peer, created=True)

    def _set_peer_key(self, cur: _PeerCursor, key: str, value: str) -> None:
        d = self.device
        peer = cur.peer
        if key == "update_only":
            _true(value)
            if cur.created and peer is not None:
                d.remove_peer(cur.key)
                cur.peer = None
        elif key == "remove":
            _true(value)
            if peer is not None:
                d.remove_peer(cur.key)
                cur.peer = None
        elif key == "preshared_key":
            psk = _parse_hex_key(value)
            if peer is not None:
                peer.preshared_key = psk
        elif key == "endpoint":
            try:
                endpoint = normalize_endpoint(value)
            except InvalidRequest:
                raise _UapiFail(errno.EINVAL) from None
            if peer is not None:
                peer.endpoint = endpoint
        elif key == "persistent_keepalive_interval":
            interval = _parse_uint(value, 0xFFFF)
            if peer is not None:
                peer.persistent_keepalive_interval = interval
        elif key == "replace_allowed_ips":
            _true(value)
            if peer is not None:
                for net in d.peer_prefixes(cur.key):
                    del d.allowed_ips[net]
        elif key == "allowed_ip":
            if "/" not in value or "," in value or value.startswith("-"):
                raise _UapiFail(errno.EINVAL)
            try:
                net = ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise _UapiFail(errno.EINVAL) from None
            if peer is not None:
                d.allowed_ips.pop(net, None)  # an exact match moves to this peer
                d.allowed_ips[net] = cur.key
        elif key == "protocol_version":
            if value != "1":
                raise _UapiFail(errno.EINVAL)
        else:
            raise _UapiFail(errno.EINVAL)


# ------------------------------------------------------------------ process mode


def _serve_as_process(socket_dir: str, ifname: str) -> int:
    server = FakeUapiServer(socket_dir, ifname)
    try:
        server.start()
    except OSError as exc:
        print(f"UAPI listen error: {exc.strerror}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"fakeuapi serving {server.socket_path}", file=sys.stderr, flush=True)
    try:
        # wireguard-go exits when its socket file disappears (inotify watch).
        while not stop.wait(0.1):
            if not server.socket_path.exists():
                break
    finally:
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point imitating ``wireguard-go -f IFNAME`` (UAPI only, no TUN)."""
    parser = argparse.ArgumentParser(prog="fakeuapi")
    parser.add_argument("--socket-dir", default="/var/run/wireguard")
    parser.add_argument("-f", "--foreground", action="store_true")
    parser.add_argument("ifname")
    args = parser.parse_args(argv)
    return _serve_as_process(args.socket_dir, args.ifname)


def wait_for_socket(path: Path, timeout: float = 5.0) -> None:
    """Block until ``path`` exists (helper for process-mode tests)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


if __name__ == "__main__":
    sys.exit(main())
