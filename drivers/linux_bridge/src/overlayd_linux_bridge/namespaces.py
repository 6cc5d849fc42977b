"""How the linux_bridge driver opens workload namespaces: pinned, checked, never the host's.

:class:`NamespaceResolver` is the seam (unit tests inject
:class:`overlayd_linux_bridge.doubles.FakeNamespaces`); :class:`ProcNamespaceResolver`
is the real one. It stays importable on any platform: the POSIX-only opening
(:func:`overlayd_linux.netns.open_network_namespace`) is imported when
a namespace is opened.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from overlayd.errors import InvalidRequest
from overlayd.errors import quote

__all__ = ["NamespaceResolver", "PinnedNamespace", "ProcNamespaceResolver"]


@dataclass(frozen=True)
class PinnedNamespace:
    """An open network namespace, pinned for the duration of one operation."""

    #: Descriptor handed to the netlink adapter.
    fd: int
    #: Inode of the namespace (identifies it; a reused pid has another one).
    inode: int


class NamespaceResolver(Protocol):
    """How the driver opens and identifies workload namespaces (a seam for tests)."""

    def open(self, path: str) -> contextlib.AbstractContextManager[PinnedNamespace]:
        """Open and pin ``path``; raise ``FileNotFoundError`` when it is gone."""
        ...

    def inode(self, path: str) -> int | None:
        """Inode of the namespace at ``path``; ``None`` when it does not exist."""
        ...


class ProcNamespaceResolver:
    """The real resolver: nsfs files, opened without blocking, never the host's.

    Besides what :func:`~overlayd_linux.netns.open_network_namespace`
    refuses (anything that is not a network namespace file), it refuses the
    namespaces whose interfaces are the host's: the daemon's own, pid 1's and
    the one configured as ``host_netns``. Attaching one of them would put
    ``eth0`` and a default route into the host. Whether a path names one of
    them is decided on the opened descriptor (device and inode), so a symlink,
    a bind mount or another pid in the host namespace is refused as well.
    """

    #: The host's own network namespace: that of init. (Where the daemon may
    #: not even read it, e.g. without CAP_SYS_PTRACE over pid 1, it cannot
    #: open it either, and attaching it fails with "permission denied".)
    host_path: str = "/proc/1/ns/net"

    def __init__(self, host_netns: str | None = None) -> None:
        self._host_netns = host_netns
        self._forbidden: dict[tuple[int, int], str] | None = None

    @property
    def host_netns(self) -> str | None:
        """The namespace the driver manages as its host, when it is not its own."""
        return self._host_netns

    @host_netns.setter
    def host_netns(self, path: str | None) -> None:
        self._host_netns = path
        self._forbidden = None  # looked up again, with this one

    def _forbidden_namespaces(self) -> dict[tuple[int, int], str]:
        if self._forbidden is None:
            found: dict[tuple[int, int], str] = {}
            # /proc/<pid>, not /proc/self: the calling thread may be in another
            # namespace (run_in_netns); the main thread never leaves the daemon's.
            candidates = [
                (self.host_path, "the host's network namespace (that of pid 1)"),
                (f"/proc/{os.getpid()}/ns/net", "overlayd's own network namespace"),
            ]
            if self.host_netns is not None:
                candidates.append(
                    (self.host_netns, "the namespace this driver manages as the host")
                )
            for path, what in candidates:
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                found[(st.st_dev, st.st_ino)] = what
            self._forbidden = found
        return self._forbidden

    def warm_up(self) -> None:
        """Look up the namespaces :meth:`open` refuses now, not on the first attach."""
        self._forbidden_namespaces()

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[PinnedNamespace]:
        from overlayd_linux.netns import open_network_namespace  # POSIX only

        fd = open_network_namespace(path)
        try:
            st = os.fstat(fd)
            what = self._forbidden_namespaces().get((st.st_dev, st.st_ino))
            if what is not None:
                raise InvalidRequest(
                    f"{quote(path, 200)} is {what}; attaching it would put eth0 and a "
                    "default route into the host. Give the workload's own namespace."
                )
            yield PinnedNamespace(fd, st.st_ino)
        finally:
            os.close(fd)

    def inode(self, path: str) -> int | None:
        try:
            return os.stat(path).st_ino
        except (FileNotFoundError, ProcessLookupError):
            return None
