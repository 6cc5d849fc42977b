"""SecretStore: private files, atomic replacement, name validation, redaction."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from overlayd.errors import StateError
from overlayd.secrets import KEYS_DIRNAME
from overlayd.secrets import Secret
from overlayd.secrets import SecretStore
from overlayd.secrets import open_secrets

KEY = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / KEYS_DIRNAME


@pytest.fixture
def store(tmp_path: Path) -> SecretStore:
    return open_secrets(tmp_path / "data")


def test_put_get_delete_round_trip(store: SecretStore) -> None:
    assert store.get("node") is None
    store.put("node", KEY)
    store.put("service:web", KEY.encode())
    got = store.get("node")
    assert got == KEY
    assert isinstance(got, Secret)
    assert store.get_bytes("service:web") == KEY.encode()
    assert store.names() == ["node", "service:web"]
    store.put("node", "other")
    assert store.get("node") == "other"
    store.delete("node")
    store.delete("node")  # absent: not an error
    assert store.get("node") is None
    assert store.names() == ["service:web"]


def test_survives_reopen(tmp_path: Path) -> None:
    open_secrets(tmp_path / "data").put("node", KEY)
    assert open_secrets(tmp_path / "data").get("node") == KEY


@posix_only
def test_files_and_directory_are_private(store: SecretStore, secrets_dir: Path) -> None:
    old = os.umask(0)
    try:
        store.put("node", KEY)
    finally:
        os.umask(old)
    assert store.directory == secrets_dir
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    files = list(secrets_dir.iterdir())
    assert [f.name for f in files] == ["node.key"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


@posix_only
def test_loose_modes_are_tightened(store: SecretStore, secrets_dir: Path) -> None:
    store.put("node", KEY)
    (secrets_dir / "node.key").chmod(0o644)
    secrets_dir.chmod(0o755)
    again = SecretStore(secrets_dir)
    assert again.get("node") == KEY
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((secrets_dir / "node.key").stat().st_mode) == 0o600


def test_failed_write_keeps_old_value_and_leaves_no_temp(
    store: SecretStore, secrets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("node", KEY)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StateError) as info:
        store.put("node", "new-secret-value")
    monkeypatch.undo()
    assert "new-secret-value" not in str(info.value)
    assert "Input/output error" in str(info.value)
    assert store.get("node") == KEY
    assert sorted(p.name for p in secrets_dir.iterdir()) == ["node.key"]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "../x",
        "a/../../etc/passwd",
        "/etc/passwd",
        "a/b",
        "a\\b",
        ".hidden",
        "a..b",
        "a\x00b",
        "-x",
        "x" * 129,
        "name with space",
    ],
    ids=repr,
)
def test_bad_names_are_rejected(store: SecretStore, name: str) -> None:
    with pytest.raises(ValueError, match="invalid secret name"):
        store.put(name, KEY)
    with pytest.raises(ValueError, match="invalid secret name"):
        store.get(name)
    with pytest.raises(ValueError, match="invalid secret name"):
        store.delete(name)


def test_names_ignore_temp_and_foreign_files(store: SecretStore, secrets_dir: Path) -> None:
    store.put("node", KEY)
    (secrets_dir / ".node.key.tmp-abc").write_text("partial")
    (secrets_dir / "README").write_text("x")
    assert store.names() == ["node"]


@posix_only
def test_symlinked_secret_is_not_followed(
    store: SecretStore, secrets_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("not a key")
    (secrets_dir / "node.key").symlink_to(target)
    with pytest.raises(StateError, match="cannot read secret 'node'"):
        store.get("node")


def test_non_utf8_secret_error_does_not_quote_bytes(store: SecretStore) -> None:
    store.put("raw", b"\xff\xfe-raw-secret")
    with pytest.raises(StateError, match="not UTF-8") as info:
        store.get("raw")
    assert "raw-secret" not in str(info.value)
    assert info.value.__cause__ is None
    assert store.get_bytes("raw") == b"\xff\xfe-raw-secret"


def test_secret_is_redacted_in_str_repr_format_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = Secret(KEY)
    assert KEY not in repr(s)
    assert KEY not in str(s)
    assert KEY not in f"{s}"
    assert KEY not in f"{s!r}"
    assert KEY not in "%s" % s  # noqa: UP031 - the logging path
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("key is %s", s)
    assert KEY not in caplog.text
    assert "<redacted>" in caplog.text
    # Still the real value where it is used.
    assert s == KEY
    assert s.reveal() == KEY
    assert type(s.reveal()) is str
    assert ("private_key=" + s).endswith(KEY)
    assert s.encode() == KEY.encode()


def test_secret_values_never_logged(
    store: SecretStore, caplog: pytest.LogCaptureFixture, secrets_dir: Path
) -> None:
    with caplog.at_level(logging.DEBUG):
        store.put("node", KEY)
        if os.name != "nt":
            (secrets_dir / "node.key").chmod(0o644)  # provokes a warning
        assert store.get("node") == KEY
        store.delete("node")
    assert KEY not in caplog.text
