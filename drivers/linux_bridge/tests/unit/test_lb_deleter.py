"""The background deleter batches deferred link deletions (no kernel needed)."""

from __future__ import annotations

import errno
import threading
from typing import Any

import pytest
from pyroute2 import NetlinkError

from overlayd.errors import DeviceError
from overlayd_linux_bridge.deleter import DeferredDeleter


class RecordingDeletes:
    """Stands in for the adapter's ``_delete_group``: records each group deleted."""

    def __init__(self, log: list[dict[str, Any]], fail: list[BaseException]) -> None:
        self.log = log
        self.fail = fail

    def __call__(self, group: int) -> None:
        if self.fail:
            raise self.fail.pop(0)
        self.log.append({"command": "del", "index": 0, "group": group})


def _deleter(
    log: list[dict[str, Any]],
    fail: list[BaseException] | None = None,
    linger: float = 0.05,
) -> DeferredDeleter:
    failures = fail if fail is not None else []
    return DeferredDeleter(RecordingDeletes(log, failures), 0x1234, linger)


def test_requests_accumulated_during_linger_share_one_batch() -> None:
    log: list[dict[str, Any]] = []
    deleter = _deleter(log, linger=0.2)
    for _ in range(5):
        deleter.schedule(1)
    deleter.flush(5.0)
    assert log == [{"command": "del", "index": 0, "group": 0x1234}]
    assert deleter.batches == 1
    deleter.close(5.0)


def test_concurrent_schedulers_are_all_served() -> None:
    log: list[dict[str, Any]] = []
    deleter = _deleter(log, linger=0.01)
    threads = [threading.Thread(target=deleter.schedule, args=(1,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deleter.flush(5.0)
    assert 1 <= len(log) <= 8
    deleter.close(5.0)


def test_enodev_means_nothing_left() -> None:
    log: list[dict[str, Any]] = []
    deleter = _deleter(log, fail=[NetlinkError(errno.ENODEV)], linger=0.0)
    deleter.schedule(1)
    deleter.flush(5.0)  # tolerated: does not raise
    assert deleter.batches == 1
    deleter.close(5.0)


def test_failure_is_reported_by_flush_then_cleared() -> None:
    log: list[dict[str, Any]] = []
    deleter = _deleter(log, fail=[NetlinkError(errno.EPERM)], linger=0.0)
    deleter.schedule(1)
    with pytest.raises(DeviceError, match="Operation not permitted"):
        deleter.flush(5.0)
    deleter.flush(5.0)
    deleter.close(5.0)


def test_schedule_after_close_is_refused() -> None:
    deleter = _deleter([])
    deleter.close(1.0)
    with pytest.raises(DeviceError, match="closed"):
        deleter.schedule(1)
