"""Fixtures of the overlayd-cni tests (helpers in :mod:`overlayd_cni.testing`)."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overlayd_cni.launcher import find_compiler
from overlayd_cni.launcher import install
from overlayd_cni.testing import Daemon
from overlayd_cni.testing import native_plugin
from overlayd_cni.testing import plugin_argv
from overlayd_linux_bridge.testing import Netns
from overlayd_linux_bridge.testing import link_outside
from overlayd_linux_bridge.testing import throwaway_netns

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


@dataclass
class BridgeDaemon:
    """The daemon (linux_bridge + fake) in a throwaway "host" namespace, that namespace,
    and an "outside" one linked to it by a veth (the node's own network: the host
    is 192.168.79.1 there, a client 192.168.79.2)."""

    process: Daemon
    host: Netns
    outside: Netns
    make_netns: Callable[[str], Netns]
    #: The cluster's overlay, and this node's slice of it.
    cluster: str = "10.241.0.0/16"
    slice: str = "10.241.0.0/20"

    @property
    def socket(self) -> str:
        return self.process.socket

    @property
    def workdir(self) -> Path:
        return self.process.root

    def stop(self) -> None:
        self.process.stop()

    def log(self) -> str:
        return self.process.log()

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.process.call(request)

    def host_links(self) -> str:
        return self.host.ip("-o", "link", "show")


@pytest.fixture
def daemon_dns() -> bool:
    """Whether :func:`daemon` runs overlayd's DNS server (a test module that needs
    it overrides this fixture)."""
    return False


@pytest.fixture
def daemon(tmp_path: Path, daemon_dns: bool) -> Iterator[BridgeDaemon]:
    """A started :class:`BridgeDaemon` with its global overlay set up (privileged)."""
    with throwaway_netns() as make:
        host, outside = make("host"), make("out")
        host.ip("link", "set", "lo", "up")
        link_outside(host, outside, "192.168.79.0/24")
        drivers = ("linux_bridge", "fake")
        process = Daemon(tmp_path, drivers=drivers, netns=host.name, dns=daemon_dns)
        daemon = BridgeDaemon(process, host, outside, make)
        try:
            process.start()
            process.setup_global(daemon.cluster, daemon.slice)
            yield daemon
        finally:
            process.stop()
