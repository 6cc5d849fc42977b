"""Fixtures of the overlayd-cni tests (helpers in :mod:`overlayd_cni.testing`)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd_cni.testing import Daemon


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ocni-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake_daemon(workdir: Path) -> Iterator[Daemon]:
    daemon = Daemon(workdir)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
