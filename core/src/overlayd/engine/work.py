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
import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import TypeVar
from typing import cast

from pydantic import BaseModel

from overlayd.errors import OverlaydError

__all__ = ["Handoff", "InFlight", "Tx", "Undo", "WorkerPool"]

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


class _Job:
    """One call handed to a worker, and how its caller learns the outcome."""

    __slots__ = ("args", "done", "fn", "future", "info", "loop", "waiters")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        info: InFlight,
    ) -> None:
        self.loop = loop
        self.fn = fn
        self.args = args
        self.info = info
        #: What the caller awaits (cancelled with the caller).
        self.future: asyncio.Future[Any] = loop.create_future()
        #: The worker has returned (set on the event loop).
        self.done = False
        #: Futures of those waiting for the worker itself (a cancelled caller, a drain).
        self.waiters: list[asyncio.Future[None]] = []

    def deliver(self, result: Any, error: BaseException | None) -> None:
        """Hand the worker's outcome to the event loop (called on the worker's thread)."""
        # A closed loop (RuntimeError) has no one waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.finish, result, error)

    def finish(self, result: Any, error: BaseException | None) -> None:
        """The worker's outcome, on the event loop's thread."""
        self.done = True
        if not self.future.done():
            if error is None:
                self.future.set_result(result)
            else:
                self.future.set_exception(error)
        elif error is not None:
            log.warning("cancelled %s then failed: %s", self.info.what, error)
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    def finished(self) -> asyncio.Future[None]:
        """A future done once the worker has returned, whatever the caller did."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        if self.done:
            waiter.set_result(None)
        else:
            self.waiters.append(waiter)
        return waiter


class Handoff:
    """A call a worker hands to another worker, and the wait for its outcome.

    :meth:`WorkerPool.hand_off` makes one; :meth:`result` blocks the calling
    thread (a worker, never the event loop) until the call has returned.
    """

    __slots__ = ("_done", "_error", "_result", "args", "fn")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def deliver(self, result: Any, error: BaseException | None) -> None:
        self._result, self._error = result, error
        self._done.set()

    def result(self) -> Any:
        """The call's return value; re-raises what it raised."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result


class _Worker:
    """One thread of a crew and the slot its next call is handed in."""

    __slots__ = ("slot", "thread")

    def __init__(self) -> None:
        self.slot: queue.SimpleQueue[_Job | Handoff | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None


class _Crew:
    """The threads of one start of a :class:`WorkerPool`.

    Idle threads wait on a stack, and a call goes to the one that went idle
    last: a thread that ran a moment ago starts again far sooner than one
    that has slept for seconds, so the threads that are needed stay the
    ones that run. Calls that find every thread busy wait in a backlog that
    a thread takes before it goes idle.

    A stop retires the crew: its threads end after their current call, the
    calls still in the backlog are failed, and a later start gets a new
    crew, so a thread still finishing a call of the previous run never takes
    a call of the next one.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.workers: list[_Worker] = []
        self.idle: list[_Worker] = []
        self.backlog: collections.deque[_Job] = collections.deque()
        self.lock = threading.Lock()
        self.retired = False

    def submit(self, job: _Job) -> None:
        with self.lock:
            if self.idle:
                self.idle.pop().slot.put(job)
                return
            if len(self.workers) >= self.size:
                self.backlog.append(job)  # all busy: the next thread free takes it
                return
            thread = self._hire(job)
        thread.start()

    def try_submit(self, job: Handoff) -> bool:
        """Start ``job`` on a free thread now; ``False`` (nothing done) if every thread is busy.

        Never queues: the caller is itself a worker, and a backlog of calls
        that workers wait for could hold every thread.
        """
        with self.lock:
            if self.retired:
                return False
            if self.idle:
                self.idle.pop().slot.put(job)
                return True
            if len(self.workers) >= self.size:
                return False
            thread = self._hire(job)
        thread.start()
        return True

    def _hire(self, job: _Job | Handoff) -> threading.Thread:
        """A new worker whose first call is ``job``; its thread is for the caller to start.

        Called with :attr:`lock` held.
        """
        worker = _Worker()
        worker.thread = threading.Thread(
            target=self._work,
            args=(worker, job),
            name=f"overlayd-hook_{len(self.workers)}",
            daemon=True,
        )
        self.workers.append(worker)
        return worker.thread

    def _work(self, worker: _Worker, job: _Job | Handoff | None) -> None:
        get = worker.slot.get
        while job is not None:
            try:
                result, error = job.fn(*job.args), None
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                result, error = None, exc
            follow: _Job | Handoff | None = None
            with self.lock:
                stop = self.retired
                if not stop:
                    if self.backlog:
                        follow = self.backlog.popleft()
                    else:
                        # Idle before the outcome is handed over: a call the
                        # caller makes once it has it finds this thread on top.
                        self.idle.append(worker)
            job.deliver(result, error)
            del result, error
            if stop:
                return
            job = follow if follow is not None else get()

    def retire(self, *, wait: bool) -> None:
        with self.lock:
            self.retired = True
            backlog, self.backlog = list(self.backlog), collections.deque()
            workers = list(self.workers)
            self.idle.clear()
        for job in backlog:
            job.deliver(None, RuntimeError(f"the engine stopped before {job.info.what} ran"))
        for worker in workers:
            worker.slot.put(None)
        if wait:
            for worker in workers:
                if worker.thread is not None:
                    worker.thread.join()


class WorkerPool:
    """Threads for blocking hook calls, tracking what is in flight.

    Not a :class:`~concurrent.futures.ThreadPoolExecutor`: ``run_in_executor``
    wraps its future in an asyncio one and :meth:`run` shielded that again,
    so every call crossed three futures and more passes of the event loop.
    Here a worker takes the call from a queue and hands its outcome straight
    to the caller's future (``docs/design-notes.rst``, "CNI plugin
    start-up"). Threads start when a call finds none idle, up to
    ``workers``, and are named ``overlayd-hook_<n>``.
    """

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._crew: _Crew | None = None
        self._inflight: set[_Job] = set()

    def start(self) -> None:
        if self._crew is None:
            self._crew = _Crew(self._workers)

    def hand_off(self, fn: Callable[..., Any], *args: Any) -> Handoff | None:
        """Start ``fn(*args)`` on another worker now, from a worker thread.

        For a call that can overlap the caller's own blocking work (a
        commit while the kernel creates a veth). Returns ``None``, having
        started nothing, when no thread is free and none may be added, or
        the pool is stopped: the caller then makes the call itself. The
        caller must wait for :meth:`Handoff.result` before it returns, so
        the hand-off is part of the call that made it (the drain waits for
        that call, and with it for this one).
        """
        crew = self._crew
        if crew is None:
            return None
        job = Handoff(fn, args)
        return job if crew.try_submit(job) else None

    def in_flight(self) -> list[InFlight]:
        return [job.info for job in self._inflight if not job.done]

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a worker; if cancelled, wait for the worker first."""
        crew = self._crew
        if crew is None:
            raise RuntimeError("the worker pool is not started (or was shut down)")
        loop = asyncio.get_running_loop()
        job = _Job(loop, fn, args, InFlight(getattr(fn, "__name__", repr(fn)), time.monotonic()))
        self._inflight.add(job)
        crew.submit(job)
        try:
            return cast(T, await job.future)
        except asyncio.CancelledError:
            if not job.done:
                log.info(
                    "%s was cancelled; its locks are held until its worker finishes", job.info.what
                )
                finished = job.finished()
                while not finished.done():
                    try:
                        await asyncio.wait({finished})
                    except asyncio.CancelledError:
                        continue
            raise
        finally:
            self._inflight.discard(job)

    async def drain(self, bound: float) -> list[str]:
        """Wait up to ``bound`` seconds for the work in flight; describe what is left."""
        pending = [job.finished() for job in self._inflight if not job.done]
        if pending:
            log.info("waiting up to %.0fs for %d operation(s) in flight", bound, len(pending))
            await asyncio.wait(pending, timeout=bound)
        now = time.monotonic()
        return [info.describe(now) for info in self.in_flight()]

    def shutdown(self, *, wait: bool) -> None:
        """Retire the threads; with ``wait``, once they have finished what they run."""
        crew, self._crew = self._crew, None
        if crew is not None:
            crew.retire(wait=wait)
