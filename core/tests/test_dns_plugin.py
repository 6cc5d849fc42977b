"""The built-in DNS plugin serves what the engine records, over real DNS queries."""

from __future__ import annotations

from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import pytest

from overlayd.config import DnsSettings
from overlayd.config import EngineConfig
from overlayd.config import EngineSettings
from overlayd.dns.plugin import DnsPlugin
from overlayd.engine import Engine
from overlayd.hookspecs import hookimpl
from overlayd.model import DnsRecord
from overlayd.testing.dnsquery import free_port
from overlayd.testing.dnsquery import query
from overlayd.testing.nodes import lone_engine
from overlayd_fake.driver import FakeDriver


async def test_engine_records_are_served_and_removed() -> None:
    port = free_port()
    settings = DnsSettings(listen=[f"127.0.0.1:{port}"], listen_on_gateways=False, forward=False)
    cfg = EngineConfig(drivers=[], dns=settings, engine=EngineSettings(health_interval_secs=0))
    async with lone_engine(cfg, [FakeDriver()], "web", plugins=[DnsPlugin(settings)]) as eng:
        att = await eng.attach({"platform": "linux_pid", "pid": 77}, "web")
        await eng.register_dns("db", "10.200.9.9")

        answer = await query("web.prod.local.", port)
        assert answer.rcode() == dns.rcode.NOERROR
        assert {r.address for r in answer.answer[0]} == {str(att.ip)}
        answer = await query("pid-77.web.prod.local.", port)
        assert {r.address for r in answer.answer[0]} == {str(att.ip)}
        answer = await query("db.prod.local.", port)
        assert {r.address for r in answer.answer[0]} == {"10.200.9.9"}

        await eng.detach({"platform": "linux_pid", "pid": 77})
        await eng.unregister_dns("db")
        for name in ("web.prod.local.", "db.prod.local."):
            answer = await query(name, port)
            assert answer.rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize("restart", [True])
async def test_records_survive_restart(tmp_path: object, restart: bool) -> None:
    from pathlib import Path

    port = free_port()
    settings = DnsSettings(listen=[f"127.0.0.1:{port}"], listen_on_gateways=False, forward=False)
    cfg = EngineConfig(
        data_dir=Path(str(tmp_path)),
        drivers=[],
        dns=settings,
        engine=EngineSettings(health_interval_secs=0),
    )
    fake = FakeDriver()
    async with lone_engine(cfg, [fake], plugins=[DnsPlugin(settings)], slice_cidr=None) as eng:
        await eng.register_dns("db", "10.200.9.9")
    async with Engine(cfg, drivers=[fake], plugins=[DnsPlugin(settings)]):
        answer = await query("db.prod.local.", port)
        assert {r.address for r in answer.answer[0]} == {"10.200.9.9"}


class _Changes:
    """A plugin on the per-record hook only (as third-party plugins are)."""

    name = "changes"

    def __init__(self) -> None:
        self.added: list[object] = []

    @hookimpl
    def overlayd_dns_records_changed(self, added: list[object], removed: list[object]) -> None:
        self.added += added


class _Loaded(_Changes):
    """A plugin on both hooks: given the load in bulk, then the changes."""

    name = "loaded"

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[list[object]] = []

    @hookimpl
    def overlayd_dns_records_loaded(self, records: list[object]) -> None:
        self.loaded.append(list(records))


async def test_the_load_goes_in_bulk_to_the_bulk_hook_and_as_models_to_the_others(
    tmp_path: Path,
) -> None:
    port = free_port()
    settings = DnsSettings(listen=[f"127.0.0.1:{port}"], listen_on_gateways=False, forward=False)
    cfg = EngineConfig(
        data_dir=tmp_path, drivers=[], dns=settings, engine=EngineSettings(health_interval_secs=0)
    )
    fake = FakeDriver()
    async with lone_engine(cfg, [fake], slice_cidr=None) as eng:
        await eng.register_dns("db", "10.200.9.9")
        await eng.register_dns("db", "fd00::9")
        await eng.register_dns("Web", "10.200.9.10")
    changes, loaded = _Changes(), _Loaded()
    plugins = [DnsPlugin(settings), changes, loaded]
    async with Engine(cfg, drivers=[fake], plugins=plugins) as eng:
        want = {("db", "10.200.9.9"), ("db", "fd00::9"), ("Web", "10.200.9.10")}
        assert all(isinstance(r, DnsRecord) for r in changes.added)
        assert {(r.name, str(r.ip)) for r in changes.added} == want  # type: ignore[attr-defined]
        assert len(loaded.loaded) == 1 and not loaded.added  # in bulk, not record by record
        assert {(r.name, str(r.ip)) for r in loaded.loaded[0]} == want  # type: ignore[attr-defined]
        assert all(r.source == "manual" for r in loaded.loaded[0])  # type: ignore[attr-defined]
        for name, address in (("db", "10.200.9.9"), ("web", "10.200.9.10")):
            answer = await query(f"{name}.prod.local.", port)
            assert {r.address for r in answer.answer[0]} == {address}
        answer = await query("db.prod.local.", port, "AAAA")
        assert {r.address for r in answer.answer[0]} == {"fd00::9"}
        await eng.register_dns("api", "10.200.9.11")  # after the load: per record, to both
        assert [r.name for r in loaded.added] == ["api"]  # type: ignore[attr-defined]
        assert changes.added[-1].name == "api"  # type: ignore[attr-defined]
