"""Namespace helpers that need no privileges."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from overlayd.errors import InvalidRequest
from overlayd_linux_bridge.namespaces import ProcNamespaceResolver
from overlayd_linux_bridge.netns import NotANetworkNamespace
from overlayd_linux_bridge.netns import open_netns
from overlayd_linux_bridge.netns import open_network_namespace
from overlayd_linux_bridge.netns import run_in_netns


def test_run_in_netns_without_namespace_runs_inline() -> None:
    assert run_in_netns(None, threading.get_ident) == threading.get_ident()


def test_run_in_netns_uses_another_thread_and_propagates_errors() -> None:
    read_fd, write_fd = os.pipe()  # a descriptor that is not a namespace
    try:
        with pytest.raises(OSError, match="setns") as info:
            run_in_netns(read_fd, threading.get_ident)
        assert info.value.errno in (errno.EINVAL, errno.EPERM)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_open_netns_missing_path_names_the_namespace(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    with pytest.raises(FileNotFoundError, match="workload gone"), open_netns(str(missing)):
        pass


def test_open_netns_pins_and_releases() -> None:
    with open_netns("/proc/self/ns/net") as handle:
        fd = handle.fd
        assert os.fstat(fd)
    assert handle.fd == -1
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


# -- client-given namespace paths ----------------------------------------------


def _open_with_deadline(path: str, seconds: float = 5.0) -> BaseException | int:
    """Open ``path`` in a thread; fail the test instead of hanging when it blocks."""
    outcome: list[BaseException | int] = []

    def run() -> None:
        try:
            outcome.append(open_network_namespace(path))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"opening {path} blocked for {seconds} s"
    return outcome[0]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = _open_with_deadline(str(fifo))
    assert isinstance(result, NotANetworkNamespace)
    assert "is a FIFO, not a network namespace" in str(result)


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda d: (d / "f").write_text("x") and d / "f", "a regular file"),
        (lambda d: d, "a directory"),
        (lambda d: Path("/dev/null"), "a device"),
        (lambda d: Path("/proc/self/ns/mnt"), "a mount namespace"),
        (lambda d: Path("/proc/self/ns/uts"), "a UTS namespace"),
    ],
    ids=["regular-file", "directory", "device", "mount-ns", "uts-ns"],
)
def test_other_files_are_refused_naming_what_they_are(
    tmp_path: Path, make: Callable[[Path], Path], what: str
) -> None:
    result = _open_with_deadline(str(make(tmp_path)))
    assert isinstance(result, NotANetworkNamespace), result
    assert f"is {what}, not a network namespace" in str(result)


def test_a_network_namespace_opens() -> None:
    fd = _open_with_deadline("/proc/self/ns/net")
    assert isinstance(fd, int)
    os.close(fd)


def test_a_missing_path_is_file_not_found() -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_network_namespace("/proc/999999999/ns/net")


@pytest.mark.parametrize(
    "path", ["/proc/self/ns/net", f"/proc/{os.getpid()}/ns/net"], ids=["self", "own-pid"]
)
def test_the_resolver_refuses_the_daemons_own_namespace(path: str) -> None:
    resolver = ProcNamespaceResolver()
    resolver.host_path = "/nonexistent"  # whatever pid 1's is, this test is about our own
    with (
        pytest.raises(InvalidRequest, match="overlayd's own network namespace"),
        resolver.open(path),
    ):
        pass


@pytest.mark.privileged
def test_the_resolver_refuses_the_hosts_namespace_by_identity() -> None:
    """pid 1's namespace is refused whatever path reaches it (here: another pid in it)."""
    init = subprocess.Popen(["unshare", "--net", "sleep", "30"])
    other = None
    try:
        own = os.stat("/proc/self/ns/net").st_ino
        deadline = time.monotonic() + 5
        while os.stat(f"/proc/{init.pid}/ns/net").st_ino == own:
            assert time.monotonic() < deadline, "unshare did not enter a new namespace"
            time.sleep(0.01)
        # A second process in the same namespace as our stand-in for pid 1.
        other = subprocess.Popen(["nsenter", f"--net=/proc/{init.pid}/ns/net", "sleep", "30"])
        while (
            os.stat(f"/proc/{other.pid}/ns/net").st_ino
            != os.stat(f"/proc/{init.pid}/ns/net").st_ino
        ):
            assert time.monotonic() < deadline, "nsenter did not enter the namespace"
            time.sleep(0.01)
        resolver = ProcNamespaceResolver()
        resolver.host_path = f"/proc/{init.pid}/ns/net"
        with (
            pytest.raises(InvalidRequest, match="the host's network namespace"),
            resolver.open(f"/proc/{other.pid}/ns/net"),
        ):
            pass
    finally:
        for proc in (init, other):
            if proc is not None:
                proc.kill()
                proc.wait()


def test_the_resolver_refuses_the_configured_host_namespace(tmp_path: Path) -> None:
    link = tmp_path / "host"
    link.symlink_to("/proc/self/ns/net")
    resolver = ProcNamespaceResolver(host_netns=str(link))
    resolver.host_path = "/nonexistent"
    with pytest.raises(InvalidRequest, match="manages as the host"), resolver.open(str(link)):
        pass
