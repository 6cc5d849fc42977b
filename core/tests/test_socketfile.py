"""The daemon's socket file appears at its path only once it listens, with its mode."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from overlayd import socketfile
from overlayd.socketfile import SocketFile


def test_the_path_appears_listening_with_its_mode(
    short_tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = short_tmp_path / "s.sock"
    seen: list[tuple[bool, int, bool]] = []
    replace = os.replace

    def watched(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        # Right before the socket takes its name: not there yet, and the
        # staged socket already answers and has its final mode.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(os.fspath(src))
            answers = True
        except OSError:
            answers = False
        finally:
            probe.close()
        seen.append((Path(dst).exists(), stat.S_IMODE(os.stat(src).st_mode), answers))
        replace(src, dst)

    monkeypatch.setattr(socketfile.os, "replace", watched)
    listener = SocketFile(path, None).listen()
    try:
        assert seen == [(False, 0o660, True)]
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        assert sorted(p.name for p in short_tmp_path.iterdir()) == ["s.sock"]
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))
        client.close()
    finally:
        listener.close()


def test_a_temporary_left_by_a_killed_daemon_is_replaced(short_tmp_path: Path) -> None:
    path = short_tmp_path / "s.sock"
    (short_tmp_path / ".s.sock.new").write_text("left behind")
    listener = SocketFile(path, None).listen()
    try:
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert not (short_tmp_path / ".s.sock.new").exists()
    finally:
        listener.close()


def test_a_path_too_long_for_the_temporary_is_bound_in_place(short_tmp_path: Path) -> None:
    room = 107 - len(os.fsencode(short_tmp_path)) - 1  # the longest name that fits
    path = short_tmp_path / ("s" * room)
    listener = SocketFile(path, None).listen()
    try:
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
    finally:
        listener.close()
