"""Progress of long work, reported at most once a second.

Reconcile of thousands of objects logs ``<what>: i/n`` lines through the
daemon's logger; benchmarks print to their terminal, where a line is
rewritten in place (``\\r``), or plain lines when standard output is not a
terminal (CI logs, pipes). Work that ends within the first interval reports
nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from typing import TextIO
from typing import TypeVar

__all__ = ["Progress", "log_progress", "print_progress", "track"]

T = TypeVar("T")


class Progress:
    """Count ``step`` calls towards ``total``; call ``report`` with a line at most
    every ``interval`` seconds, and once at :meth:`done` if anything was reported."""

    def __init__(
        self,
        what: str,
        total: int,
        report: Callable[[str, bool], None],
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.total = total
        self.count = 0
        self.reported = 0
        self._report = report
        self._interval = interval
        self._clock = clock
        self._start = clock()
        self._last = self._start

    def _line(self) -> str:
        elapsed = max(self._clock() - self._start, 1e-9)
        rate = self.count / elapsed
        return f"{self.what}: {self.count}/{self.total} ({rate:.0f}/s, {elapsed:.1f}s)"

    def step(self, n: int = 1) -> None:
        self.count += n
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self.reported += 1
            self._report(self._line(), False)

    def done(self) -> None:
        """The final line, when progress was reported before (long work)."""
        if self.reported:
            self._report(self._line(), True)


def log_progress(
    what: str, total: int, logger: logging.Logger, *, interval: float = 1.0
) -> Progress:
    """Progress as INFO log lines (the daemon)."""
    return Progress(what, total, lambda line, _final: logger.info("%s", line), interval=interval)


def print_progress(
    what: str, total: int, *, out: TextIO | None = None, interval: float = 1.0
) -> Progress:
    """Progress on a terminal (one line rewritten in place) or as plain lines."""
    stream = out if out is not None else sys.stdout
    tty = stream.isatty()

    def report(line: str, final: bool) -> None:
        if tty:
            stream.write("\r" + line + ("\n" if final else ""))
        else:
            stream.write(line + "\n")
        stream.flush()

    return Progress(what, total, report, interval=interval)


def track(
    items: Iterable[T],
    what: str,
    total: int,
    *,
    out: TextIO | None = None,
    interval: float = 1.0,
) -> Iterator[T]:
    """``items``, printing :func:`print_progress` of ``what`` as they are taken."""
    progress = print_progress(what, total, out=out, interval=interval)
    for item in items:
        yield item
        progress.step()
    progress.done()
