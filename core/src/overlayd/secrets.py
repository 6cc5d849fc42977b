"""Private keys by name: the interface the engine and drivers see, and its stores.

:class:`SecretStore` keeps them in one mode 0600 file per key, written
atomically, under the data directory and outside the state database, so
that a copy of the database handed to someone for debugging carries no
key; :class:`MemorySecrets` keeps them in memory for an engine without a
data directory (tests, embedders).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
from pathlib import Path
from typing import Final
from typing import Protocol
from typing import final

from overlayd.errors import StateError
from overlayd.files import O_CLOEXEC
from overlayd.files import O_NOFOLLOW
from overlayd.files import ensure_private_dir
from overlayd.files import fsync_dir
from overlayd.files import write_file_atomic

__all__ = [
    "KEYS_DIRNAME",
    "MemorySecrets",
    "Secret",
    "SecretStore",
    "Secrets",
    "open_secrets",
]

log = logging.getLogger(__name__)

#: Directory (inside the data directory) that holds one file per private key.
KEYS_DIRNAME: Final = "keys"


class Secrets(Protocol):
    """Private keys (base64 text) by name."""

    def get(self, name: str) -> str | None:
        """The secret ``name``, or ``None``. A file store answers a redacting
        ``str`` subclass whose ``reveal()`` gives the plain value."""
        ...

    def put(self, name: str, value: str) -> None:
        """Store ``name`` (replacing it)."""
        ...

    def delete(self, name: str) -> None:
        """Forget ``name``; absent is not an error."""
        ...


class MemorySecrets:
    """Secrets kept in memory (an engine without a data directory)."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}

    def get(self, name: str) -> str | None:
        return self._data.get(name)

    def put(self, name: str, value: str) -> None:
        self._data[name] = value

    def delete(self, name: str) -> None:
        self._data.pop(name, None)


@final
class Secret(str):
    """A ``str`` whose ``str()``/``repr()``/format is redacted.

    It is still a string: concatenation, ``encode()`` and JSON encoding use the
    real value. ``%s`` in a log call and f-strings print ``<redacted>``. Call
    :meth:`reveal` for a plain ``str``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    def __str__(self) -> str:
        return "<redacted>"

    def __format__(self, format_spec: str) -> str:
        return format("<redacted>", format_spec)

    def reveal(self) -> str:
        """The secret as a plain ``str``."""
        return str.__str__(self)


_SECRET_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
_KEY_FILE_SUFFIX: Final = ".key"


@final
class SecretStore:
    """Private keys, one file of mode 0600 per name, in a 0700 directory.

    Names are 1-128 characters of ``A-Za-z0-9._:@+-`` starting with a letter or
    digit, without ``..``: no path separators, so no traversal. ``:`` is stored
    as ``%3A`` in the file name so that ``service:web`` works on Windows too.
    Values never appear in logs or error messages.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        ensure_private_dir(self.directory)

    @staticmethod
    def _filename(name: str) -> str:
        if not _SECRET_NAME.fullmatch(name):
            raise ValueError(
                f"invalid secret name {name!r}: use 1-128 characters from "
                "A-Z a-z 0-9 . _ : @ + - starting with a letter or digit"
            )
        if ".." in name:
            raise ValueError(f"invalid secret name {name!r}: '..' is not allowed")
        return name.replace(":", "%3A") + _KEY_FILE_SUFFIX

    def _path(self, name: str) -> Path:
        return self.directory / self._filename(name)

    def get_bytes(self, name: str) -> bytes | None:
        """The stored bytes, or ``None`` when the secret does not exist."""
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(
                f"cannot read secret {name!r} from {path}: {exc.strerror or exc}; "
                "check the owner and permissions of the keys directory."
            ) from exc
        try:
            if sys.platform != "win32":
                mode = stat.S_IMODE(os.fstat(fd).st_mode)
                if mode & 0o077:
                    log.warning("Secret file %s had mode %o; setting it to 0600.", path, mode)
                    os.fchmod(fd, 0o600)
            chunks: list[bytes] = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as exc:
            raise StateError(
                f"cannot read secret {name!r} from {path}: {exc.strerror or exc}."
            ) from exc
        finally:
            os.close(fd)

    def get(self, name: str) -> Secret | None:
        """The secret as text (UTF-8), or ``None`` when it does not exist."""
        data = self.get_bytes(name)
        if data is None:
            return None
        try:
            return Secret(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise StateError(
                f"secret {name!r} in {self.directory} is not UTF-8 text; read it "
                "with get_bytes() or store it again."
            ) from None  # the decode error would quote the bytes

    def put(self, name: str, value: bytes | str) -> None:
        """Store ``value`` under ``name`` atomically (replace if present)."""
        path = self._path(name)
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        try:
            write_file_atomic(path, data, mode=0o600)
        except OSError as exc:
            raise StateError(
                f"cannot write secret {name!r} to {self.directory}: "
                f"{exc.strerror or exc}; check free space and permissions."
            ) from exc

    def delete(self, name: str) -> None:
        """Remove the secret; removing an absent one is not an error."""
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateError(
                f"cannot delete secret {name!r} from {self.directory}: {exc.strerror or exc}."
            ) from exc
        try:
            fsync_dir(self.directory)
        except OSError as exc:
            raise StateError(
                f"deleted secret {name!r} but could not sync {self.directory}: "
                f"{exc.strerror or exc}."
            ) from exc

    def names(self) -> list[str]:
        """Every stored secret name, sorted (temp files are skipped)."""
        try:
            entries = os.listdir(self.directory)
        except OSError as exc:
            raise StateError(f"cannot list {self.directory}: {exc.strerror or exc}.") from exc
        out = []
        for entry in entries:
            if entry.startswith(".") or not entry.endswith(_KEY_FILE_SUFFIX):
                continue
            name = entry[: -len(_KEY_FILE_SUFFIX)].replace("%3A", ":")
            if _SECRET_NAME.fullmatch(name) and ".." not in name:
                out.append(name)
        return sorted(out)


def open_secrets(data_dir: Path) -> SecretStore:
    """The secret store of a data directory: ``data_dir/keys`` (0700)."""
    ensure_private_dir(Path(data_dir))
    return SecretStore(Path(data_dir) / KEYS_DIRNAME)
