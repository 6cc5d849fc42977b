"""The engine's worker pool: outcomes, its thread cap, cancellation, stop and start again."""

from __future__ import annotations

import asyncio
import threading

import pytest

from overlayd.engine.work import WorkerPool


async def test_results_and_exceptions_reach_the_caller() -> None:
    pool = WorkerPool(2)
    pool.start()
    try:
        assert await pool.run(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ZeroDivisionError):
            await pool.run(lambda: 1 / 0)
        assert pool.in_flight() == []
    finally:
        pool.shutdown(wait=True)


async def test_calls_run_in_named_threads_never_more_than_the_cap() -> None:
    pool = WorkerPool(3)
    pool.start()
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

    try:
        calls = [asyncio.create_task(pool.run(work)) for _ in range(8)]
        await asyncio.sleep(0.2)
        assert len(pool.in_flight()) == 8
        gate.set()
        await asyncio.gather(*calls)
    finally:
        pool.shutdown(wait=True)
    assert most == 3
    assert seen <= {"overlayd-hook_0", "overlayd-hook_1", "overlayd-hook_2"}
    assert pool.in_flight() == []


async def test_a_cancelled_caller_returns_only_once_its_worker_has() -> None:
    pool = WorkerPool(1)
    pool.start()
    gate = threading.Event()
    returned = threading.Event()

    def work() -> None:
        gate.wait(5)
        returned.set()

    try:
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
    finally:
        pool.shutdown(wait=True)


async def test_drain_names_what_is_still_running() -> None:
    pool = WorkerPool(1)
    pool.start()
    gate = threading.Event()

    def stuck_hook() -> None:
        gate.wait(5)

    call = asyncio.create_task(pool.run(stuck_hook))
    await asyncio.sleep(0.05)
    left = await pool.drain(0.1)
    assert len(left) == 1 and left[0].startswith("stuck_hook (running for")
    gate.set()
    await call
    assert await pool.drain(1.0) == []
    pool.shutdown(wait=True)


async def test_a_stopped_pool_refuses_work_and_a_restart_gets_fresh_threads() -> None:
    pool = WorkerPool(1)
    pool.start()
    gate = threading.Event()
    first = asyncio.create_task(pool.run(gate.wait, 5))
    await asyncio.sleep(0.05)
    pool.shutdown(wait=False)  # the thread still runs the first call
    with pytest.raises(RuntimeError, match="not started"):
        await pool.run(lambda: None)
    pool.start()
    # The retired thread is busy: the new run's call goes to a thread of its own.
    assert await asyncio.wait_for(pool.run(threading.current_thread), 2) is not None
    gate.set()
    assert await first is True
    pool.shutdown(wait=True)


async def test_the_thread_idle_last_takes_the_next_call() -> None:
    pool = WorkerPool(3)
    pool.start()
    gate = threading.Event()
    try:
        # Three threads busy at once, then released.
        calls = [asyncio.create_task(pool.run(gate.wait, 5)) for _ in range(3)]
        await asyncio.sleep(0.1)
        gate.set()
        await asyncio.gather(*calls)
        await asyncio.sleep(0.05)
        last = await pool.run(lambda: threading.current_thread().name)
        # Sequential calls keep going to the thread that just ran.
        for _ in range(5):
            assert await pool.run(lambda: threading.current_thread().name) == last
    finally:
        pool.shutdown(wait=True)


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
