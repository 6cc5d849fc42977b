"""Files overlayd keeps private and whole: 0700 directories, atomic 0600 writes.

The state database's directory, the key files (:mod:`overlayd.secrets`), the
HCN driver's state and the network markers are written through these: a
crash leaves the old file or the new one, never a torn one, and nothing is
readable by group or others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from overlayd.errors import StateError

__all__ = [
    "O_CLOEXEC",
    "O_NOFOLLOW",
    "ensure_private_dir",
    "fsync_dir",
    "private_umask",
    "write_file_atomic",
]

log = logging.getLogger(__name__)

_IS_WINDOWS: Final = sys.platform == "win32"
#: Open flags that exist only on some platforms (0 where they do not).
O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)


def ensure_private_dir(path: Path, *, tighten: bool = True) -> None:
    """Create ``path`` (and parents) with mode 0700; tighten it if it is ours.

    With ``tighten`` an existing directory that group or others can access is
    switched to 0700 (with a warning). Only pass it for directories overlayd owns.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _IS_WINDOWS:
            return
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077 and tighten:
            log.warning(
                "Directory %s had mode %o; setting it to 0700 because it holds "
                "overlayd state and keys.",
                path,
                mode,
            )
            path.chmod(0o700)
    except OSError as exc:
        raise StateError(
            f"cannot create the private directory {path}: {exc.strerror or exc}; "
            "check that the parent exists and overlayd may write to it."
        ) from exc


def fsync_dir(path: Path) -> None:
    """Make a rename/create/unlink in ``path`` durable (no-op on Windows)."""
    if _IS_WINDOWS:
        # Windows cannot open a directory for fsync; NTFS journals metadata.
        return
    fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or new file, whole.

    Temp file in the same directory (created ``O_EXCL`` with ``mode``), write,
    fsync, rename over ``path``, fsync the directory. Raises :class:`OSError`;
    the temp file is removed on failure.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.tmp-{secrets.token_hex(6)}"
    fd = os.open(
        tmp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC,
        mode,
    )
    try:
        try:
            if sys.platform != "win32":
                # The umask may have cleared bits we asked for, or (a weird
                # umask aside) the mode must be exact: set it on the open fd.
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(directory)


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Umask 077 for the duration; a no-op on Windows.

    NOTE: the umask is process-wide, so another thread creating a file during
    this window also gets a private mode. That errs on the safe side, and the
    window is only the opening of the database.
    """
    if _IS_WINDOWS:
        yield
        return
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)
