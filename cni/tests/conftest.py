"""Fixtures of the overlayd-cni tests (helpers in :mod:`overlayd_cni.testing`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd_cni.launcher import find_compiler
from overlayd_cni.launcher import install
from overlayd_cni.testing import Daemon
from overlayd_cni.testing import native_plugin
from overlayd_cni.testing import plugin_argv

#: The executables a runtime may be given: the console script pip writes, the
#: launcher of ``overlayd-cni install`` and the compiled front end of
#: ``overlayd-cni install --native``.
PLUGIN_KINDS = ("script", "launcher", "native")


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


@pytest.fixture(scope="session")
def plugin_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plugin directory with the launcher (``launcher``) and the front end (``native``)."""
    directory = tmp_path_factory.mktemp("cni-bin")
    install(directory, name="launcher")
    try:
        find_compiler()
    except Exception:
        return directory
    native_plugin(directory)
    return directory


@pytest.fixture(params=["script", "native"])
def kind(request: pytest.FixtureRequest) -> str:
    """The executable under test: the console script, or the compiled front end
    (whose answers come from the daemon, or from the Python plugin it falls back
    to). A module may override this fixture with other :data:`PLUGIN_KINDS`."""
    return str(request.param)


@pytest.fixture
def argv(kind: str, plugin_bin: Path) -> list[str]:
    """How to exec the plugin of ``kind``."""
    if kind == "script":
        return plugin_argv()
    path = plugin_bin / ("launcher" if kind == "launcher" else "overlayd-cni")
    if not path.exists():
        pytest.skip("no C compiler: the native front end was not built")
    return [str(path)]
