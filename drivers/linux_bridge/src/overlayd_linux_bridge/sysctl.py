"""``/proc/sys`` writes of the linux_bridge driver.

``/proc/sys/net`` belongs to the network namespace of the *writing thread*,
so these functions run in a thread inside the namespace they change
(:func:`overlayd_linux.netns.run_in_netns`).
"""

from __future__ import annotations

import logging
import os

from overlayd_linux_bridge.linkapi import STATIC_IPV6_SYSCTLS

__all__ = ["write_static_ipv6_sysctls", "write_sysctl"]

log = logging.getLogger(__name__)


def write_sysctl(
    path: str, value: str, *, required: bool = False, dir_fd: int | None = None
) -> None:
    """Write ``value`` to ``path`` under ``/proc/sys`` (the calling thread's namespace).

    ``path`` is relative to ``dir_fd`` when given. A failed optional write is
    logged (none when the file does not exist: no IPv6 in this namespace,
    nothing to quiet); a required one raises.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.write(fd, value.encode("ascii"))
        finally:
            os.close(fd)
    except OSError as exc:  # e.g. /proc/sys mounted read-only
        if required:
            raise
        if not isinstance(exc, FileNotFoundError):
            log.warning("could not set %s to %s: %s", path, value, exc)


def write_static_ipv6_sysctls(ifname: str) -> None:
    # The directory is looked up once, not once per key: the "conf" entries of
    # all namespaces share one dentry hash chain, and each lookup of a path
    # through it walks the entries of every namespace that has used it.
    directory = f"/proc/sys/net/ipv6/conf/{ifname}"
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if not isinstance(exc, FileNotFoundError):  # no IPv6 here: nothing to quiet
            log.warning("could not open %s: %s", directory, exc)
        return
    try:
        for key, value in STATIC_IPV6_SYSCTLS.items():
            write_sysctl(key, value, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
