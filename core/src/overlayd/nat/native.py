"""The native relay forwarder (``relay_forwarder.c``): built on first use, loaded with ctypes.

The C source ships in the package. The first relay that wants it compiles
it with the system's C compiler (``$CC``, else ``cc``) into a cache
directory, under a name keyed by the hash of the source, the compiler and
the flags, so an upgraded source is a new file and a build is never
half-visible (it is written beside the target and renamed into place).
When there is no compiler or the build fails, :func:`load` says why once
and returns None; the relay then forwards in Python.

The cache is ``$OVERLAYD_NATIVE_CACHE``, else systemd's ``$CACHE_DIRECTORY``
(the shipped unit sets ``CacheDirectory=overlayd``: ``/var/cache/overlayd``),
else ``$XDG_CACHE_HOME/overlayd``, else ``~/.cache/overlayd``; it must belong
to this user and be writable by no one else, since the daemon loads code from
it.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import logging
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Final

__all__ = [
    "ADDRESS_SIZE",
    "DEADLINE",
    "PEER",
    "RAW",
    "TURN",
    "WAKE",
    "NativeUnavailable",
    "cache_dir",
    "load",
    "sockaddr",
]

log = logging.getLogger(__name__)

SOURCE: Final = Path(__file__).resolve().parent / "relay_forwarder.c"
CFLAGS: Final = ("-O2", "-shared", "-fPIC", "-std=gnu11")
#: Return codes of ``ovl_fwd_run`` (see the C source).
DEADLINE: Final = 0
TURN: Final = 1
PEER: Final = 2
WAKE: Final = 3
RAW: Final = 4
#: Bytes of one address passed to the C side (a ``struct sockaddr_in`` or ``_in6``).
ADDRESS_SIZE: Final = 28


def sockaddr(family: int, address: tuple[str, int] | None) -> bytes:
    """``address`` as the C ``struct sockaddr`` of a ``family`` socket, :data:`ADDRESS_SIZE` bytes.

    An IPv4 address for an IPv6 socket is mapped; None, or an IPv6 address for
    an IPv4 socket, gives zeros (no family: matches no source).
    """
    if address is None:
        return bytes(ADDRESS_SIZE)
    host, port = address
    ip = ipaddress.ip_address(host)
    if family == socket.AF_INET6:
        packed = ip.packed if ip.version == 6 else b"\0" * 10 + b"\xff\xff" + ip.packed
        data = struct.pack("=H", family) + struct.pack("!HI", port, 0) + packed
    elif ip.version == 4:
        data = struct.pack("=H", family) + struct.pack("!H", port) + ip.packed
    else:
        return bytes(ADDRESS_SIZE)
    return data.ljust(ADDRESS_SIZE, b"\0")


class NativeUnavailable(OSError):
    """The native forwarder cannot be built or loaded here."""


def cache_dir() -> Path:
    override = os.environ.get("OVERLAYD_NATIVE_CACHE")
    if override:
        return Path(override)
    systemd = os.environ.get("CACHE_DIRECTORY")  # the unit's CacheDirectory=
    if systemd:
        return Path(systemd.split(":")[0])
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except (RuntimeError, KeyError) as exc:  # no $HOME and no passwd entry
            raise NativeUnavailable(
                f"no cache directory for the native relay forwarder ({exc}); "
                "set OVERLAYD_NATIVE_CACHE"
            ) from None
    return Path(base) / "overlayd"


def _compiler() -> str:
    name = os.environ.get("CC") or "cc"
    found = shutil.which(name)
    if found is None:
        raise NativeUnavailable(
            f"no C compiler: {name!r} is not found (set $CC, or install one: apt-get install gcc)"
        )
    return found


def _private(directory: Path) -> None:
    """Create ``directory`` (0700) or check that only this user can write it."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if sys.platform != "win32":  # build() is Linux only; mypy's win32 run skips this
        if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise NativeUnavailable(
                f"{directory} is not private to this user (owner uid {info.st_uid}, "
                f"mode {stat.filemode(info.st_mode)}); not loading code from it"
            )


def build(directory: Path | None = None) -> Path:
    """The compiled forwarder's path, compiling it first unless cached. Raises NativeUnavailable."""
    if sys.platform == "linux":
        return _build(directory if directory is not None else cache_dir())
    else:  # an else, not a fall-through: mypy's win32 run understands it
        raise NativeUnavailable("the native relay forwarder is Linux only")


def _build(directory: Path) -> Path:
    compiler = _compiler()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), *map(str.encode, CFLAGS)]))
    try:
        _private(directory)
    except OSError as exc:
        if isinstance(exc, NativeUnavailable):
            raise
        raise NativeUnavailable(f"cannot use the cache directory {directory}: {exc}") from exc
    target = directory / f"relay-forwarder-{key.hexdigest()[:20]}.so"
    if target.exists():
        return target
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".relay-forwarder.", suffix=".so")
    os.close(fd)
    started = time.monotonic()
    try:
        argv = [compiler, *CFLAGS, "-o", tmp, str(SOURCE)]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)  # noqa: S603
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NativeUnavailable(f"running {compiler} failed: {exc}") from exc
        if proc.returncode != 0:
            raise NativeUnavailable(
                f"compiling {SOURCE.name} with {compiler} failed (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-2000:]}"
            )
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    log.info(
        "compiled the native relay forwarder into %s with %s (%.1f s)",
        target,
        compiler,
        time.monotonic() - started,
    )
    return target


def _bind(path: Path) -> ctypes.CDLL:
    """Load the library and declare its functions (CDLL calls release the GIL)."""
    lib = ctypes.CDLL(str(path))
    c_int, ptr = ctypes.c_int, ctypes.c_void_p
    lib.ovl_fwd_new.argtypes = [c_int, c_int, ctypes.c_char_p]
    lib.ovl_fwd_new.restype = ptr
    lib.ovl_fwd_free.argtypes = [ptr]
    lib.ovl_fwd_free.restype = None
    lib.ovl_fwd_table.argtypes = [
        ptr,
        c_int,
        ctypes.POINTER(c_int),
        ctypes.POINTER(ctypes.c_uint16),
        ctypes.POINTER(ctypes.c_uint8),
        ctypes.c_char_p,
        ctypes.POINTER(ctypes.c_uint8),
    ]
    lib.ovl_fwd_table.restype = c_int
    lib.ovl_fwd_stats.argtypes = [ptr, ctypes.POINTER(ctypes.c_uint64)]
    lib.ovl_fwd_stats.restype = None
    lib.ovl_fwd_run.argtypes = [
        ptr,
        c_int,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.POINTER(c_int),
        ctypes.POINTER(c_int),
    ]
    lib.ovl_fwd_run.restype = c_int
    return lib


_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | NativeUnavailable] = {}


def load() -> ctypes.CDLL:
    """The forwarder library, built and loaded once per process. Raises NativeUnavailable.

    A failure is remembered (and logged once) until :func:`forget` is called.
    """
    with _lock:
        cached = _loaded.get("lib")
        if cached is None:
            try:
                cached = _bind(build())
            except NativeUnavailable as exc:
                cached = exc
            except OSError as exc:
                cached = NativeUnavailable(f"cannot load the native relay forwarder: {exc}")
            if isinstance(cached, NativeUnavailable):
                log.warning(
                    "the native relay forwarder is unavailable: %s (relay_forwarder = "
                    "'auto' forwards in Python instead, 'native' does not relay)",
                    cached,
                )
            _loaded["lib"] = cached
    if isinstance(cached, NativeUnavailable):
        raise cached
    return cached


def forget() -> None:
    """Forget the loaded library or the failure (tests change the environment)."""
    with _lock:
        _loaded.clear()
