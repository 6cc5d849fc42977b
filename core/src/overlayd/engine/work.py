"""Blocking work off the event loop, rollback, and a bounded drain at stop.

The engine runs every hook in a worker thread (:class:`WorkerPool`). Two rules
keep that safe:

* **A cancelled request keeps its locks until its worker finishes.** A thread
  cannot be interrupted, so cancelling the coroutine that waits for it would
  only release the caller's locks while the hook still runs, and a second
  request would run a hook under the same lock at the same time.
  :meth:`WorkerPool.run` therefore waits for the worker even when it is
  cancelled (further cancellations included), then re-raises the cancellation.
* **Stopping drains.** :meth:`WorkerPool.drain` waits for the work in flight,
  at most a bound, and names what is still running when the bound is reached,
  so the drivers are not shut down and the store not closed under a running
  hook without a word.

:class:`Undo` collects the inverse of each completed step of an operation; when
a later step fails it runs them in reverse and attaches the ones that failed to
the error raised (:attr:`overlayd.errors.OverlaydError.rollback_failures`), so
the client's ``err`` message says what may have been left behind.

:class:`Tx` gathers the durable records an operation writes, and the
in-memory changes to make once they are written: the engine commits it in one
store transaction (:meth:`overlayd.engine.base.EngineBase._commit`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import TypeVar

from pydantic import BaseModel

from overlayd.errors import OverlaydError

__all__ = ["InFlight", "Tx", "Undo", "WorkerPool"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Undo:
    """Inverses of completed steps; run in reverse when a later step fails."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, fn: Callable[[], object]) -> None:
        self._steps.append((what, fn))

    def run(self) -> list[str]:
        """Run every inverse (newest first); returns ``"<step>: <error>"`` for each failure."""
        failures: list[str] = []
        for what, fn in reversed(self._steps):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - rollback must try every step
                log.error("rollback step %r failed: %s", what, exc)
                failures.append(f"{what}: {exc}")
        self._steps.clear()
        return failures

    def rollback(self, exc: BaseException) -> None:
        """Undo everything done so far and attach what could not be undone to ``exc``."""
        failures = self.run()
        if not failures:
            return
        if isinstance(exc, OverlaydError):
            exc.rollback_failures = (*exc.rollback_failures, *failures)
        else:
            exc.add_note("rolling back also failed: " + "; ".join(failures))


@dataclass
class Tx:
    """Records to write in one store transaction, and the in-memory changes to apply after."""

    puts: dict[tuple[str, str], Any] = field(default_factory=dict)
    deletes: set[tuple[str, str]] = field(default_factory=set)
    after: list[Callable[[], object]] = field(default_factory=list)

    def put(self, kind: str, key: str, value: BaseModel | dict[str, Any]) -> None:
        data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        self.deletes.discard((kind, key))
        self.puts[(kind, key)] = data

    def delete(self, kind: str, key: str) -> None:
        self.puts.pop((kind, key), None)
        self.deletes.add((kind, key))


@dataclass(frozen=True)
class InFlight:
    """One piece of work running in a worker thread."""

    what: str
    started: float

    def describe(self, now: float) -> str:
        return f"{self.what} (running for {now - self.started:.1f}s)"


class WorkerPool:
    """A thread pool for blocking hook calls, tracking what is in flight."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: dict[asyncio.Future[Any], InFlight] = {}

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._workers, thread_name_prefix="overlayd-hook"
            )

    def in_flight(self) -> list[InFlight]:
        return [job for work, job in self._inflight.items() if not work.done()]

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a worker; if cancelled, wait for the worker first."""
        loop = asyncio.get_running_loop()
        work: asyncio.Future[T] = loop.run_in_executor(self._executor, functools.partial(fn, *args))
        job = InFlight(getattr(fn, "__name__", repr(fn)), time.monotonic())
        self._inflight[work] = job
        work.add_done_callback(self._forget)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            log.info("%s was cancelled; its locks are held until its worker finishes", job.what)
            while not work.done():
                try:
                    await asyncio.wait({work})
                except asyncio.CancelledError:
                    continue
            if not work.cancelled() and work.exception() is not None:
                log.warning("cancelled %s then failed: %s", job.what, work.exception())
            raise

    def _forget(self, work: asyncio.Future[Any]) -> None:
        self._inflight.pop(work, None)

    async def drain(self, bound: float) -> list[str]:
        """Wait up to ``bound`` seconds for the work in flight; describe what is left."""
        pending = [work for work in self._inflight if not work.done()]
        if pending:
            log.info("waiting up to %.0fs for %d operation(s) in flight", bound, len(pending))
            await asyncio.wait(pending, timeout=bound)
        now = time.monotonic()
        return [job.describe(now) for job in self.in_flight()]

    def shutdown(self, *, wait: bool) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)
            self._executor = None
