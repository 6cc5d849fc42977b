"""The ``cni_exec`` op: the daemon runs one CNI invocation for the compiled front end.

``cni/src/overlayd_cni/native/overlayd-cni.c`` forwards a runtime's
invocation (the ``CNI_*`` values and the network configuration) here; the
daemon runs the same flow as the Python plugin on this event loop
(``overlayd_cni.inprocess.execute``), and awaits the plugin's requests
in-process: no worker thread and no socket between the plugin and the
engine. Without the ``overlayd-cni`` distribution the op answers "not
supported". ``CHECK`` is refused: it reads the container's namespace from
inside, which the daemon must not enter.
"""

# ruff: noqa: E402  (the server's own imports follow the POSIX assert)

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import TYPE_CHECKING
from typing import Any
from typing import Final

from overlayd import protocol as p
from overlayd.connections import MAX_ERR_MESSAGE
from overlayd.errors import InvalidRequest
from overlayd.errors import OverlaydError
from overlayd.errors import clip

# POSIX only, as the rest of the server (mypy --platform win32 skips the rest).
assert sys.platform != "win32", "overlayd serve is not supported on Windows yet"

from overlayd.server.handlers import handles

if TYPE_CHECKING:
    from overlayd.server.core import Server

__all__ = ["CNI_NOT_INSTALLED", "ENV_FIELDS", "load_plugin"]

log = logging.getLogger("overlayd.server")

#: The ``CNI_*`` variables a ``cni_exec`` request carries, and its field for each.
ENV_FIELDS: Final = (
    ("CNI_CONTAINERID", "container_id"),
    ("CNI_NETNS", "netns"),
    ("CNI_IFNAME", "ifname"),
    ("CNI_ARGS", "args"),
    ("CNI_PATH", "path"),
)

#: What ``cni_exec`` answers when the plugin's package cannot be imported.
CNI_NOT_INSTALLED = "not supported: the overlayd-cni distribution is not installed"


async def _dispatch_wire(s: Server, request: dict[str, Any]) -> dict[str, Any]:
    """Run one request given as its wire object; the response's wire object.

    The same checks and error messages as a request read from a socket (the
    request is checked as a frame's would be, without a JSON round trip:
    :func:`overlayd.protocol.decode_request`), failures become ``err`` as in
    :meth:`Server._answer <overlayd.server.core.Server._answer>`, and the op
    is counted in the metrics.
    """
    started = time.perf_counter()
    op = str(request.get("op"))
    response: p.AnyResponse
    try:
        decoded = p.decode_request(request)
        if isinstance(decoded, p.CniExecRequest | p.ShutdownRequest | p.HelloRequest):
            raise InvalidRequest(f"{op} cannot be run from inside cni_exec")
        response = await s.dispatch(decoded)
    except OverlaydError as exc:
        response = p.ErrResponse(message=clip(str(exc), MAX_ERR_MESSAGE))
    except Exception as exc:  # the daemon must survive any bug
        log.exception("internal error in %s (run by cni_exec)", op)
        response = p.ErrResponse(
            message=f"internal error in {op}: {type(exc).__name__}: {exc}; "
            "this is a bug in overlayd, please report it with the daemon's log"
        )
    s.engine.stats.request_done(op, response.result, time.perf_counter() - started)
    return response.to_wire()


@handles(p.CniExecRequest)
async def _cni_exec(s: Server, r: p.CniExecRequest) -> p.AnyResponse:
    try:
        from overlayd_cni.inprocess import execute
    except ImportError:
        return p.ErrResponse(message=CNI_NOT_INSTALLED)
    if r.command == "CHECK":
        return p.ErrResponse(
            message="not supported: cni_exec does not run CHECK (it reads the container's "
            "namespace from inside); run the overlayd-cni plugin itself"
        )
    env = {"CNI_COMMAND": r.command}
    for name, field in ENV_FIELDS:
        value = getattr(r, field)
        if value is not None:
            env[name] = value
    code, out, err = await execute(
        env, r.stdin.encode(), lambda request: _dispatch_wire(s, request)
    )
    return p.CniResultResponse(exit_code=code, stdout=out, stderr=err or None)


def load_plugin() -> None:
    """Import the plugin ahead of the first ``cni_exec`` (nothing without ``overlayd-cni``)."""
    with contextlib.suppress(ImportError):
        import overlayd_cni.inprocess  # noqa: F401 - loaded ahead of the first cni_exec
