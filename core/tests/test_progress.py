"""Progress lines of long work: at most one per interval, plain lines off a terminal."""

from __future__ import annotations

import io
import logging

import pytest

from overlayd.progress import Progress
from overlayd.progress import log_progress
from overlayd.progress import print_progress
from overlayd.progress import track


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reports_at_most_once_per_interval_and_a_final_line() -> None:
    clock = _Clock()
    lines: list[tuple[str, bool]] = []
    progress = Progress(
        "reconcile", 3000, lambda line, final: lines.append((line, final)), clock=clock
    )
    for i in range(3000):
        clock.now += 0.001  # 1,000 objects a second
        progress.step()
        assert len(lines) == (i + 1) // 1000
    progress.done()
    assert [final for _, final in lines] == [False, False, False, True]
    assert lines[0][0] == "reconcile: 1000/3000 (1000/s, 1.0s)"
    assert lines[-1][0] == "reconcile: 3000/3000 (1000/s, 3.0s)"


def test_short_work_reports_nothing() -> None:
    lines: list[str] = []
    progress = Progress("quick", 10, lambda line, _: lines.append(line))
    for _ in range(10):
        progress.step()
    progress.done()
    assert lines == []


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    progress = print_progress("attaches", 2, out=out, interval=0.0)
    progress.step()
    progress.step()
    progress.done()
    text = out.getvalue()
    assert "\r" not in text
    assert text.splitlines()[0].startswith("attaches: 1/2 (")
    assert len(text.splitlines()) == 3


def test_log_progress_logs_info(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("overlayd.test.progress")
    with caplog.at_level(logging.INFO, logger=logger.name):
        progress = log_progress("finishing the detach of attachments", 5, logger, interval=0.0)
        progress.step()
    assert caplog.messages == [caplog.messages[0]]
    assert caplog.messages[0].startswith("finishing the detach of attachments: 1/5 (")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_track_yields_every_item_and_rewrites_one_line_on_a_terminal() -> None:
    out = _Terminal()
    items = list(track(range(3), "detaches", 3, out=out, interval=0.0))
    assert items == [0, 1, 2]
    text = out.getvalue()
    # three step lines and the final one, each starting with \r; only the final ends the line
    assert text.count("\r") == 4 and text.count("\n") == 1 and text.endswith("\n")
    assert text.split("\r")[1].startswith("detaches: 1/3 (")
    assert text.split("\r")[-1].startswith("detaches: 3/3 (")
