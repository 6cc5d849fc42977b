"""Namespace helpers that need no privileges."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from overlayd_linux_bridge.netns import open_netns
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


def test_open_netns_pins_and_releases(tmp_path: Path) -> None:
    path = tmp_path / "ns"
    path.write_text("")
    with open_netns(str(path)) as handle:
        fd = handle.fd
        assert os.fstat(fd)
    assert handle.fd == -1
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)
