"""The plugin run by the daemon itself (the ``cni_exec`` op), on its event loop.

The compiled front end (``native/overlayd-cni.c``) forwards an invocation to
the daemon. The daemon runs the same flow as the plugin's process
(:func:`overlayd_cni.main.invocation`), but :func:`execute` awaits each of its
requests on the daemon's own event loop through the ``dispatch`` coroutine
the daemon gives it: no thread, no socket. An ``err`` answer is raised into
the flow as :class:`~overlayd.rawclient.RemoteError`, another result kind as
:class:`~overlayd.rawclient.UnexpectedResponse` and an answer later than the
configuration's ``timeout`` as :class:`~overlayd.rawclient.RequestTimeout`,
as the blocking client raises them, so the flow maps them to the same CNI
errors. ``socket`` in the network configuration only chose the daemon the
front end reached.
"""

from __future__ import annotations

import asyncio
import io

from overlayd.rawclient import RemoteError
from overlayd.rawclient import RequestTimeout
from overlayd.rawclient import UnexpectedResponse
from overlayd_cni.commands import CLIENT_ERRORS
from overlayd_cni.main import invocation

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable
    from collections.abc import Callable
    from typing import Any

    from overlayd_cni.commands import Call

    #: Runs one request (its wire object) and returns the response's wire object.
    Dispatch = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

__all__ = ["execute"]


async def _answer(dispatch: Dispatch, step: Call) -> dict[str, Any]:
    """The answer to one request, or the blocking client's exception for it."""
    op = str(step.request.get("op"))
    try:
        # Not asyncio.wait_for, which would run the request in a task of its
        # own: one more pass of the event loop before the answer, in which
        # other ready work (the event pump woken by an attach) runs first.
        async with asyncio.timeout(step.timeout):
            response = await dispatch(step.request)
    except TimeoutError:
        raise RequestTimeout(
            f"overlayd did not finish {op} within {step.timeout} s; it may still complete"
        ) from None
    result = response.get("result")
    if result == "err":
        raise RemoteError(str(response.get("message", "")), op=op)
    if result not in step.expect:
        raise UnexpectedResponse(
            f"overlayd answered {op} with {result!r}, expected {' or '.join(step.expect)}"
        )
    return response


async def execute(env: dict[str, str], stdin: bytes, dispatch: Dispatch) -> tuple[int, str, str]:
    """One invocation: ``(exit status, stdout, notes)``, as the plugin's process would give."""
    notes = io.StringIO()
    flow = invocation(env, lambda: stdin, notes)
    try:
        step = next(flow)
        while True:
            try:
                answer = await _answer(dispatch, step)
            except CLIENT_ERRORS as exc:
                step = flow.throw(exc)
            else:
                step = flow.send(answer)
    except StopIteration as stop:
        code, out = stop.value
    return code, out, notes.getvalue()
