"""The UAPI client: one unix-socket connection per ``get`` or ``set`` transaction.

Frames are encoded and parsed by :mod:`overlayd_wireguard.uapi.protocol`.
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import socket
from pathlib import Path

from overlayd_wireguard.uapi.protocol import DEFAULT_SOCKET_DIR
from overlayd_wireguard.uapi.protocol import MAX_ANSWER
from overlayd_wireguard.uapi.protocol import DeviceState
from overlayd_wireguard.uapi.protocol import SetRequest
from overlayd_wireguard.uapi.protocol import UapiDeviceError
from overlayd_wireguard.uapi.protocol import UapiPeerError
from overlayd_wireguard.uapi.protocol import UapiProtocolError
from overlayd_wireguard.uapi.protocol import UapiUnavailableError
from overlayd_wireguard.uapi.protocol import encode_set
from overlayd_wireguard.uapi.protocol import fast_get
from overlayd_wireguard.uapi.protocol import parse_answer
from overlayd_wireguard.uapi.protocol import parse_get
from overlayd_wireguard.uapi.protocol import redact
from overlayd_wireguard.uapi.protocol import validate_ifname

__all__ = ["UapiClient", "answer_complete"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- client


def _strerror(err: int) -> str:
    name = errno_mod.errorcode.get(err, f"E{err}")
    return f"{name}: {os.strerror(err)}"


class UapiClient:
    """Synchronous UAPI client: one connection per transaction."""

    def __init__(
        self,
        socket_dir: str | os.PathLike[str] = DEFAULT_SOCKET_DIR,
        timeout: float = 5.0,
    ) -> None:
        self.socket_dir = Path(socket_dir)
        self.timeout = timeout

    def socket_path(self, ifname: str) -> Path:
        """Path of the device's UAPI socket."""
        return self.socket_dir / f"{validate_ifname(ifname)}.sock"

    def alive(self, ifname: str, timeout: float | None = None) -> bool:
        """True if a process answers ``get`` on the device's socket."""
        try:
            self._exchange(ifname, b"get=1\n\n", "get", timeout)
        except (UapiUnavailableError, UapiProtocolError):
            return False
        return True

    def transact(
        self, ifname: str, request: str, op: str, timeout: float | None = None
    ) -> tuple[int, list[tuple[str, str]]]:
        """Send one request and return ``(errno, pairs)`` without judging errno."""
        return parse_answer(self._exchange(ifname, request.encode(), op, timeout))

    def get(self, ifname: str) -> DeviceState:
        """Read the device's whole state."""
        data = self._exchange(ifname, b"get=1\n\n", "get", None)
        fast = fast_get(data)
        if fast is not None:
            return fast
        err, pairs = parse_answer(data)
        if err != 0:
            n = abs(err)
            raise UapiDeviceError(
                f"reading WireGuard device {ifname} over UAPI failed with errno "
                f"{n} ({_strerror(n)})",
                errno=n,
                op="get",
            )
        return parse_get(pairs)

    def set(self, ifname: str, request: SetRequest) -> None:
        """Apply ``request`` in one transaction; raise on any non-zero errno."""
        if request.is_empty():
            return
        text = encode_set(request)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("UAPI set on %s:\n%s", ifname, redact(text))
        err, _ = self.transact(ifname, text, "set")
        if err == 0:
            return
        n = abs(err)
        msg = (
            f"configuring WireGuard device {ifname} over UAPI "
            f"({request.describe()}) failed with errno {n} ({_strerror(n)}); "
            "lines before the failing one may already be applied, so read the "
            "device back and reconcile"
        )
        if n == errno_mod.EADDRINUSE:
            raise UapiDeviceError(
                msg + f"; the listen port {request.listen_port} is already in use",
                errno=n,
                op="set",
            )
        if request.peers:
            raise UapiPeerError(msg, errno=n, op="set")
        raise UapiDeviceError(msg, errno=n, op="set")

    def _exchange(self, ifname: str, request: bytes, op: str, timeout: float | None) -> bytes:
        path = self.socket_path(ifname)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            try:
                sock.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise UapiUnavailableError(
                    f"WireGuard device {ifname} is not running: nothing answers on "
                    f"its UAPI socket {path} ({exc.strerror})",
                    errno=exc.errno or 0,
                    op=op,
                ) from exc
            try:
                sock.sendall(request)
                buf = bytearray()
                while not answer_complete(buf):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > MAX_ANSWER:
                        raise UapiProtocolError(
                            f"the UAPI answer from {ifname} exceeds {MAX_ANSWER} bytes",
                            op=op,
                        )
            except TimeoutError as exc:
                raise UapiDeviceError(
                    f"WireGuard device {ifname} did not answer the UAPI {op} within "
                    f"{sock.gettimeout()} s; the process may be hung",
                    errno=errno_mod.ETIMEDOUT,
                    op=op,
                ) from exc
            except OSError as exc:
                raise UapiDeviceError(
                    f"UAPI {op} on WireGuard device {ifname} failed: {exc}",
                    errno=exc.errno or 0,
                    op=op,
                ) from exc
        finally:
            sock.close()
        if not answer_complete(buf):
            raise UapiProtocolError(
                f"WireGuard device {ifname} closed the UAPI connection before "
                f"answering the {op} request completely",
                op=op,
            )
        return bytes(buf)


def answer_complete(buf: bytearray) -> bool:
    if not buf.endswith(b"\n\n"):
        return False
    # The answer is complete when its last line is errno=N. Look at the tail
    # only: copying a multi-megabyte answer on every recv is quadratic.
    start = buf.rfind(b"\n", 0, len(buf) - 2) + 1
    return buf.startswith(b"errno=", start)
