"""Loading the fake host: a folded state file and one with a journal give the same host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from overlayd.config import EngineConfig
from overlayd.errors import ConfigError
from overlayd.model import LinuxPidHandle
from overlayd.testing.nodes import lone_engine
from overlayd_fake.driver import FakeDriver
from overlayd_fake.host import HostJournal
from overlayd_fake.host import journal_path


async def test_a_folded_file_and_a_journal_load_the_same_host(
    engine_config: EngineConfig, tmp_path: Path
) -> None:
    state = tmp_path / "host.json"
    fake = FakeDriver(state_file=state)
    async with lone_engine(engine_config, [fake], "web") as eng:
        for pid in range(1, 4):
            await eng.attach({"platform": "linux_pid", "pid": pid}, "web")
        await eng.add_peer("B" * 43 + "=", "192.0.2.9:51820", "10.201.0.0/24", 25)
        fake.kill("linux_pid:2")
        assert journal_path(state).read_text()  # the changes are in the journal
        from_journal = HostJournal(state)
        journalled = from_journal.load()
        expected = fake.host.to_json()
    assert journalled.to_json() == expected
    # The engine's stop folded the journal into the file: the direct parse.
    assert not journal_path(state).exists() or not journal_path(state).read_text()
    folded = HostJournal(state)
    host = folded.load()
    assert host.to_json() == expected
    assert host.dead == {"linux_pid:2"} and len(host.attachments) == 3
    assert folded.saved.keys() == from_journal.saved.keys() == host.flat().keys()


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"attachments": {"x": 5}}',  # an attachment that is not an object
        '{"dead": "linux_pid:1"}',
        '{"dead": [1]}',  # an array, but not of handle keys
        '{"dead": [[1]]}',
        '{"peers": {"wg0": 5}}',  # a device whose peers are not an object
    ],
)
@pytest.mark.parametrize("journalled", [False, True])
def test_a_bad_state_file_is_a_config_error_naming_it(
    tmp_path: Path, text: str, journalled: bool
) -> None:
    state = tmp_path / "host.json"
    state.write_text(text)
    if journalled:  # the journal's replay path, not the folded file's
        journal_path(state).write_text('{"set": [], "del": []}\n')
    with pytest.raises(ConfigError, match=f"{state}.* is unreadable"):
        HostJournal(state).load()


@pytest.mark.parametrize(
    "entry",
    [
        '{"set": [["devices"]]}',  # a change without its key and value
        '{"del": 5}',
        '{"set": [["peers", "wg0", {}]]}',  # a peer key that is not (device, key)
        '{"set": [["nonsense", "k", {}]]}',  # no such table
    ],
)
def test_a_bad_journal_entry_is_a_config_error(tmp_path: Path, entry: str) -> None:
    state = tmp_path / "host.json"
    state.write_text("{}")
    journal_path(state).write_text(entry + "\n" + '{"set": [], "del": []}\n')
    with pytest.raises(ConfigError, match=r"corrupt|unreadable"):
        HostJournal(state).load()


@pytest.mark.parametrize("journalled", [False, True])
async def test_stored_attachments_are_validated_when_read(
    engine_config: EngineConfig, tmp_path: Path, journalled: bool
) -> None:
    """The driver never reads an attachment's value: a load leaves them as stored.

    A stored object that is not an attachment is reported when read, naming
    it; the driver still sees that it exists, and detach removes it.
    """
    state = tmp_path / "host.json"
    fake = FakeDriver(state_file=state)
    async with lone_engine(engine_config, [fake], "web") as eng:
        await eng.attach({"platform": "linux_pid", "pid": 7}, "web")
        att = fake.host.attachments["linux_pid:7"]
    doc = json.loads(state.read_text())
    doc["attachments"]["linux_pid:8"] = {"handle": 5}
    state.write_text(json.dumps(doc))
    if journalled:
        journal_path(state).write_text('{"set": [], "del": []}\n')
    host = HostJournal(state).load()
    held = host.attachments.stored()
    assert type(held["linux_pid:7"]) is dict and type(held["linux_pid:8"]) is dict
    assert sorted(host.attachments) == ["linux_pid:7", "linux_pid:8"]
    assert host.to_json()["attachments"] == doc["attachments"]  # written back as stored
    assert host.attachments["linux_pid:7"] == att
    assert host.attachments["linux_pid:7"] is held["linux_pid:7"]  # validated once
    with pytest.raises(ConfigError, match="attachment 'linux_pid:8' is not valid"):
        host.attachments["linux_pid:8"]
    restarted = FakeDriver(state_file=state)
    bad = att.model_copy(update={"handle": LinuxPidHandle(pid=8)})
    assert restarted.overlayd_attachment_alive(attachment=bad)
    assert restarted.overlayd_detach(attachment=bad) is True
    assert "linux_pid:8" not in restarted.host.attachments
    assert "linux_pid:8" not in FakeDriver(state_file=state).host.attachments
