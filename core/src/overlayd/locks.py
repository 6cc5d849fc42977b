"""Per-resource reader/writer locks for the engine.

Resources are strings (``global``, ``service:web``, ``handle:linux_pid:42``).
An operation takes every lock it needs at once through :meth:`LockTable.hold`,
which acquires them in one canonical order (by rank of the resource kind, then
name), so two operations can never wait on each other in a cycle. Entries are
dropped when nobody holds or waits for them, so the table does not grow with
the number of handles ever seen.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["LockTable", "RWLock"]

_RANK = {"global": 0, "service": 1, "device": 2, "handle": 3, "dns": 4, "portmap": 5}


class RWLock:
    """An asyncio reader/writer lock; writers are not starved by a stream of readers."""

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._cond = asyncio.Condition()
        self.users = 0

    async def acquire(self, exclusive: bool) -> None:
        async with self._cond:
            if exclusive:
                self._writers_waiting += 1
                try:
                    await self._cond.wait_for(lambda: not self._writer and self._readers == 0)
                finally:
                    self._writers_waiting -= 1
                self._writer = True
            else:
                await self._cond.wait_for(lambda: not self._writer and self._writers_waiting == 0)
                self._readers += 1

    async def release(self, exclusive: bool) -> None:
        async with self._cond:
            if exclusive:
                self._writer = False
            else:
                self._readers -= 1
            self._cond.notify_all()


class LockTable:
    """Named reader/writer locks, created on demand and freed when unused."""

    def __init__(self) -> None:
        self._locks: dict[str, RWLock] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @staticmethod
    def _order(item: tuple[str, bool]) -> tuple[int, str]:
        name = item[0]
        return _RANK.get(name.partition(":")[0], 99), name

    @contextlib.asynccontextmanager
    async def hold(self, *wanted: tuple[str, bool]) -> AsyncIterator[None]:
        """Hold every ``(name, exclusive)`` lock for the body, acquired in canonical order."""
        merged: dict[str, bool] = {}
        for name, exclusive in wanted:
            merged[name] = merged.get(name, False) or exclusive
        items = sorted(merged.items(), key=self._order)
        taken: list[tuple[RWLock, str, bool]] = []
        try:
            for name, exclusive in items:
                lock = self._locks.get(name)
                if lock is None:
                    lock = self._locks[name] = RWLock()
                lock.users += 1
                try:
                    await lock.acquire(exclusive)
                except BaseException:
                    self._drop(lock, name)
                    raise
                taken.append((lock, name, exclusive))
            yield
        finally:
            for lock, name, exclusive in reversed(taken):
                await lock.release(exclusive)
                self._drop(lock, name)

    def _drop(self, lock: RWLock, name: str) -> None:
        lock.users -= 1
        if lock.users == 0 and self._locks.get(name) is lock:
            del self._locks[name]
