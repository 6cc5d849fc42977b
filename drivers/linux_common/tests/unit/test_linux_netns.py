"""Opening network namespaces and running code in them (no privileges needed)."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from overlayd_linux import netns
from overlayd_linux.netns import InNetns
from overlayd_linux.netns import NotANetworkNamespace
from overlayd_linux.netns import open_netns
from overlayd_linux.netns import open_network_namespace
from overlayd_linux.netns import run_in_netns


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


def test_in_netns_returns_before_its_thread_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller is not held up by the thread's start: it may work meanwhile."""
    monkeypatch.setattr(netns, "setns_current_thread", lambda fd: None)
    release = threading.Event()

    def func() -> int:
        assert release.wait(5), "never released"
        return threading.get_ident()

    started = InNetns(0, func)
    release.set()  # only reached if the constructor did not wait for func
    assert started.result() != threading.get_ident()


def test_in_netns_raises_the_threads_error_in_the_caller() -> None:
    read_fd, write_fd = os.pipe()
    try:
        started = InNetns(read_fd, threading.get_ident)
        with pytest.raises(OSError, match="setns"):
            started.result()
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
