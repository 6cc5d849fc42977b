"""Run code inside a network namespace given by an open file descriptor.

A network namespace is a per-*thread* attribute on Linux: ``setns(2)`` with
``CLONE_NEWNET`` moves only the calling thread. overlayd therefore never
switches the daemon's own threads; it starts a short-lived thread, moves that
thread into the target namespace, runs the work there and lets the thread end.
Sockets keep the namespace they were created in, so a netlink socket opened by
such a thread keeps operating on that namespace from any other thread: that is
how :mod:`overlayd_linux.netlink` binds raw netlink sockets and pyroute2
``IPRoute`` objects to a namespace without pyroute2's fork-based helper
(docs/design-notes.rst, "One home for Linux mechanism", has the figures).

Things that resolve the namespace per call rather than per socket must run in
the thread itself: ``/proc/sys/net/*`` writes (sysctl uses the writer's
namespace) and libnftables (its netlink socket is opened by ``nft_ctx_new``
and on each command).

A child process enters a namespace between ``fork`` and ``exec``:
:func:`preexec_setns` returns the function to run there, with everything it
needs loaded in the parent.

A namespace path comes from a client, so :func:`open_network_namespace` opens
it the careful way: it refuses anything that is not a regular file before
opening it (``open(2)`` of a FIFO blocks until a writer appears, and opening a
device node runs its driver), opens with ``O_NONBLOCK``, and asks the kernel
(``NS_GET_NSTYPE``) whether the file is a *network* namespace.
"""

from __future__ import annotations

import _thread
import ctypes
import errno
import fcntl
import os
import stat
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final
from typing import Generic
from typing import TypeVar

from overlayd.errors import InvalidRequest
from overlayd.errors import quote

__all__ = [
    "CLONE_NEWNET",
    "NS_GET_NSTYPE",
    "InNetns",
    "NetnsHandle",
    "NotANetworkNamespace",
    "open_netns",
    "open_network_namespace",
    "preexec_setns",
    "run_in_netns",
    "setns_current_thread",
    "setns_path",
]

#: ``CLONE_NEWNET`` from ``<sched.h>``.
CLONE_NEWNET: Final = 0x40000000
#: ``NS_GET_NSTYPE`` from ``<linux/nsfs.h>`` (``_IO(0xb7, 0x3)``, Linux >= 4.11):
#: the ``CLONE_NEW*`` type of the namespace a descriptor refers to.
NS_GET_NSTYPE: Final = 0xB703
_NS_TYPES: Final = {
    0x00000080: "time",
    0x00020000: "mount",
    0x02000000: "cgroup",
    0x04000000: "UTS",
    0x08000000: "IPC",
    0x10000000: "user",
    0x20000000: "PID",
    CLONE_NEWNET: "network",
}


class NotANetworkNamespace(InvalidRequest):
    """A namespace path given by a client is not a network namespace file."""


def _not_a_namespace(path: str, what: str) -> NotANetworkNamespace:
    return NotANetworkNamespace(
        f"{quote(path, 200)} is {what}, not a network namespace; give /proc/<pid>/ns/net or a "
        "namespace bind-mounted by `ip netns add` (/run/netns/<name>)"
    )


def open_network_namespace(path: str) -> int:
    """Open ``path`` if it is a network namespace file; return the descriptor.

    Never blocks: a FIFO, a device node, a directory or a socket is refused
    from its ``stat`` without being opened, the open itself is
    ``O_NONBLOCK``, and the descriptor must answer ``NS_GET_NSTYPE`` with
    ``CLONE_NEWNET``.

    :raises FileNotFoundError: the path (or the process) does not exist.
    :raises NotANetworkNamespace: it exists but is not a network namespace.
    :raises PermissionError: the daemon may not open it.
    """
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _not_a_namespace(path, _file_kind(mode))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ESRCH, errno.ENOTDIR):
            raise FileNotFoundError(
                exc.errno, f"network namespace {path} does not exist (workload gone?)"
            ) from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the stat
            raise _not_a_namespace(path, "no longer a regular file")
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL):
                raise _not_a_namespace(path, "a regular file") from None
            raise
        if kind != CLONE_NEWNET:
            name = _NS_TYPES.get(kind, f"type {kind:#x}")
            raise _not_a_namespace(path, f"a {name} namespace")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


T = TypeVar("T")

_setns: Callable[[int, int], int] | None = None


def _libc_setns() -> Callable[[int, int], int]:
    """libc's ``setns``, looked up once.

    The symbol is taken from the running process (``dlopen(NULL)``), which
    links the C library already: ``ctypes.util.find_library`` would run
    ``ldconfig -p`` in a child process, several milliseconds on the first
    attach of a daemon.
    """
    global _setns
    if _setns is None:
        func = ctypes.CDLL(None, use_errno=True).setns
        func.argtypes = [ctypes.c_int, ctypes.c_int]
        func.restype = ctypes.c_int
        _setns = func
    return _setns


def setns_current_thread(fd: int) -> None:
    """Move the calling thread (only) into the network namespace ``fd``."""
    if _libc_setns()(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")


def setns_path(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    fd = open_network_namespace(path)
    try:
        setns_current_thread(fd)
    finally:
        os.close(fd)


def preexec_setns(fd: int) -> Callable[[], None]:
    """A ``preexec_fn`` that moves a child process into namespace ``fd`` before ``exec``.

    libc is loaded here, in the parent: the child may only call what is
    already loaded. The caller keeps ``fd`` open until the child has started.
    """
    setns = _libc_setns()

    def enter() -> None:
        if setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")

    return enter


def run_in_netns(netns_fd: int | None, func: Callable[[], T]) -> T:
    """Call ``func`` in a fresh thread moved into ``netns_fd``; ``None`` = here.

    The result (or the exception) is handed back to the caller's thread.
    """
    if netns_fd is None:
        return func()
    return InNetns(netns_fd, func).result()


class InNetns(Generic[T]):
    """``func`` started in a fresh thread moved into ``netns_fd``; :meth:`result` waits.

    :func:`run_in_netns` waits at once. Starting the thread first lets the
    caller do something else meanwhile, such as a netlink request the kernel
    takes a while to answer. The thread is a bare ``_thread`` one:
    ``threading.Thread.start`` would make the caller wait until the new thread
    runs, which on a virtual machine whose idle CPUs halt is most of the cost
    of starting it (about 0.1 ms here, of 0.2-0.3 ms for start and join).
    ``func`` should therefore not rely on ``threading`` 's view of its
    thread (its name, ``threading.local``).
    """

    def __init__(self, netns_fd: int, func: Callable[[], T]) -> None:
        self._result: list[T] = []
        self._failure: list[BaseException] = []
        self._done = _thread.allocate_lock()
        self._done.acquire()

        def target() -> None:
            try:
                setns_current_thread(netns_fd)
                self._result.append(func())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._failure.append(exc)
            finally:
                self._done.release()

        try:
            _thread.start_new_thread(target, ())
        except BaseException:
            self._done.release()
            raise

    def result(self) -> T:
        """Wait for ``func``; its result, or its exception raised here."""
        with self._done:
            pass
        if self._failure:
            raise self._failure[0]
        return self._result[0]


class NetnsHandle:
    """An open, pinned network namespace (a ``/proc/<pid>/ns/net`` or netns path)."""

    def __init__(self, path: str) -> None:
        self.path = path
        #: The descriptor keeps the namespace alive while it is held.
        self.fd = open_network_namespace(path)

    def close(self) -> None:
        """Release the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> NetnsHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def open_netns(path: str) -> Iterator[NetnsHandle]:
    """Open and pin a namespace for the duration of one operation.

    Raises ``FileNotFoundError`` when the workload is already gone
    (``ENOENT``/``ESRCH``) and :class:`NotANetworkNamespace` when ``path`` is
    not a network namespace (:func:`open_network_namespace`).
    """
    handle = NetnsHandle(path)
    try:
        yield handle
    finally:
        handle.close()
