"""The daemon's socket file: its path claimed, its directory, its lock, the listener.

Unix only (the daemon's socket). :meth:`SocketFile.claim` makes sure no other
daemon serves on the path and holds ``<socket>.lock`` for the daemon's life;
:meth:`SocketFile.listen` creates the socket with mode 0660 in the socket
group, listening before it takes its name. Directories of the path that do
not exist are created with mode 0750, whatever the umask, and given to the
socket group: under umask 000 they would otherwise be 0777 and anyone could
replace the socket.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import logging
import os
import socket
import stat
import sys
from pathlib import Path

from overlayd.errors import ConfigError

# POSIX only, like the server (this assert also makes mypy --platform win32 skip the rest).
assert sys.platform != "win32", "the daemon's Unix socket is not supported on Windows"

__all__ = ["SOCKET_DIR_MODE", "SocketFile", "SocketInUse"]

log = logging.getLogger(__name__)

#: Mode of a socket directory the daemon creates (group members may reach the socket).
SOCKET_DIR_MODE = 0o750


#: The room for a path in ``sockaddr_un`` (108 bytes on Linux, the final NUL included).
_SUN_PATH_MAX = 108


class SocketInUse(ConfigError):
    """Another live daemon answers on the socket path."""


class SocketFile:
    """The socket path of one daemon and the lock that makes it this daemon's."""

    def __init__(self, path: Path, group: str | None) -> None:
        self.path = path
        self.group = group
        self._lock_fd: int | None = None

    @property
    def lock_path(self) -> Path:
        """``<socket>.lock``: held (flock) for the daemon's whole life."""
        return self.path.with_name(self.path.name + ".lock")

    def claim(self) -> None:
        """Make the socket path ours, or raise :class:`SocketInUse`.

        Two checks: an exclusive ``flock`` on ``<socket>.lock`` (closes the race
        of two daemons starting at once) and a connect to an existing socket
        file (a live daemon without the lock, e.g. ZLayer's own). A socket file
        nobody answers on is stale and removed. Idempotent.
        """
        if self._lock_fd is not None:
            return
        self._make_dir(self.path.parent)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SocketInUse(
                f"another overlayd is serving on {self.path} (it holds {self.lock_path}); "
                "stop it first or choose another --socket"
            ) from None
        except OSError:
            os.close(fd)
            raise
        try:
            self._claim_path()
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def group_gid(self) -> int | None:
        """The socket group (``zlayer`` when none is configured and it exists)."""
        try:
            return grp.getgrnam(self.group or "zlayer").gr_gid
        except KeyError:
            if self.group:
                raise ConfigError(
                    f"socket_group {self.group!r} does not exist; create it or change socket_group"
                ) from None
            return None

    def listen(self, backlog: int = 256) -> socket.socket:
        """A non-blocking listening socket on the path: mode 0660, the socket group.

        The socket appears at the path already listening, with its mode and
        group: it is bound under a temporary name beside it, made ready, then
        renamed into place. A client that connects as soon as the file shows
        (a test helper, an orchestrator watching the directory) is never
        refused by a socket that is bound but not yet listening, nor by one
        whose group is not set yet. Where the temporary name would not fit in
        a socket address, the socket is bound at the path itself, as before.
        """
        temporary = self.path.with_name(f".{self.path.name}.new")
        staged = len(os.fsencode(temporary)) < _SUN_PATH_MAX
        where = temporary if staged else self.path
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)
        try:
            if staged:
                with contextlib.suppress(FileNotFoundError):
                    temporary.unlink()  # left by a daemon killed right here
            listener.bind(str(where))
            listener.listen(backlog)
            listener.setblocking(False)
            os.chmod(where, 0o660)
            self._give_to_group(where, self.group_gid())
            if staged:
                os.replace(temporary, self.path)
        except BaseException:
            listener.close()
            if staged:
                with contextlib.suppress(OSError):
                    temporary.unlink()
            raise
        finally:
            os.umask(old)
        return listener

    def _make_dir(self, directory: Path) -> None:
        """Create ``directory`` and missing parents: mode 0750, the socket group."""
        missing: list[Path] = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        if not missing:
            return
        gid = self.group_gid()
        for path in reversed(missing):
            try:
                path.mkdir(mode=SOCKET_DIR_MODE)
            except FileExistsError:
                continue
            os.chmod(path, SOCKET_DIR_MODE)
            self._give_to_group(path, gid)

    @staticmethod
    def _give_to_group(path: Path, gid: int | None) -> None:
        if gid is None:
            return
        try:
            os.chown(path, -1, gid)
        except PermissionError as exc:
            log.warning("cannot give %s to group %d: %s", path, gid, exc)

    def _claim_path(self) -> None:
        """Refuse a live daemon on the path; replace a stale socket file."""
        if not (self.path.exists() or self.path.is_symlink()):
            return
        mode = self.path.lstat().st_mode
        if not stat.S_ISSOCK(mode):
            raise ConfigError(
                f"{self.path} exists and is not a socket; refusing to replace it "
                "(remove it or choose another --socket)"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale socket %s", self.path, extra={"socket": str(self.path)})
            self.path.unlink(missing_ok=True)
            return
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise ConfigError(
                    f"cannot probe the existing socket {self.path}: {exc}; "
                    "remove it if no daemon uses it"
                ) from exc
            self.path.unlink(missing_ok=True)
            return
        finally:
            probe.close()
        raise SocketInUse(
            f"another daemon is serving on {self.path}; stop it first or choose another --socket"
        )
