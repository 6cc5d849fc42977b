"""A blocking overlayd client that imports only the standard library.

:class:`RawClient` sends one request at a time as a plain ``dict`` (the
``request`` object of a frame, such as ``{"op": "status"}``) and returns the
``response`` object as a ``dict``. Importing it costs ``json``, ``struct`` and the
C socket module: no pydantic, no asyncio. It is meant for processes that make a
call or two and exit, such as the CNI plugin, which a container runtime starts
once per container: importing the typed :mod:`overlayd.client` (pydantic
models, asyncio) takes about half a second on a small machine, this module a
few milliseconds.

It checks the framing (docs/protocol.rst, "Framing") and nothing else: the
daemon validates every request and answers ``err`` with a sentence naming
the problem, which :meth:`RawClient.call` raises as :class:`RemoteError`.
Events the daemon pushes on the connection are skipped. Unix sockets only.

::

    with RawClient("/var/run/zlayer-overlayd.sock", timeout=10) as client:
        status = client.call({"op": "status"}, expect=("status",))

The exceptions are the ones :mod:`overlayd.client` raises (it re-exports them).
"""

from __future__ import annotations

# The C module under ``socket``: socket.py's enum conversion of every constant
# and its ``selectors`` import were the largest items of the CNI plugin's
# imports (docs/design-notes.rst, "Measured choices in core"). ``_socket.socket``
# has all this client uses (connect, sendall, recv_into, settimeout, close).
import _socket
import abc
import json
import struct
import sys
import time

from overlayd.errors import NotSupported
from overlayd.errors import OverlaydError

# ``typing`` is not imported at run time: a CNI plugin pays for every import.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any
    from typing import Final
    from typing import Self


__all__ = [
    "DEFAULT_SOCKET",
    "MAX_FRAME",
    "BlockingClient",
    "ClientClosed",
    "ConnectError",
    "ConnectionLost",
    "RawClient",
    "RemoteError",
    "RequestTimeout",
    "UnexpectedResponse",
]

#: The daemon's default socket (the same as :data:`overlayd.transport.DEFAULT_SOCKET`).
DEFAULT_SOCKET: Final = "/var/run/zlayer-overlayd.sock"
#: Largest frame body (the same as :data:`overlayd.protocol.MAX_FRAME`).
MAX_FRAME: Final = 8 * 1024 * 1024

_HEADER: Final = struct.Struct("<I")
#: Connect errors that mean "the daemon is not there yet": retried with backoff.
_RETRYABLE: Final = (FileNotFoundError, ConnectionRefusedError, BlockingIOError)


class RemoteError(OverlaydError):
    """The daemon answered ``err``; ``str(exc)`` is its message."""

    code = "remote"

    def __init__(
        self, message: str, *, op: str | None = None, request_id: int | None = None
    ) -> None:
        self.message = message
        self.op = op
        self.request_id = request_id
        super().__init__(message)


class ConnectError(OverlaydError):
    """The daemon's socket could not be reached, even after retrying."""

    code = "connect"


class ConnectionLost(OverlaydError):
    """The connection broke; a call in flight may or may not have taken effect."""

    code = "connection_lost"


class ClientClosed(OverlaydError):
    """The client was closed; create a new one."""

    code = "closed"


class RequestTimeout(OverlaydError, TimeoutError):
    """The daemon did not answer within the call's timeout."""

    code = "timeout"


class UnexpectedResponse(OverlaydError):
    """The daemon answered with a result kind the op never returns."""

    code = "unexpected_response"


class BlockingClient(abc.ABC):
    """A blocking client used as a context manager: ``with`` connects it and closes it.

    The base of :class:`RawClient` and of :class:`overlayd.client.Client`.
    """

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection now (calls do it lazily)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection (idempotent); later calls raise :class:`ClientClosed`."""

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawClient(BlockingClient):
    """Blocking client of the overlayd IPC protocol over a Unix socket, dicts in and out.

    :param address: The daemon's Unix socket path.
    :param timeout: Seconds for connecting and for each call's answer (``None``: forever).
    :param connect_attempts: Connection attempts while the socket is missing or
        refuses (a daemon starting up) before :class:`ConnectError`.
    :param backoff: First retry delay in seconds; doubles after each attempt.
    """

    def __init__(
        self,
        address: str = DEFAULT_SOCKET,
        *,
        timeout: float | None = 30.0,
        connect_attempts: int = 1,
        backoff: float = 0.05,
    ) -> None:
        if connect_attempts < 1:
            raise ValueError("connect_attempts must be at least 1")
        self.address = address
        self.timeout = timeout
        self.connect_attempts = connect_attempts
        self.backoff = backoff
        self._sock: _socket.socket | None = None
        self._next_id = 1
        self._closed = False

    def connect(self) -> None:
        """Open the connection now (:meth:`call` does it lazily)."""
        if self._closed:
            raise ClientClosed("the overlayd client was closed; create a new one")
        if self._sock is not None:
            return
        delay = self.backoff
        for attempt in range(1, self.connect_attempts + 1):
            sock = _unix_socket()
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.address)
            except _RETRYABLE as exc:
                sock.close()
                if attempt == self.connect_attempts:
                    raise ConnectError(
                        f"cannot connect to overlayd at {self.address}: {exc.strerror or exc}; "
                        "is the daemon running?"
                    ) from exc
                time.sleep(delay)
                delay *= 2
            except OSError as exc:
                sock.close()
                raise ConnectError(
                    f"cannot connect to overlayd at {self.address}: {exc.strerror or exc}; "
                    "check the socket path and that this user may open it"
                ) from exc
            else:
                self._sock = sock
                return

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise :class:`ClientClosed`."""
        self._closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def call(
        self, request: dict[str, Any], *, expect: tuple[str, ...] | None = None
    ) -> dict[str, Any]:
        """Send ``request`` (with its ``op``) and return the response object.

        :param expect: The ``result`` kinds accepted; another one raises
            :class:`UnexpectedResponse`.
        :raises RemoteError: the daemon answered ``err``.
        :raises RequestTimeout: no answer within the timeout (it may still complete).
        :raises ConnectionLost: the connection broke before the answer arrived.
        :raises ConnectError: the daemon could not be reached.
        """
        self.connect()
        sock = self._sock
        assert sock is not None
        request_id = self._next_id
        self._next_id += 1
        op = str(request.get("op"))
        frame = {"frame": "request", "id": request_id, "request": request}
        body = json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode()
        if len(body) > MAX_FRAME:
            raise ValueError(f"the {op} request is {len(body)} bytes, over the frame limit")
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            sock.sendall(_HEADER.pack(len(body)) + body)
            while True:
                answer = json.loads(self._read_frame(sock, deadline))
                if answer.get("frame") == "response" and answer.get("id") == request_id:
                    break
        except TimeoutError:
            self._drop()
            raise RequestTimeout(
                f"overlayd did not answer {op} (request {request_id}) within "
                f"{self.timeout} s; it may still complete"
            ) from None
        except (OSError, ValueError) as exc:
            self._drop()
            raise ConnectionLost(
                f"the connection to overlayd at {self.address} broke: {exc}"
            ) from exc
        response = answer.get("response")
        if not isinstance(response, dict):
            raise UnexpectedResponse(f"overlayd answered {op} with a frame without a response")
        result = response.get("result")
        if result == "err":
            raise RemoteError(str(response.get("message", "")), op=op, request_id=request_id)
        if expect is not None and result not in expect:
            raise UnexpectedResponse(
                f"overlayd answered {op} with {result!r}, expected {' or '.join(expect)}; "
                "client and daemon disagree on the protocol"
            )
        return response

    def _drop(self) -> None:
        # After a timeout or a broken stream the position in the stream is
        # unknown: the next call opens a new connection.
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @staticmethod
    def _read_frame(sock: _socket.socket, deadline: float | None) -> bytes:
        (length,) = _HEADER.unpack(_read_exact(sock, _HEADER.size, deadline))
        if length > MAX_FRAME:
            raise ValueError(f"frame length {length} exceeds the {MAX_FRAME}-byte limit")
        return _read_exact(sock, length, deadline)


def _unix_socket() -> _socket.socket:
    if sys.platform == "win32":
        raise NotSupported("RawClient speaks to Unix sockets only; use overlayd.client")
    else:
        return _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)


def _read_exact(sock: _socket.socket, n: int, deadline: float | None) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
        count = sock.recv_into(view[got:])
        if count == 0:
            raise ConnectionResetError(f"the daemon closed the connection ({got} of {n} bytes)")
        got += count
    return bytes(buf)
