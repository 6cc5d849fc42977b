"""Batched deletion of tombstoned links in a background thread.

Deleting a veth costs the kernel 15-25 ms, per ``RTM_DELLINK`` rather than
per link (see :mod:`overlayd_linux_bridge.netlink`, "Deferred deletion").
:class:`DeferredDeleter` deletes the whole tombstone link group with one
request whenever work has accumulated, and reports failures to whoever waits
for it (:meth:`DeferredDeleter.flush`, :meth:`DeferredDeleter.wait`).

Batches are numbered. :meth:`DeferredDeleter.schedule` returns the number of
the batch that will take the links just queued, and :meth:`DeferredDeleter.wait`
blocks until that batch is done: a caller that must see its links gone (a
detach: the container end of a veth disappears only with its host end) waits
for exactly its own batch, and callers arriving while a batch is in the
kernel share the next one (group commit). While someone waits, the thread
does not linger.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from overlayd.errors import DeviceError
from overlayd_linux.netlink import NETLINK_ERRORS
from overlayd_linux.netlink import error_code
from overlayd_linux.netlink import strerror

__all__ = ["DeferredDeleter"]

log = logging.getLogger(__name__)


class DeferredDeleter:
    """Background thread deleting the tombstone group whenever work accumulates."""

    def __init__(self, delete_group: Callable[[int], Any], group: int, linger: float) -> None:
        #: Sends one ``RTM_DELLINK`` for every link of a group (raising the
        #: kernel's error, ``ENODEV`` for an empty group).
        self._delete_links_of = delete_group
        self._group = group
        self._linger = linger
        self._cond = threading.Condition()
        self._pending = 0
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        #: Last failure of a batch, reported by :meth:`flush` (then cleared).
        self.last_error: BaseException | None = None
        #: Number of ``RTM_DELLINK`` batches sent, for tests and metrics.
        self.batches = 0
        #: Batches taken from the queue so far; the next one is ``_taken + 1``.
        self._taken = 0
        #: Failures of recent batches, by batch number, for :meth:`wait`.
        self._failed: dict[int, BaseException] = {}
        #: Threads inside :meth:`wait`; while there are any, no lingering.
        self._waiters = 0

    def schedule(self, count: int) -> int:
        """Queue ``count`` tombstoned links; return the number of the batch taking them."""
        with self._cond:
            if self._closed:
                raise DeviceError("The netlink adapter is closed; it cannot delete links any more.")
            self._pending += count
            ticket = self._taken + 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="overlayd-link-deleter", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
            return ticket

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending == 0 and not self._closed:
                    self._cond.wait()
                if self._pending == 0 and self._closed:
                    return
            with self._cond:
                # Let more deletions pile up so that one kernel batch covers
                # them, unless someone waits for the links to be gone.
                until = time.monotonic() + self._linger
                while self._waiters == 0 and (left := until - time.monotonic()) > 0:
                    self._cond.wait(left)
                taken = self._pending
                self._pending = 0
                self._busy = True
                self._taken += 1
                number = self._taken
            try:
                self._delete_group()
            except NETLINK_ERRORS as exc:
                log.warning("deferred deletion of %d link(s) failed: %s", taken, exc)
                with self._cond:
                    self.last_error = exc
                    self._failed[number] = exc
            finally:
                with self._cond:
                    self._busy = False
                    self.batches += 1
                    for old in [n for n in self._failed if n <= number - 64]:
                        del self._failed[old]
                    self._cond.notify_all()

    def _delete_group(self) -> None:
        try:
            self._delete_links_of(self._group)
        except NETLINK_ERRORS as exc:
            # ENODEV: nothing left in the group (an earlier batch took it).
            if error_code(exc) != errno.ENODEV:
                raise

    def flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeviceError(
                        f"Deferred link deletion did not finish within {timeout} s; "
                        "the kernel may be stuck releasing a device."
                    )
                self._cond.wait(left)
            error, self.last_error = self.last_error, None
        if error is not None:
            raise DeviceError(
                f"Deferred link deletion failed: {strerror(error)}; "
                "the links stay in the tombstone group and are retried by "
                "sweep_tombstones()."
            ) from error

    def wait(self, ticket: int, timeout: float) -> None:
        """Block until batch ``ticket`` (from :meth:`schedule`) has been deleted."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._waiters += 1
            self._cond.notify_all()
            try:
                while self.batches < ticket and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise DeviceError(
                            f"Link deletion did not finish within {timeout} s; the kernel "
                            "may be stuck releasing a device. The links stay in the "
                            "tombstone group and are retried by sweep_tombstones()."
                        )
                    self._cond.wait(left)
                error = self._failed.get(ticket)
            finally:
                self._waiters -= 1
        if error is not None:
            raise DeviceError(
                f"Link deletion failed: {strerror(error)}; the links stay in the "
                "tombstone group and are retried by sweep_tombstones()."
            ) from error

    def close(self, timeout: float) -> None:
        try:
            self.flush(timeout)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
