"""The ZLayer host-level network marker, agent_network.json."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from overlayd import marker
from overlayd.errors import StateError
from overlayd.marker import OWNER_BASE
from overlayd.marker import ManagedNetwork
from overlayd.marker import NetworkMarker
from overlayd.marker import owner_for_service

PRIV = "cHJpdmF0ZS1rZXktYjY0"
PUB = "cHVibGljLWtleS1iNjQ="


def _base(id_: str = "5f0b0b43-9c1f-4e43-9b8e-6d7d3f1a2b3c") -> ManagedNetwork:
    return ManagedNetwork(
        owner=OWNER_BASE,
        kind="hcn-internal",
        name="zlayer-overlay",
        id=id_,
        subnet="10.200.0.0/28",
    )


def _dedicated() -> ManagedNetwork:
    return ManagedNetwork(
        owner=owner_for_service("web"),
        kind="wg-dedicated",
        name="zl-web0",
        id="zl-web0",
        subnet="10.201.0.0/24",
        wg_port=51823,
        wg_private_key=PRIV,
        wg_public_key=PUB,
        interface="zl-web0",
    )


# serde_json::to_vec_pretty of ZLayer's NetworkState for the same two entries.
GOLDEN = b"""{
  "version": 1,
  "networks": [
    {
      "owner": "base",
      "kind": "hcn-internal",
      "name": "zlayer-overlay",
      "id": "5f0b0b43-9c1f-4e43-9b8e-6d7d3f1a2b3c",
      "subnet": "10.200.0.0/28"
    },
    {
      "owner": "service:web",
      "kind": "wg-dedicated",
      "name": "zl-web0",
      "id": "zl-web0",
      "subnet": "10.201.0.0/24",
      "wg_port": 51823,
      "wg_private_key": "cHJpdmF0ZS1rZXktYjY0",
      "wg_public_key": "cHVibGljLWtleS1iNjQ=",
      "interface": "zl-web0"
    }
  ]
}"""


def test_golden_bytes(tmp_path: Path) -> None:
    path = marker.marker_path(tmp_path)
    marker.save(path, NetworkMarker(networks=[_base(), _dedicated()]))
    assert path.name == "agent_network.json"
    assert path.read_bytes() == GOLDEN


def test_empty_marker_bytes() -> None:
    assert NetworkMarker().to_json_bytes() == b'{\n  "version": 1,\n  "networks": []\n}'


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "agent_network.json"
    m = NetworkMarker(networks=[_base(), _dedicated()])
    marker.save(path, m)
    loaded = marker.load(path)
    assert loaded == m
    got = loaded.get("service:web")
    assert got is not None
    assert got.wg_port == 51823
    assert got.wg_private_key == PRIV


def test_older_file_without_wireguard_fields_loads(tmp_path: Path) -> None:
    path = tmp_path / "agent_network.json"
    path.write_text(
        '{"version": 1, "networks": [{"owner": "base", "kind": "hcn-internal",'
        ' "name": "zlayer-overlay", "id": "legacy-guid", "subnet": "10.200.0.0/28"}]}'
    )
    got = marker.load(path).get(OWNER_BASE)
    assert got is not None
    assert got.id == "legacy-guid"
    assert (got.wg_port, got.wg_private_key, got.wg_public_key, got.interface) == (
        None,
        None,
        None,
        None,
    )


def test_missing_version_and_networks_default(tmp_path: Path) -> None:
    path = tmp_path / "agent_network.json"
    path.write_text("{}")
    assert marker.load(path) == NetworkMarker()


def test_missing_file_is_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        m = marker.load(tmp_path / "nope.json")
    assert m.version == 1
    assert m.networks == []
    assert caplog.records == []


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe", b"[1, 2]", b'{"networks": 3}', b'{"version": "x"}'],
    ids=["syntax", "not-utf8", "array", "networks-not-list", "version-not-int"],
)
def test_corrupt_file_is_empty_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "agent_network.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="overlayd.marker"):
        m = marker.load(path)
    assert m == NetworkMarker()
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert str(path) in caplog.text


def test_unreadable_file_is_empty_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agent_network.json"
    path.mkdir()  # reading a directory fails on every platform and as root
    with caplog.at_level(logging.WARNING, logger="overlayd.marker"):
        m = marker.load(path)
    assert m == NetworkMarker()
    assert "cannot be read" in caplog.text


def test_bad_entry_is_skipped_others_kept_key_not_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agent_network.json"
    doc = json.loads(GOLDEN)
    doc["networks"].append(
        {
            "owner": "service:bad",
            "kind": "no-such-kind",
            "name": "x",
            "id": "x",
            "subnet": "10.9.0.0/24",
            "wg_private_key": "SECRET-KEY-MATERIAL",
        }
    )
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="overlayd.marker"):
        m = marker.load(path)
    assert [n.owner for n in m.networks] == ["base", "service:web"]
    assert "service:bad" in caplog.text
    assert "kind" in caplog.text
    assert "SECRET-KEY-MATERIAL" not in caplog.text


def test_unknown_fields_are_preserved(tmp_path: Path) -> None:
    path = tmp_path / "agent_network.json"
    doc = json.loads(GOLDEN)
    doc["networks"][0]["future_field"] = {"a": 1}
    doc["written_by"] = "zlayer 9"
    path.write_text(json.dumps(doc))
    marker.save(path, marker.load(path))
    again = json.loads(path.read_bytes())
    assert again["networks"][0]["future_field"] == {"a": 1}
    assert again["written_by"] == "zlayer 9"


def test_get_upsert_remove() -> None:
    m = NetworkMarker()
    m.upsert(_base("guid-1"))
    m.upsert(_dedicated())
    m.upsert(_base("guid-2"))  # same owner: replaced in place
    assert [n.owner for n in m.networks] == ["base", "service:web"]
    base = m.get(OWNER_BASE)
    assert base is not None
    assert base.id == "guid-2"
    removed = m.remove(OWNER_BASE)
    assert removed is not None
    assert removed.id == "guid-2"
    assert m.get(OWNER_BASE) is None
    assert m.remove("service:nope") is None
    assert [n.owner for n in m.networks] == ["service:web"]


def test_upsert_collapses_duplicate_owners() -> None:
    m = NetworkMarker(networks=[_base("a"), _dedicated(), _base("b")])
    m.upsert(_base("c"))
    assert [(n.owner, n.id) for n in m.networks] == [
        ("base", "c"),
        ("service:web", "zl-web0"),
    ]


@pytest.mark.parametrize("owner", ["", "service:", "svc:web", "Base"])
def test_owner_is_validated(owner: str) -> None:
    with pytest.raises(ValidationError, match="owner must be"):
        ManagedNetwork(owner=owner, kind="hcn-internal", name="n", id="i", subnet="s")


def test_private_key_not_in_repr() -> None:
    net = _dedicated()
    assert PRIV not in repr(net)
    assert PRIV not in repr(NetworkMarker(networks=[net]))
    assert PUB in repr(net)


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_saved_file_is_private_and_atomic(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = marker.marker_path(data)
    old = os.umask(0)
    try:
        marker.save(path, NetworkMarker(networks=[_dedicated()]))
        marker.save(path, NetworkMarker(networks=[_base()]))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    # Only the marker: no temp file left behind by either save.
    assert [p.name for p in data.iterdir()] == ["agent_network.json"]
    assert marker.load(path).networks == [_base()]


def test_failed_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent_network.json"
    marker.save(path, NetworkMarker(networks=[_base()]))
    before = path.read_bytes()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StateError, match="No space left on device"):
        marker.save(path, NetworkMarker(networks=[_dedicated()]))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["agent_network.json"]
