"""The engine's worker pool: outcomes, its thread cap, cancellation, stop and start again."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import pytest

from overlayd.engine.work import WorkerPool


@contextlib.contextmanager
def started(size: int) -> Iterator[WorkerPool]:
    """A started pool of ``size`` threads, shut down (waiting for them) at the end."""
    pool = WorkerPool(size)
    pool.start()
    try:
        yield pool
    finally:
        pool.shutdown(wait=True)


def thread_name() -> str:
    return threading.current_thread().name


async def test_results_and_exceptions_reach_the_caller() -> None:
    with started(2) as pool:
        assert await pool.run(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ZeroDivisionError):
            await pool.run(lambda: 1 / 0)
        assert pool.in_flight() == []


async def test_calls_run_in_named_threads_never_more_than_the_cap() -> None:
    gate = threading.Event()
    seen: set[str] = set()
    lock = threading.Lock()
    running = 0
    most = 0

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            seen.add(threading.current_thread().name)
        gate.wait(5)
        with lock:
            running -= 1

    with started(3) as pool:
        calls = [asyncio.create_task(pool.run(work)) for _ in range(8)]
        await asyncio.sleep(0.2)
        assert len(pool.in_flight()) == 8
        gate.set()
        await asyncio.gather(*calls)
    assert most == 3
    assert seen <= {"overlayd-hook_0", "overlayd-hook_1", "overlayd-hook_2"}
    assert pool.in_flight() == []


async def test_a_cancelled_caller_returns_only_once_its_worker_has() -> None:
    gate = threading.Event()
    returned = threading.Event()

    def work() -> None:
        gate.wait(5)
        returned.set()

    with started(1) as pool:
        call = asyncio.create_task(pool.run(work))
        await asyncio.sleep(0.05)
        call.cancel()
        await asyncio.sleep(0.05)
        call.cancel()  # a second cancellation is waited out too
        await asyncio.sleep(0.05)
        assert not call.done()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert returned.is_set()
        assert pool.in_flight() == []


async def test_drain_names_what_is_still_running() -> None:
    gate = threading.Event()

    def stuck_hook() -> None:
        gate.wait(5)

    with started(1) as pool:
        call = asyncio.create_task(pool.run(stuck_hook))
        await asyncio.sleep(0.05)
        left = await pool.drain(0.1)
        assert len(left) == 1 and left[0].startswith("stuck_hook (running for")
        gate.set()
        await call
        assert await pool.drain(1.0) == []


async def test_a_stopped_pool_refuses_work_and_a_restart_gets_fresh_threads() -> None:
    pool = WorkerPool(1)
    pool.start()
    gate = threading.Event()
    retired: list[threading.Thread] = []

    def hold() -> bool:
        retired.append(threading.current_thread())
        return gate.wait(5)

    first = asyncio.create_task(pool.run(hold))
    await asyncio.sleep(0.05)
    pool.shutdown(wait=False)  # the thread still runs the first call
    with pytest.raises(RuntimeError, match="not started"):
        await pool.run(lambda: None)
    pool.start()
    # The pool has one thread at most, and the retired one is busy: the new
    # run's call can only run at once on a thread of the new run.
    fresh = await asyncio.wait_for(pool.run(threading.current_thread), 2)
    assert fresh is not retired[0] and retired[0].is_alive()
    gate.set()
    assert await first is True
    pool.shutdown(wait=True)
    retired[0].join(2)
    assert not retired[0].is_alive()  # it ended after its call, not taking more


async def test_the_thread_idle_last_takes_the_next_call() -> None:
    gate = threading.Event()
    with started(3) as pool:
        # Three threads busy at once, then released.
        calls = [asyncio.create_task(pool.run(gate.wait, 5)) for _ in range(3)]
        await asyncio.sleep(0.1)
        gate.set()
        await asyncio.gather(*calls)
        await asyncio.sleep(0.05)
        last = await pool.run(thread_name)
        # Sequential calls keep going to the thread that just ran.
        for _ in range(5):
            assert await pool.run(thread_name) == last


async def test_calls_waiting_for_a_thread_fail_when_the_pool_stops() -> None:
    pool = WorkerPool(1)
    pool.start()
    gate = threading.Event()
    busy = asyncio.create_task(pool.run(gate.wait, 5))
    waiting = asyncio.create_task(pool.run(lambda: "ran"))
    await asyncio.sleep(0.05)
    pool.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="stopped before"):
        await waiting
    gate.set()
    assert await busy is True


async def test_a_worker_hands_a_call_to_another_thread_and_waits_for_it() -> None:
    both = threading.Barrier(2, timeout=5)

    def side() -> str:
        both.wait()  # only returns if the caller is running at the same time
        return thread_name()

    def caller() -> tuple[str, str]:
        handed = pool.hand_off(side)
        assert handed is not None
        both.wait()
        return thread_name(), handed.result()

    with started(2) as pool:
        mine, theirs = await pool.run(caller)
    assert mine != theirs
    assert theirs.startswith("overlayd-hook_")


async def test_a_hand_off_reraises_and_never_queues() -> None:
    def failing() -> None:
        raise ZeroDivisionError

    def caller() -> BaseException | None:
        handed = pool.hand_off(failing)
        assert handed is not None
        try:
            handed.result()
        except ZeroDivisionError as exc:
            return exc
        return None

    with started(2) as pool:
        assert isinstance(await pool.run(caller), ZeroDivisionError)

    def alone() -> object:
        # The only thread is this one: nothing is queued for a thread that
        # could only come free once this call (which would wait) returns.
        return pool.hand_off(thread_name)

    with started(1) as pool:
        assert await pool.run(alone) is None
    assert pool.hand_off(thread_name) is None, "a stopped pool hands nothing off"
