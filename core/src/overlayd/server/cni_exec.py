"""The ``cni_exec`` op: the daemon runs one CNI invocation for the compiled front end.

``cni/src/overlayd_cni/native/overlayd-cni.c`` forwards a runtime's
invocation (the ``CNI_*`` values and the network configuration) here; the
daemon runs the same code as the Python plugin (``overlayd_cni.main.execute``)
in a worker thread, and the plugin's requests come back to this event loop
in-process (``overlayd_cni.inprocess``). Without the ``overlayd-cni``
distribution the op answers "not supported". ``CHECK`` is refused: it reads
the container's namespace from inside, which a pooled thread must not enter.
"""

# ruff: noqa: E402  (the server's own imports follow the POSIX assert)

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import sys
import threading
import time
from typing import TYPE_CHECKING
from typing import Any

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

__all__ = ["CNI_NOT_INSTALLED", "CNI_WORKERS", "load_plugin", "shutdown_pool"]

log = logging.getLogger("overlayd.server")

#: What ``cni_exec`` answers when the plugin's package cannot be imported.
CNI_NOT_INSTALLED = "not supported: the overlayd-cni distribution is not installed"
#: Worker threads running CNI invocations at once. Their own pool: a worker
#: waits for requests it hands back to the event loop, so it must never take
#: a thread the loop itself may need (the default executor decodes large frames).
CNI_WORKERS = 4
_cni_pool: concurrent.futures.ThreadPoolExecutor | None = None
_cni_pool_lock = threading.Lock()


def _cni_executor() -> concurrent.futures.ThreadPoolExecutor:
    global _cni_pool
    with _cni_pool_lock:
        if _cni_pool is None:
            _cni_pool = concurrent.futures.ThreadPoolExecutor(
                CNI_WORKERS, thread_name_prefix="overlayd-cni"
            )
        return _cni_pool


async def _dispatch_wire(s: Server, request: dict[str, Any]) -> dict[str, Any]:
    """Run one request given as its wire object; the response's wire object.

    The same checks and error messages as a request read from a socket: the
    request is decoded as a frame, failures become ``err`` as in
    :meth:`Server._answer <overlayd.server.core.Server._answer>`, and the op is
    counted in the metrics.
    """
    started = time.perf_counter()
    op = str(request.get("op"))
    response: p.AnyResponse
    try:
        frame = p.decode_frame(
            json.dumps({"frame": "request", "id": 0, "request": request}).encode()
        )
        assert isinstance(frame, p.RequestFrame)
        if isinstance(frame.request, p.CniExecRequest | p.ShutdownRequest | p.HelloRequest):
            raise InvalidRequest(f"{op} cannot be run from inside cni_exec")
        response = await s.dispatch(frame.request)
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
        from overlayd_cni.main import execute
    except ImportError:
        return p.ErrResponse(message=CNI_NOT_INSTALLED)
    if r.command == "CHECK":
        return p.ErrResponse(
            message="not supported: cni_exec does not run CHECK (it reads the container's "
            "namespace from inside); run the overlayd-cni plugin itself"
        )
    loop = asyncio.get_running_loop()

    def call(request: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        # Runs in the worker thread: hand the request to the event loop and wait.
        future = asyncio.run_coroutine_threadsafe(_dispatch_wire(s, request), loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    env = {"CNI_COMMAND": r.command}
    for name, value in (
        ("CNI_CONTAINERID", r.container_id),
        ("CNI_NETNS", r.netns),
        ("CNI_IFNAME", r.ifname),
        ("CNI_ARGS", r.args),
        ("CNI_PATH", r.path),
    ):
        if value is not None:
            env[name] = value
    code, out, err = await loop.run_in_executor(
        _cni_executor(), execute, env, r.stdin.encode(), call
    )
    return p.CniResultResponse(exit_code=code, stdout=out, stderr=err or None)


def load_plugin() -> None:
    """Import the plugin ahead of the first ``cni_exec`` (nothing without ``overlayd-cni``)."""
    with contextlib.suppress(ImportError):
        import overlayd_cni.main  # noqa: F401 - loaded ahead of the first cni_exec


def shutdown_pool() -> None:
    """Stop the worker threads (the server's close); a later op starts them again."""
    global _cni_pool
    with _cni_pool_lock:
        pool, _cni_pool = _cni_pool, None
    if pool is not None:
        pool.shutdown(wait=False)
