"""The fake host's objects and how they survive a daemon restart.

:class:`FakeHost` is what a real host would hold in its kernel: devices,
peers, attachments, dead workloads, NAT rules. With ``[drivers.fake]
state_file``, :class:`HostJournal` keeps it across restarts: each change is
appended (and fsynced) to ``<state_file>.journal`` as the objects it set or
deleted, and the journal is folded into the state file (written atomically)
once it outgrows it, so a change costs its own size rather than the whole
host's, and folded at shutdown too, so a daemon stopped gracefully starts
from one document. A torn last line (a crash while appending) is dropped at
load.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from collections.abc import MutableMapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Final
from typing import cast

from pydantic import TypeAdapter
from pydantic import ValidationError
from typing_extensions import TypedDict

from overlayd.errors import ConfigError
from overlayd.model import Attachment
from overlayd.model import Device
from overlayd.model import MasqueradeRule
from overlayd.model import PeerStatus
from overlayd.model import PortMapping

__all__ = ["FakeHost", "HostJournal", "Recorded", "journal_path"]


class Recorded(MutableMapping[str, Attachment]):
    """The host's attachments by handle key; each loaded one validated when first read.

    The driver itself only asks which attachments exist (attach, detach,
    reconcile and the liveness check look at keys), so an attachment loaded
    from the state file stays the JSON object the file holds until something
    reads its value (a test, :meth:`FakeHost.__eq__`). Validating all of
    them at load was a third of loading a host of 10,000 attachments, on the
    path of the daemon's start-up (docs/design-notes.rst, "Footprint of a
    large node"). An object that is not a valid attachment is reported when
    it is read, as a :class:`~overlayd.errors.ConfigError` naming it.
    """

    __slots__ = ("_held",)

    def __init__(self, held: dict[str, Attachment | dict[str, Any]] | None = None) -> None:
        #: Models, and the stored JSON objects of those not read yet.
        self._held: dict[str, Attachment | dict[str, Any]] = {} if held is None else held

    def __getitem__(self, key: str) -> Attachment:
        value = self._held[key]
        if type(value) is dict:
            try:
                value = self._held[key] = Attachment.model_validate(value)
            except ValidationError as exc:
                raise ConfigError(
                    f"the fake host's attachment {key!r} is not valid: {exc}"
                ) from None
        return cast(Attachment, value)

    def __setitem__(self, key: str, value: Attachment) -> None:
        self._held[key] = value

    def __delitem__(self, key: str) -> None:
        del self._held[key]

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def __iter__(self) -> Iterator[str]:
        return iter(self._held)

    def __len__(self) -> int:
        return len(self._held)

    def __repr__(self) -> str:
        return f"Recorded({len(self._held)} attachments)"

    def stored(self) -> dict[str, Attachment | dict[str, Any]]:
        """Every attachment as held: a model, or the JSON object it was loaded from.

        What the journal compares (by identity) and writes; nothing is validated.
        """
        return self._held


@dataclass
class FakeHost:
    """The fake host's objects: what a real host would have in the kernel."""

    devices: dict[str, Device] = field(default_factory=dict)
    #: device name -> public key -> peer
    peers: dict[str, dict[str, PeerStatus]] = field(default_factory=dict)
    #: handle key -> the attachment the attach returned
    attachments: Recorded = field(default_factory=Recorded)
    #: handle keys whose workload has died
    dead: set[str] = field(default_factory=set)
    masquerades: dict[str, MasqueradeRule] = field(default_factory=dict)
    port_mappings: dict[str, PortMapping] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": {k: v.model_dump(mode="json") for k, v in self.devices.items()},
            "peers": {
                d: {k: p.model_dump(mode="json") for k, p in ps.items()}
                for d, ps in self.peers.items()
            },
            "attachments": {k: _dump(v) for k, v in self.attachments.stored().items()},
            "dead": sorted(self.dead),
            "masquerades": {k: v.model_dump(mode="json") for k, v in self.masquerades.items()},
            "port_mappings": {k: v.model_dump(mode="json") for k, v in self.port_mappings.items()},
        }

    def flat(self) -> dict[tuple[str, Any], Any]:
        """Every object under ``(table, key)`` (the models are frozen: compare by identity)."""
        out: dict[tuple[str, Any], Any] = {}
        for table in _TABLES:
            for key, value in self._table(table).items():
                out[(table, key)] = value
        for device, peers in self.peers.items():
            out[("peer_devices", device)] = _PRESENT
            for key, peer in peers.items():
                out[("peers", (device, key))] = peer
        for key in self.dead:
            out[("dead", key)] = _PRESENT
        return out

    def held(self, table: str, key: Any) -> Any:
        """The value of ``(table, key)`` in ``host.flat()``, or ``None``."""
        if table == "dead":
            return _PRESENT if key in self.dead else None
        if table == "peer_devices":
            return _PRESENT if key in self.peers else None
        if table == "peers":
            return self.peers.get(key[0], {}).get(key[1])
        return self._table(table).get(key)

    def _table(self, table: str) -> dict[Any, Any]:
        """One of :data:`_TABLES` as held (attachments not read yet stay JSON objects)."""
        if table == "attachments":
            return self.attachments.stored()
        return cast(dict[Any, Any], getattr(self, table))

    @classmethod
    def from_doc(cls, doc: _HostDoc) -> FakeHost:
        """A host from its state file validated whole (:data:`_HOST_DOC`)."""
        return cls(
            devices=doc.get("devices", {}),
            peers=doc.get("peers", {}),
            attachments=Recorded(cast(dict[str, Any], doc.get("attachments", {}))),
            dead=set(doc.get("dead", [])),
            masquerades=doc.get("masquerades", {}),
            port_mappings=doc.get("port_mappings", {}),
        )


class _HostDoc(TypedDict, total=False):
    """The state file (``FakeHost.to_json``), as pydantic validates it in one call."""

    devices: dict[str, Device]
    peers: dict[str, dict[str, PeerStatus]]
    #: Left as JSON objects until read (:class:`Recorded`).
    attachments: dict[str, dict[str, Any]]
    dead: list[str]
    masquerades: dict[str, MasqueradeRule]
    port_mappings: dict[str, PortMapping]


#: The whole state file, parsed and validated by pydantic-core from its text.
_HOST_DOC: Final = TypeAdapter(_HostDoc)
#: The tables of :class:`FakeHost` that map a key to a model.
_TABLES: Final = ("devices", "attachments", "masquerades", "port_mappings")
#: The value of a ``dead`` key, and of a device in ``peers`` (which may have none).
_PRESENT: Final = True
#: The journal is folded into the state file once larger than this and than the file.
_JOURNAL_MIN: Final = 1 << 20


def journal_path(state_file: Path) -> Path:
    """Where the journal of ``state_file`` is kept."""
    return state_file.with_name(state_file.name + ".journal")


def _dump(value: Any) -> Any:
    """The JSON of a value of ``FakeHost.flat()``: a stored attachment not read yet is its own."""
    if value is _PRESENT or type(value) is dict:
        return value
    return value.model_dump(mode="json")


def _json_key(key: Any) -> Any:
    return list(key) if isinstance(key, tuple) else key


def _key_of(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _flatten_json(data: dict[str, Any]) -> dict[tuple[str, Any], Any]:
    """``FakeHost.to_json`` output keyed like :meth:`FakeHost.flat`, values as JSON."""
    out: dict[tuple[str, Any], Any] = {}
    for table in _TABLES:
        for key, value in data.get(table, {}).items():
            out[(table, key)] = value
    for device, peers in data.get("peers", {}).items():
        out[("peer_devices", device)] = _PRESENT
        for key, peer in peers.items():
            out[("peers", (device, key))] = peer
    for key in data.get("dead", []):
        out[("dead", key)] = _PRESENT
    return out


def _check_shape(data: Any) -> None:
    """Raise :class:`ValueError` unless ``data`` has the tables ``FakeHost.to_json`` writes."""
    if not isinstance(data, dict):
        raise ValueError(f"the state is a JSON {type(data).__name__}, not an object")
    for table in (*_TABLES, "peers"):
        if not isinstance(data.get(table, {}), dict):
            raise ValueError(f"{table!r} is not a JSON object")
    for device, peers in data.get("peers", {}).items():
        if not isinstance(peers, dict):
            raise ValueError(f"the peers of {device!r} are not a JSON object")
    dead = data.get("dead", [])
    if not isinstance(dead, list) or not all(isinstance(key, str) for key in dead):
        raise ValueError("'dead' is not a JSON array of strings")


def _unflatten_json(flat: dict[tuple[str, Any], Any]) -> dict[str, Any]:
    data: dict[str, Any] = {table: {} for table in _TABLES}
    data["peers"] = {}
    data["dead"] = []
    for (table, key), value in flat.items():
        if table == "peer_devices":
            data["peers"].setdefault(key, {})
        elif table == "peers":
            data["peers"].setdefault(key[0], {})[key[1]] = value
        elif table == "dead":
            data["dead"].append(key)
        else:
            data[table][key] = value
    return data


class HostJournal:
    """The fake host kept in ``state_file`` and its journal (the module docstring).

    :meth:`load` reads what a previous daemon left; :meth:`save` appends what
    changed since the last save (objects compared by identity: the models
    are frozen, so a change is a new object) and folds the journal into the
    state file once it outgrows it.
    """

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        #: What the state file and its journal hold (``FakeHost.flat``).
        self.saved: dict[tuple[str, Any], Any] = {}
        self._journal_bytes = 0
        self._snapshot_bytes = 0

    def load(self) -> FakeHost:
        """The host the state file and its journal hold (empty when there are none)."""
        journal = journal_path(self.state_file)
        try:
            text: str | None = self.state_file.read_text()
        except FileNotFoundError:
            text = None
        except OSError as exc:
            raise self._unreadable(exc) from exc
        try:
            lines = journal.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        except OSError as exc:
            raise ConfigError(f"fake driver journal {journal} is unreadable: {exc}") from exc
        if text is not None and not lines:
            # A folded state (a clean stop folds the journal): the file is
            # parsed straight into the models by pydantic-core, without a
            # dict of it first (about half the time at 10,000 attachments).
            try:
                host = FakeHost.from_doc(_HOST_DOC.validate_json(text))
            except ValidationError as exc:
                raise self._unreadable(exc) from exc
            self._snapshot_bytes = len(text)
            self.saved = host.flat()
            return host
        try:
            data = json.loads(text) if text is not None else {}
            _check_shape(data)
        except ValueError as exc:
            raise self._unreadable(exc) from exc
        if text is not None:
            self._snapshot_bytes = len(text)
        if not data and not lines:
            return FakeHost()
        flat = _flatten_json(data)
        for number, line in enumerate(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                if number == len(lines) - 1:
                    # A crash while appending (the change was never acknowledged):
                    # cut the torn line so the next change does not follow it.
                    lines.pop()
                    with open(journal, "r+", encoding="utf-8") as fh:
                        fh.truncate(sum(len(kept) + 1 for kept in lines))
                    break
                raise ConfigError(f"fake driver journal {journal} is corrupt") from None
            try:
                for table, key in entry.get("del", []):
                    flat.pop((table, _key_of(key)), None)
                for table, key, value in entry.get("set", []):
                    flat[(table, _key_of(key))] = value
            except (AttributeError, TypeError, ValueError):
                raise ConfigError(
                    f"fake driver journal {journal} is corrupt (line {number + 1})"
                ) from None
        try:
            host = FakeHost.from_doc(_HOST_DOC.validate_python(_unflatten_json(flat)))
        except (ValidationError, TypeError, KeyError) as exc:
            raise self._unreadable(exc) from exc
        self.saved = host.flat()
        self._journal_bytes = sum(len(line) + 1 for line in lines)
        return host

    def _unreadable(self, exc: Exception) -> ConfigError:
        return ConfigError(f"fake driver state file {self.state_file} is unreadable: {exc}")

    def save(self, host: FakeHost, touched: Sequence[tuple[str, Any]] | None = None) -> None:
        """Journal what changed since the last save (``host.flat()`` compared by identity).

        ``touched``: the only ``(table, key)`` pairs (keys of ``host.flat()``)
        the caller changed, so that an attach or detach compares those rather
        than the whole host (the fill of 10,000 attachments slowed down with
        the host's size). ``None`` compares everything.
        """
        path = self.state_file
        saved = self.saved
        if touched is None:
            current = host.flat()
            sets = [
                [table, _json_key(key), _dump(value)]
                for (table, key), value in current.items()
                if saved.get((table, key)) is not value
            ]
            dels = [[table, _json_key(key)] for (table, key) in saved.keys() - current.keys()]
        else:
            now = {pair: host.held(*pair) for pair in dict.fromkeys(touched)}
            sets = [
                [table, _json_key(key), _dump(value)]
                for (table, key), value in now.items()
                if value is not None and saved.get((table, key)) is not value
            ]
            dels = [
                [table, _json_key(key)]
                for (table, key), value in now.items()
                if value is None and (table, key) in saved
            ]
        if not sets and not dels:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"set": sets, "del": dels}, separators=(",", ":")) + "\n"
        if self._journal_bytes + len(line) > max(_JOURNAL_MIN, self._snapshot_bytes):
            self._compact(path, host)
        else:
            with open(journal_path(path), "a", encoding="utf-8") as fh:
                try:
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
                except BaseException:
                    # A full disk: drop the torn line, so later lines follow whole ones.
                    with contextlib.suppress(OSError):
                        fh.truncate(self._journal_bytes)
                    raise
            self._journal_bytes += len(line)
        if touched is None:
            self.saved = current
        else:
            for (table, key), value in now.items():
                if value is None:
                    saved.pop((table, key), None)
                else:
                    saved[(table, key)] = value

    def fold(self, host: FakeHost) -> None:
        """Fold the journal into the state file now, if it holds anything.

        The driver does it at shutdown: the next start then reads one JSON
        document instead of replaying up to a state file's worth of journal
        lines (a host of 10,000 attachments: about 0.3 s of a start-up).
        """
        if self._journal_bytes:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            self._compact(self.state_file, host)
            self.saved = host.flat()

    def _compact(self, path: Path, host: FakeHost) -> None:
        """Write the whole host to the state file, atomically, and empty the journal.

        A crash between the two leaves a journal whose entries, replayed over
        the new state file, end in the same state (each sets or deletes a whole
        object, in order).
        """
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fake-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                text = json.dumps(host.to_json())
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with open(journal_path(path), "w", encoding="utf-8") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        self._snapshot_bytes = len(text)
        self._journal_bytes = 0
