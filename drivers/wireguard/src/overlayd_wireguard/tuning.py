"""Tuning of a running ``wireguard-go``: UDP socket buffers and scheduling priority.

Debian 12's wireguard-go (0.0.20220316) leaves its UDP sockets at the kernel's
default buffer size (``net.core.rmem_default``, 208 KiB), and that is too small:
in ``bench/wg`` 12-17 % of the tunnel's datagrams were dropped at the receiving
socket while the receiving process waited for a CPU, and TCP over the tunnel
slowed down for each loss. wireguard-go itself asks for 7 MiB buffers only
from release 0.0.20250515 on (``conn/controlfns.go``, ``socketBufferSize``).

The buffer sizes are per socket. ``net.core.rmem_default`` and ``rmem_max`` are
host-wide on the kernels overlayd runs on (a network namespace sees them
read-only), and overlayd must not change the host's settings. So the
supervisor raises the buffers of wireguard-go's own UDP sockets from outside:
``pidfd_getfd(2)`` (Linux 5.6) gives overlayd a duplicate of each socket
descriptor, and ``SO_RCVBUFFORCE``/``SO_SNDBUFFORCE`` (CAP_NET_ADMIN) set the
size on the shared socket, past ``rmem_max``, as newer wireguard-go releases
do themselves. Buffers are only ever raised, never lowered.

wireguard-go closes and reopens its UDP sockets when its listen port changes
or the device goes down and up, so the supervisor re-checks the sockets after
such changes and periodically (:meth:`ProcessTuner.socket_inodes`).

A nice value, when configured, is set for every thread of the process: Linux
keeps a nice value per thread, and new threads inherit the value of the thread
that creates them.

See ``docs/design-notes.rst`` ("The userspace tunnel against Nebula") for the
measurements behind the defaults.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from typing import Protocol

from overlayd.errors import InvalidRequest

__all__ = [
    "DEFAULT_NICE",
    "DEFAULT_SOCKET_BUFFER",
    "DEFAULT_TUNING",
    "LinuxProcessTuner",
    "ProcessTuner",
    "TuneReport",
    "Tuning",
    "UdpSocket",
    "socket_server_pid",
]

log = logging.getLogger(__name__)

#: Bytes asked for with SO_RCVBUFFORCE/SO_SNDBUFFORCE (the kernel doubles it for
#: its bookkeeping): what wireguard-go asks for itself from 0.0.20250515 on.
DEFAULT_SOCKET_BUFFER: Final = 7 << 20
#: Largest buffer request accepted from the configuration.
MAX_SOCKET_BUFFER: Final = 1 << 30
#: Nice value of every wireguard-go thread: None leaves the one it inherits.
#: A nice value orders processes within one scheduling group only (a cgroup
#: with the CPU controller, or a session's autogroup), so under systemd it does
#: not rank the tunnel above the workloads, which run in other cgroups; in
#: ``bench/wg`` its gain was within the noise (design notes).
DEFAULT_NICE: Final[int | None] = None

#: pidfd_getfd(2): the same number on every architecture Linux gives new
#: system calls a common number on (all but alpha).
_SYS_PIDFD_GETFD: Final = 438
_SO_SNDBUFFORCE: Final = 32
_SO_RCVBUFFORCE: Final = 33
_PROC: Final = Path("/proc")


@dataclass(frozen=True)
class Tuning:
    """What the supervisor applies to each wireguard-go process.

    :param socket_buffer: bytes to request for the receive and send buffer of
        each UDP socket; ``0`` leaves wireguard-go's own sizes alone.
    :param nice: nice value for every thread; ``None`` leaves it alone.
    """

    socket_buffer: int = DEFAULT_SOCKET_BUFFER
    nice: int | None = DEFAULT_NICE

    def __post_init__(self) -> None:
        # type() rather than isinstance(): a TOML boolean is an int subclass.
        if type(self.socket_buffer) is not int or not 0 <= self.socket_buffer <= MAX_SOCKET_BUFFER:
            raise InvalidRequest(
                f"userspace_socket_buffer = {self.socket_buffer!r} is invalid: give an "
                f"integer number of bytes from 0 (leave alone) to {MAX_SOCKET_BUFFER}"
            )
        if self.nice is not None and (type(self.nice) is not int or not -20 <= self.nice <= 19):
            raise InvalidRequest(
                f"userspace_nice = {self.nice!r} is invalid: give an integer from -20 to 19"
            )

    @property
    def enabled(self) -> bool:
        return bool(self.socket_buffer) or self.nice is not None


#: What the userspace backend applies unless told otherwise.
DEFAULT_TUNING: Final = Tuning()


def socket_server_pid(path: Path, timeout: float = 1.0) -> int | None:
    """The pid of the process listening on the unix socket ``path`` (SO_PEERCRED).

    Used for a wireguard-go process overlayd adopted rather than started. The
    connection is closed without a request, which wireguard-go takes as the
    end of a UAPI session.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    finally:
        sock.close()
    pid = int(struct.unpack("3i", cred)[0])
    return pid if pid > 0 else None


@dataclass(frozen=True)
class UdpSocket:
    """One UDP socket of the tuned process, as read back after tuning."""

    fd: int
    inode: int
    port: int
    #: SO_RCVBUF / SO_SNDBUF as the kernel reports them (twice the request).
    rcvbuf: int
    sndbuf: int


@dataclass(frozen=True)
class TuneReport:
    """The outcome of one :meth:`ProcessTuner.tune` call."""

    pid: int
    sockets: tuple[UdpSocket, ...] = ()
    #: The nice values found on the process's threads after tuning.
    nice: frozenset[int] = frozenset()
    #: Why something could not be applied (empty when all of it was).
    problems: tuple[str, ...] = ()

    @property
    def inodes(self) -> frozenset[int]:
        return frozenset(s.inode for s in self.sockets)


class ProcessTuner(Protocol):
    """Applies :class:`Tuning` to a process (a seam: tests inject a double)."""

    def socket_inodes(self, pid: int) -> frozenset[int]:
        """The inodes of every socket the process holds (empty if it is gone)."""
        ...

    def tune(self, pid: int, tuning: Tuning) -> TuneReport:
        """Apply ``tuning`` to ``pid``; never raises for what it cannot apply."""
        ...


def _pidfd_getfd_function() -> Callable[[int, int], int]:
    libc = ctypes.CDLL(None, use_errno=True)
    syscall = libc.syscall
    syscall.restype = ctypes.c_long

    def pidfd_getfd(pidfd: int, fd: int) -> int:
        res = int(
            syscall(
                ctypes.c_long(_SYS_PIDFD_GETFD),
                ctypes.c_long(pidfd),
                ctypes.c_long(fd),
                ctypes.c_long(0),
            )
        )
        if res < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return res

    return pidfd_getfd


class LinuxProcessTuner:
    """:class:`ProcessTuner` over ``/proc``, ``pidfd_getfd(2)`` and ``setpriority(2)``."""

    def __init__(self, proc: Path = _PROC) -> None:
        self.proc = proc
        self._getfd: Callable[[int, int], int] | None = None

    def socket_inodes(self, pid: int) -> frozenset[int]:
        return frozenset(self._sockets(pid).values())

    def tune(self, pid: int, tuning: Tuning) -> TuneReport:
        problems: list[str] = []
        nice: frozenset[int] = frozenset()
        if tuning.nice is not None:
            nice = self._set_nice(pid, tuning.nice, problems)
        sockets: tuple[UdpSocket, ...] = ()
        if tuning.socket_buffer:
            sockets = self._set_buffers(pid, tuning.socket_buffer, problems)
        return TuneReport(pid=pid, sockets=sockets, nice=nice, problems=tuple(problems))

    # ------------------------------------------------------------------ internals

    def _sockets(self, pid: int) -> dict[int, int]:
        """fd -> socket inode for every socket descriptor of ``pid``."""
        out: dict[int, int] = {}
        fd_dir = self.proc / str(pid) / "fd"
        try:
            names = os.listdir(fd_dir)
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
            return out
        for name in names:
            try:
                target = os.readlink(fd_dir / name)
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:[") and target.endswith("]"):
                out[int(name)] = int(target[8:-1])
        return out

    def _set_nice(self, pid: int, value: int, problems: list[str]) -> frozenset[int]:
        seen: set[int] = set()
        try:
            tids = [int(t) for t in os.listdir(self.proc / str(pid) / "task")]
        except FileNotFoundError:
            problems.append(f"process {pid} is gone")
            return frozenset()
        for tid in tids:
            try:
                have = os.getpriority(os.PRIO_PROCESS, tid)
                if have != value:
                    os.setpriority(os.PRIO_PROCESS, tid, value)
                    have = os.getpriority(os.PRIO_PROCESS, tid)
            except ProcessLookupError:
                continue  # the thread exited
            except PermissionError:
                problems.append(
                    f"cannot set nice {value} on process {pid}: raising the priority "
                    "needs CAP_SYS_NICE"
                )
                break
            seen.add(have)
        return frozenset(seen)

    def _set_buffers(self, pid: int, size: int, problems: list[str]) -> tuple[UdpSocket, ...]:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            problems.append(f"process {pid} is gone")
            return ()
        except OSError as exc:
            problems.append(f"pidfd_open({pid}) failed: {exc.strerror} (needs Linux 5.3)")
            return ()
        found: list[UdpSocket] = []
        try:
            for fd, inode in sorted(self._sockets(pid).items()):
                udp = self._tune_socket(pidfd, fd, inode, size, problems)
                if udp is not None:
                    found.append(udp)
                if problems and problems[-1].startswith("pidfd_getfd"):
                    break  # the same for every descriptor
        finally:
            os.close(pidfd)
        return tuple(found)

    def _tune_socket(
        self, pidfd: int, fd: int, inode: int, size: int, problems: list[str]
    ) -> UdpSocket | None:
        if self._getfd is None:
            self._getfd = _pidfd_getfd_function()
        try:
            local = self._getfd(pidfd, fd)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return None  # closed meanwhile
            hint = {
                errno.ENOSYS: "the kernel has no pidfd_getfd (Linux 5.6 or later needed)",
                errno.EPERM: "overlayd may not access the process (ptrace access mode)",
            }.get(exc.errno or 0, exc.strerror)
            problems.append(f"pidfd_getfd on fd {fd} failed: {hint}")
            return None
        try:
            sock = socket.socket(fileno=local)
        except OSError:
            os.close(local)
            return None
        with sock:
            if os.fstat(sock.fileno()).st_ino != inode:
                return None  # the number was reused for another socket meanwhile
            if (
                sock.family not in (socket.AF_INET, socket.AF_INET6)
                or sock.type != socket.SOCK_DGRAM
            ):
                return None
            for force, plain, name in (
                (_SO_RCVBUFFORCE, socket.SO_RCVBUF, "receive"),
                (_SO_SNDBUFFORCE, socket.SO_SNDBUF, "send"),
            ):
                if sock.getsockopt(socket.SOL_SOCKET, plain) >= 2 * size:
                    continue  # never lower what is already there
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, size)
                except PermissionError:
                    # Without CAP_NET_ADMIN only up to net.core.[rw]mem_max.
                    sock.setsockopt(socket.SOL_SOCKET, plain, size)
                    problems.append(
                        f"{name} buffer of fd {fd} capped by the host's limit: "
                        "SO_*BUFFORCE needs CAP_NET_ADMIN"
                    )
            port = int(sock.getsockname()[1])
            return UdpSocket(
                fd=fd,
                inode=inode,
                port=port,
                rcvbuf=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                sndbuf=sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            )
