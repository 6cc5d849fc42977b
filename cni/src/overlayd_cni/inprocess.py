"""The plugin's client when the daemon itself runs the plugin (the ``cni_exec`` op).

The compiled front end (``native/overlayd-cni.c``) forwards an invocation to
the daemon, which runs :func:`overlayd_cni.main.execute` in a worker thread.
The operations then ask the daemon they are running in: :class:`InProcessClient`
has :class:`~overlayd.rawclient.RawClient`'s interface and failures (``err``
is :class:`~overlayd.rawclient.RemoteError`, a late answer
:class:`~overlayd.rawclient.RequestTimeout`, another result kind
:class:`~overlayd.rawclient.UnexpectedResponse`), but hands each request to
a function the daemon gives it, which runs the request on the daemon's event
loop and waits for the answer. No socket is involved, so ``socket`` in the
network configuration only chose the daemon the front end reached.
"""

from __future__ import annotations

from overlayd.rawclient import RawClient
from overlayd.rawclient import RemoteError
from overlayd.rawclient import RequestTimeout
from overlayd.rawclient import UnexpectedResponse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from overlayd_cni.invocation import Dispatch


class InProcessClient(RawClient):
    """A :class:`RawClient` whose requests run in the daemon that runs the plugin."""

    def __init__(self, dispatch: Dispatch, *, timeout: float | None) -> None:
        super().__init__("(in-process)", timeout=timeout)
        self._dispatch = dispatch

    def connect(self) -> None:
        """Nothing to open."""

    def close(self) -> None:
        """Nothing to close."""

    def call(
        self, request: dict[str, Any], *, expect: tuple[str, ...] | None = None
    ) -> dict[str, Any]:
        op = str(request.get("op"))
        try:
            response = self._dispatch(request, self.timeout)
        except TimeoutError:
            raise RequestTimeout(
                f"overlayd did not finish {op} within {self.timeout} s; it may still complete"
            ) from None
        result = response.get("result")
        if result == "err":
            raise RemoteError(str(response.get("message", "")), op=op)
        if expect is not None and result not in expect:
            raise UnexpectedResponse(
                f"overlayd answered {op} with {result!r}, expected {' or '.join(expect)}"
            )
        return response
