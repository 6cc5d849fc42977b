"""Fixtures of the overlayd-cni tests (helpers in :mod:`overlayd_cni.testing`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd_cni.testing import Daemon


@pytest.fixture
def workdir(short_tmp_path: Path) -> Path:
    return short_tmp_path


@pytest.fixture
def fake_daemon(workdir: Path) -> Iterator[Daemon]:
    daemon = Daemon(workdir)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
