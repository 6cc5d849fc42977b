"""The fake host's state file and journal: what an attach or detach journals."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from overlayd.config import EngineConfig
from overlayd.engine import Engine
from overlayd.testing.nodes import lone_engine
from overlayd_fake.driver import FakeDriver
from overlayd_fake.host import journal_path as _journal_path


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """The fake host's state file (its journal beside it)."""
    return tmp_path / "host.json"


@pytest.fixture
def fake(state: Path) -> FakeDriver:
    return FakeDriver(state_file=state)


def _journal(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _journal_path(path).read_text().splitlines()]


def _pid(pid: int) -> dict[str, Any]:
    return {"platform": "linux_pid", "pid": pid}


@contextlib.asynccontextmanager
async def _restartable(
    engine_config: EngineConfig, fake: FakeDriver, state: Path, *services: str
) -> AsyncIterator[Engine]:
    """A lone engine on ``fake``; once it has stopped, a fake driver started again on
    ``state`` finds the host as the block left it."""
    async with lone_engine(engine_config, [fake], *services) as eng:
        yield eng
        host = fake.host.to_json()
    assert FakeDriver(state_file=state).host.to_json() == host


async def test_attach_and_detach_journal_their_own_objects_and_survive_a_restart(
    engine_config: EngineConfig, state: Path, fake: FakeDriver
) -> None:
    async with _restartable(engine_config, fake, state, "web") as eng:
        for pid in range(1, 6):
            await eng.attach(_pid(pid), "web")
        before = len(_journal(state))
        await eng.attach(_pid(9), "web")
        (entry,) = _journal(state)[before:]
        assert entry == {"set": [["attachments", "linux_pid:9", entry["set"][0][2]]], "del": []}
        await eng.detach(_pid(2))
        assert _journal(state)[-1] == {"set": [], "del": [["attachments", "linux_pid:2"]]}
        fake.kill("linux_pid:3")
        assert _journal(state)[-1] == {"set": [["dead", "linux_pid:3", True]], "del": []}
        # A detach of the dead workload clears both its interfaces and its death.
        await eng.detach(_pid(3))
        saved = dict(fake._journal.saved)
    again = FakeDriver(state_file=state)
    assert again._journal.saved.keys() == saved.keys() == fake.host.flat().keys()


async def test_reconcile_re_applying_the_same_peers_journals_no_peer(
    engine_config: EngineConfig, state: Path, fake: FakeDriver
) -> None:
    key = "A" * 43 + "="
    async with _restartable(engine_config, fake, state) as eng:
        await eng.add_peer(key, "192.0.2.9:51820", "10.201.0.0/24", 25)
        assert len([e for e in _journal(state) if any(s[0] == "peers" for s in e["set"])]) == 1
        before = len(_journal(state))
        await eng.reconcile()
        assert not [e for e in _journal(state)[before:] if any(s[0] == "peers" for s in e["set"])]


async def test_reconcile_journals_what_it_removed(
    engine_config: EngineConfig, state: Path, fake: FakeDriver
) -> None:
    async with _restartable(engine_config, fake, state, "web") as eng:
        await eng.attach(_pid(1), "web")
        await eng.attach(_pid(2), "web")
        # Objects of ours the engine does not know (a crash between host and store).
        stray = fake.host.attachments["linux_pid:2"]
        del eng.attachments["linux_pid:2"]
        bridge = next(d for d in fake.host.devices.values() if d.kind == "bridge")
        fake.host.devices["zl-stray"] = bridge.model_copy(update={"name": "zl-stray"})
        fake.host.peers["zl-stray"] = {}
        fake._save()
        before = len(_journal(state))
        await eng.reconcile()
        # Re-ensured devices are journaled as set (a new object each time), the
        # reconcile's removals in one entry of deletions only.
        (entry,) = [e for e in _journal(state)[before:] if e["del"]]
        assert entry["set"] == []
        assert sorted(map(tuple, entry["del"])) == [
            ("attachments", "linux_pid:2"),
            ("devices", "zl-stray"),
            ("peer_devices", "zl-stray"),
        ]
        assert stray.key not in fake.host.attachments


async def test_a_graceful_stop_folds_the_journal_into_the_state_file(
    engine_config: EngineConfig, state: Path, fake: FakeDriver
) -> None:
    async with _restartable(engine_config, fake, state, "web") as eng:
        await eng.attach(_pid(7), "web")
        assert _journal(state)  # changes are journalled while running
    assert _journal(state) == []
    assert json.loads(state.read_text()) == fake.host.to_json()
