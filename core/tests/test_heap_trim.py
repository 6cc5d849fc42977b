"""The engine gives the C heap's free pages back after loading its state."""

from __future__ import annotations

import ctypes
import gc
import sys
from typing import Any

import pytest

from overlayd.engine import base


class _Libc:
    def __init__(self, calls: list[int]) -> None:
        self.calls = calls

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(pad)
        return 1


def test_trim_heap_calls_malloc_trim_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: _Libc(calls))
    base.trim_heap()
    assert calls == [0]


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_trim_heap_is_nothing_elsewhere(monkeypatch: pytest.MonkeyPatch, platform: str) -> None:
    def refuse(name: Any) -> Any:
        raise AssertionError("no libc to trim on this platform")

    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(ctypes, "CDLL", refuse)
    base.trim_heap()


def test_a_libc_without_malloc_trim_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())  # musl: no such symbol
    base.trim_heap()


async def test_the_engine_trims_the_heap_once_after_its_load(
    monkeypatch: pytest.MonkeyPatch, engine_config: Any
) -> None:
    from overlayd.engine import Engine
    from overlayd_fake.driver import FakeDriver

    frozen_at_trim: list[int] = []
    monkeypatch.setattr(base, "trim_heap", lambda: frozen_at_trim.append(gc.get_freeze_count()))
    async with Engine(engine_config, drivers=[FakeDriver()]):
        # Once, after the load was frozen (gc.freeze follows the load).
        assert len(frozen_at_trim) == 1 and frozen_at_trim[0] > 0
    assert len(frozen_at_trim) == 1
