"""What every part of ``overlayd demo`` shares: its constants, output and interruption.

The demo prints each step as ``==> [i/n, elapsed] what`` (its progress, see
:func:`plan`) and the details indented under it;
a Ctrl-C (SIGINT) or SIGTERM sets a flag the real demo checks between steps,
so that its teardown always runs (:mod:`overlayd_demo.cli`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Final

from overlayd.errors import OverlaydError

__all__ = [
    "DemoFailed",
    "attempt",
    "check_interrupted",
    "clear_interrupted",
    "interrupt",
    "interruptible",
    "plan",
    "say",
    "step",
    "tail",
]

CLUSTER: Final = "10.200.0.0/16"
SLICES: Final = {"a": "10.200.0.0/20", "b": "10.200.16.0/20"}
SERVICES: Final = {"a": "web", "b": "api"}
ZONE: Final = "demo.local."
WG_PORT: Final = 51820
PINGS: Final = 5
PREFIX_ROOT: Final = "ovd-demo-"
MANIFEST: Final = "demo.json"
#: Where wireguard-go puts its UAPI sockets (fixed by wireguard-go itself).
WG_SOCKET_DIR: Final = "/var/run/wireguard"
#: SIGKILL (the module imports on Windows too, where the demo only runs --fake).
HARD_KILL: Final[int] = getattr(signal, "SIGKILL", signal.SIGTERM)


class DemoFailed(OverlaydError):
    """The real demo could not complete a step."""


def say(msg: str, *, step: bool = False) -> None:
    prefix = "==> " if step else "    "
    print(prefix + msg, flush=True)


class _Plan:
    total = 0
    done = 0
    started = 0.0


def plan(total: int) -> None:
    """The demo has ``total`` steps: number them from here on, with the time since now."""
    _Plan.total, _Plan.done, _Plan.started = total, 0, time.monotonic()


def step(msg: str) -> None:
    """Start a step of the real demo (a pending Ctrl-C stops it here at the latest).

    With a :func:`plan`, the line says how far the demo is and how long it has
    run: ``==> [3/9, 1.2s] what``.
    """
    check_interrupted()
    if _Plan.total:
        _Plan.done += 1
        elapsed = time.monotonic() - _Plan.started
        msg = f"[{_Plan.done}/{_Plan.total}, {elapsed:.1f}s] {msg}"
    say(msg, step=True)


_interrupted = threading.Event()


def interrupt(signum: int, frame: FrameType | None) -> None:
    """Signal handler of the real demo: stop at the next check, then tear down.

    It only sets a flag. Raising ``KeyboardInterrupt`` from a signal handler
    lands wherever the main thread happens to be, and inside a
    ``threading.Condition`` (the blocking client waits on one) that corrupts
    the lock: "cannot release un-acquired lock" instead of a teardown. The
    demo's calls are short, so it checks the flag between steps, between
    containers and in its waits, and raises there (:func:`check_interrupted`).
    """
    _interrupted.set()


def check_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if a signal asked the demo to stop."""
    if _interrupted.is_set():
        raise KeyboardInterrupt


def clear_interrupted() -> None:
    """Forget an earlier interruption (a new run starts)."""
    _interrupted.clear()


@contextlib.contextmanager
def interruptible(teardown: Callable[[], object]) -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM handled by :func:`interrupt`, then
    ``teardown()`` with both ignored, and the previous handlers back at the end.

    The teardown must finish: a second Ctrl-C would leave half of it behind.
    """
    clear_interrupted()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            teardown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def attempt(what: str, fn: Callable[[], object]) -> None:
    """Best-effort teardown step: a failure is reported, and the teardown goes on."""
    try:
        fn()
    except (OverlaydError, OSError) as exc:
        say(f"warning: could not {what}: {exc}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
