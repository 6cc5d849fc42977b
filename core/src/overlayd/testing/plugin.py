"""pytest plugin: ``--run-privileged``, the ``privileged`` marker and engine fixtures."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

if sys.platform == "linux":
    # pyroute2's netns fixtures (nsname, setns_context, ...) for driver suites.
    pytest_plugins = ["pyroute2.fixtures.iproute"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("overlayd")
    group.addoption(
        "--run-privileged",
        action="store_true",
        default=False,
        help="run tests marked `privileged` (root / CAP_NET_ADMIN, throwaway netns)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "privileged: needs root/CAP_NET_ADMIN; runs only with --run-privileged, "
        "inside network namespaces the test creates",
    )
    config.addinivalue_line("markers", "windows: runs only on Windows")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def _has_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN (read from /proc; False off Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 12))
    except OSError:
        return False
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_privileged = config.getoption("--run-privileged")
    capable = _has_net_admin()
    for item in items:
        if "windows" in item.keywords and sys.platform != "win32":
            item.add_marker(pytest.mark.skip(reason="needs Windows"))
        if "privileged" not in item.keywords:
            continue
        if not run_privileged:
            item.add_marker(pytest.mark.skip(reason="privileged test: pass --run-privileged"))
        elif not capable:
            # With the flag but without the capability, fail loudly: CI must not
            # go green by skipping everything that matters.
            item.user_properties.append(("overlayd_missing_capability", True))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if ("overlayd_missing_capability", True) in item.user_properties:
        pytest.fail("--run-privileged given but this process lacks CAP_NET_ADMIN")


@pytest.fixture(autouse=True)
def _host_state_untouched() -> Iterator[None]:
    """Fail a test that leaves state in the host's default data directory.

    ``overlayd serve`` and :class:`~overlayd.config.DaemonConfig` keep durable
    state in ``/var/lib/overlayd`` unless told otherwise; a test that forgets
    ``data_dir``/``in_memory`` would share state with every other test (and
    with a real daemon on the machine). The directory is removed again when
    the test created it.
    """
    import shutil
    from pathlib import Path

    from overlayd.config import DEFAULT_DATA_DIR

    default = Path(DEFAULT_DATA_DIR)
    existed = default.exists()
    yield
    if not existed and default.exists():
        shutil.rmtree(default, ignore_errors=True)
        pytest.fail(
            f"this test wrote overlayd state to the host's {default}: give the daemon "
            "a data_dir under the test's temporary directory, or in_memory=True"
        )


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture
def engine_config(tmp_path: Any) -> Any:
    """An engine configuration for tests.

    * Name: ``engine_config``
    * Scope: function
    * Depends: ``tmp_path``

    In-memory state, no DNS gateway listeners, no periodic tasks; override in
    your conftest to change it.
    """
    from overlayd.config import DnsSettings
    from overlayd.config import EngineConfig
    from overlayd.config import EngineSettings

    return EngineConfig(
        drivers=[],
        dns=DnsSettings(enabled=False, listen_on_gateways=False),
        engine=EngineSettings(health_interval_secs=0, reconcile_interval_secs=0),
    )


@pytest.fixture
def fake_driver() -> Any:
    """A fresh :class:`overlayd_fake.driver.FakeDriver` (needs ``overlayd-fake``).

    * Name: ``fake_driver``
    * Scope: function
    * Depends: nothing
    """
    fake = pytest.importorskip("overlayd_fake.driver", reason="needs overlayd-fake")
    return fake.FakeDriver()


@pytest.fixture
async def fake_engine(engine_config: Any, fake_driver: Any) -> AsyncIterator[Any]:
    """A started :class:`overlayd.engine.Engine` over the fake driver.

    * Name: ``fake_engine``
    * Scope: function
    * Depends: ``engine_config``, ``fake_driver``
    """
    from overlayd.engine import Engine

    async with Engine(engine_config, drivers=[fake_driver]) as engine:
        yield engine


@pytest.fixture
async def inproc_daemon(short_tmp_path: Path) -> AsyncIterator[Any]:
    """An unstarted :class:`overlayd.testing.inproc.InProcDaemon` on the fake driver.

    * Name: ``inproc_daemon``
    * Scope: function
    * Depends: ``short_tmp_path`` (needs ``overlayd-fake``)

    Call ``await inproc_daemon.start()`` (after ``configure(...)`` if the test
    wants other settings); it is stopped after the test, even on failure.
    Each start gets a fresh ``FakeDriver`` over a host kept in
    ``fake-host.json`` beside the socket, so a restart finds its objects.
    """
    if sys.platform == "win32":  # an if/else, which mypy's win32 run understands
        pytest.skip("the in-process daemon serves a Unix socket (POSIX only)")
    else:
        from overlayd.testing.inproc import InProcDaemon

        fake = pytest.importorskip("overlayd_fake.driver", reason="needs overlayd-fake")
        host = short_tmp_path / "fake-host.json"
        daemon = InProcDaemon(
            short_tmp_path, make_drivers=lambda: [fake.FakeDriver(state_file=host)]
        )
        try:
            yield daemon
        finally:
            await daemon.stop()


@dataclass(frozen=True)
class RecordedCall:
    """One hook call seen by :class:`HookRecorder`."""

    name: str
    kwargs: dict[str, Any]


class HookRecorder:
    """Records every hook call of a plugin manager (pytest ``HookRecorder`` style)."""

    def __init__(self) -> None:
        self.calls: list[RecordedCall] = []
        self._undo: Callable[[], None] | None = None

    def attach(self, pm: Any) -> None:
        def before(name: str, impls: Any, kwargs: dict[str, Any]) -> None:
            self.calls.append(RecordedCall(name, dict(kwargs)))

        def after(outcome: Any, name: str, impls: Any, kwargs: dict[str, Any]) -> None:
            return None

        self._undo = pm.add_hookcall_monitoring(before, after)

    def names(self) -> list[str]:
        return [c.name for c in self.calls]

    def getcalls(self, name: str) -> list[RecordedCall]:
        return [c for c in self.calls if c.name == name]

    def close(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None


@pytest.fixture
def hook_recorder() -> Iterator[HookRecorder]:
    """A :class:`HookRecorder`; call ``hook_recorder.attach(engine.pm)``.

    * Name: ``hook_recorder``
    * Scope: function
    * Depends: nothing
    """
    recorder = HookRecorder()
    yield recorder
    recorder.close()


@pytest.fixture
def make_hooks(engine_config: Any) -> Callable[..., Any]:
    """Build a :class:`overlayd.plugins.Hooks` over the given driver instances.

    * Name: ``make_hooks``
    * Scope: function
    * Depends: ``engine_config``
    """
    from overlayd.plugins import DriverContext
    from overlayd.plugins import Hooks
    from overlayd.plugins import make_plugin_manager
    from overlayd.plugins import register_drivers

    def build(*drivers: object) -> Hooks:
        pm = make_plugin_manager()
        register_drivers(pm, list(drivers))
        hooks = Hooks(pm)
        hooks.configure(engine_config)
        hooks.startup(DriverContext(data_dir=None, emit=lambda e: None))
        return hooks

    return build


@pytest.fixture
def short_tmp_path() -> Iterator[Path]:
    """A new, empty directory with a short path, removed after the test.

    * Name: ``short_tmp_path``
    * Scope: function
    * Depends: nothing

    For Unix sockets: a socket's path must fit in 108 bytes, which a path under
    pytest's ``tmp_path`` can exceed. On Linux it is under ``/tmp``.
    """
    import shutil
    import tempfile

    # mkdtemp makes a new private (0700) directory; /tmp only keeps the path short.
    short = None if sys.platform == "win32" else "/tmp"  # noqa: S108
    path = Path(tempfile.mkdtemp(prefix="od-", dir=short))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real etcd on loopback, in a temporary directory, killed and removed at the end.

    * Name: ``etcd_server``
    * Scope: function
    * Depends: ``tmp_path_factory``; the ``etcd`` program (Debian ``etcd-server``)

    It is an :class:`overlayd.testing.etcd.EtcdServer`: ``.url`` for clients,
    ``.stop()``/``.start()`` to simulate an outage (the data directory stays).
    """
    import shutil

    if sys.platform == "win32":
        pytest.skip("the etcd test server runs on Linux only")
    else:
        from overlayd.testing.etcd import EtcdServer
        from overlayd.testing.etcd import etcd_binary

        if etcd_binary() is None:
            pytest.skip("etcd is not installed (Debian package etcd-server)")
        workdir = tmp_path_factory.mktemp("etcd")
        server = EtcdServer(workdir)
        server.start()
        try:
            yield server
        finally:
            server.kill()
            shutil.rmtree(workdir, ignore_errors=True)
