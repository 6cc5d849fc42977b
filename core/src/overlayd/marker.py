"""The host-level network marker, ``{data_dir}/agent_network.json``.

ZLayer records the host-level networks it provisions (the Windows HCN overlay
network, dedicated per-service WireGuard transports) in this file so that they
are reused across daemon restarts and deleted only on a purge. overlayd reads
and writes the same file, byte-compatible with ZLayer (docs/reference/zlayer.rst
§6)::

    {"version": 1, "networks": [{"owner": "base", "kind": "hcn-internal",
      "name": ..., "id": ..., "subnet": ..., "wg_port"?: ...,
      "wg_private_key"?: ..., "wg_public_key"?: ..., "interface"?: ...}]}

Reading is tolerant, as in ZLayer: a missing file is an empty marker, an older
file without the WireGuard fields loads, and a corrupt or unreadable file is an
empty marker (with a warning) because the marker is a cache that reconcile can
rebuild from the host. overlayd goes further than ZLayer in two places: one bad
entry does not discard the others, and unknown fields written by a newer ZLayer
are kept when the file is saved again.

The file holds WireGuard private keys, so it is written atomically with mode 0600.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from typing import Final
from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import ValidationError
from pydantic import field_validator

from overlayd.errors import StateError
from overlayd.files import ensure_private_dir
from overlayd.files import write_file_atomic

__all__ = [
    "MARKER_FILENAME",
    "MARKER_VERSION",
    "OWNER_BASE",
    "ManagedNetwork",
    "MarkerKind",
    "NetworkMarker",
    "load",
    "marker_path",
    "owner_for_service",
    "save",
]

log = logging.getLogger(__name__)

#: File name of the marker inside the data directory.
MARKER_FILENAME: Final = "agent_network.json"
#: Schema version ZLayer writes (``CURRENT_VERSION`` in its network_state.rs).
MARKER_VERSION: Final = 1
#: Owner of the node's single shared base overlay network.
OWNER_BASE: Final = "base"
_SERVICE_PREFIX: Final = "service:"

#: Which API created (and must delete) the network.
MarkerKind = Literal["hcn-internal", "hcn-transparent", "wg-dedicated"]


def owner_for_service(service: str) -> str:
    """The ``owner`` of a service's dedicated network: ``service:<name>``."""
    if not service:
        raise ValueError("a service name must not be empty")
    return f"{_SERVICE_PREFIX}{service}"


def marker_path(data_dir: Path) -> Path:
    """``{data_dir}/agent_network.json``."""
    return Path(data_dir) / MARKER_FILENAME


class ManagedNetwork(BaseModel):
    """One host-level network the node manages (ZLayer ``ManagedNetwork``)."""

    # Unknown fields from a newer writer are kept and written back.
    model_config = ConfigDict(extra="allow")

    #: ``base`` or ``service:<name>``; the upsert key.
    owner: str
    #: Which backend API owns the object, so uninstall knows how to delete it.
    kind: MarkerKind
    #: Human-readable network name, e.g. ``zlayer-overlay``.
    name: str
    #: Host-addressable id: the HCN network GUID, or the device name.
    id: str
    #: CIDR the network was created with (informational).
    subnet: str
    #: Dedicated WireGuard listen port (per-service transports only).
    wg_port: int | None = Field(default=None, ge=0, le=65535)
    #: Dedicated WireGuard private key, base64. Kept out of ``repr``.
    wg_private_key: str | None = Field(default=None, repr=False)
    #: Dedicated WireGuard public key, base64.
    wg_public_key: str | None = None
    #: Dedicated interface name.
    interface: str | None = None

    @field_validator("owner")
    @classmethod
    def _check_owner(cls, owner: str) -> str:
        if owner == OWNER_BASE:
            return owner
        if owner.startswith(_SERVICE_PREFIX) and len(owner) > len(_SERVICE_PREFIX):
            return owner
        raise ValueError(f"owner must be 'base' or 'service:<name>', not {owner!r}")


class NetworkMarker(BaseModel):
    """The whole marker file (ZLayer ``NetworkState``)."""

    model_config = ConfigDict(extra="allow")

    #: On-disk schema version (1).
    version: int = MARKER_VERSION
    #: Managed networks, keyed in practice by ``owner``.
    networks: list[ManagedNetwork] = Field(default_factory=list)

    def get(self, owner: str) -> ManagedNetwork | None:
        """The entry of ``owner``, or ``None``."""
        for net in self.networks:
            if net.owner == owner:
                return net
        return None

    def upsert(self, entry: ManagedNetwork) -> None:
        """Insert ``entry`` or replace the entry with the same owner, in place."""
        for i, net in enumerate(self.networks):
            if net.owner == entry.owner:
                self.networks[i] = entry
                # A hand-edited file may list an owner twice; keep one.
                self.networks[i + 1 :] = [
                    n for n in self.networks[i + 1 :] if n.owner != entry.owner
                ]
                return
        self.networks.append(entry)

    def remove(self, owner: str) -> ManagedNetwork | None:
        """Remove and return the entry of ``owner`` (every copy), or ``None``."""
        found = self.get(owner)
        if found is not None:
            self.networks = [n for n in self.networks if n.owner != owner]
        return found

    def to_json_bytes(self) -> bytes:
        """The file's bytes, as ZLayer writes them.

        ``serde_json::to_vec_pretty``: two-space indent, ``": "`` separators,
        raw UTF-8, no trailing newline; ``None`` fields are omitted.
        """
        doc = self.model_dump(mode="json", exclude_none=True)
        return json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")


def _warn_empty(path: Path, why: str) -> NetworkMarker:
    log.warning(
        "Ignoring the network marker %s: %s. Continuing with an empty marker; "
        "reconcile re-adopts host networks, and the next save rewrites the file.",
        path,
        why,
    )
    return NetworkMarker()


def load(path: Path) -> NetworkMarker:
    """Read the marker; missing → empty; corrupt or unreadable → empty + warning.

    Entries that do not validate are skipped one by one (with a warning naming
    the owner and the problem, never a key), so one bad entry does not lose the
    others.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return NetworkMarker()
    except OSError as exc:
        return _warn_empty(path, f"it cannot be read ({exc.strerror or exc})")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _warn_empty(path, f"it is not valid JSON ({exc})")
    if not isinstance(doc, dict):
        return _warn_empty(path, "its top level is not a JSON object")
    version = doc.get("version", MARKER_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        return _warn_empty(path, f"its version {version!r} is not an integer")
    if version > MARKER_VERSION:
        log.warning(
            "The network marker %s has version %d, newer than %d; reading the "
            "fields this overlayd knows.",
            path,
            version,
            MARKER_VERSION,
        )
    entries = doc.get("networks", [])
    if not isinstance(entries, list):
        return _warn_empty(path, "its 'networks' is not a list")
    networks: list[ManagedNetwork] = []
    for index, entry in enumerate(entries):
        try:
            networks.append(ManagedNetwork.model_validate(entry))
        except ValidationError as exc:
            owner = entry.get("owner") if isinstance(entry, dict) else None
            # include_input=False: the input may hold a private key.
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}"
                for err in exc.errors(include_input=False, include_url=False)
            )
            log.warning(
                "Skipping entry %d (owner %r) of the network marker %s: %s.",
                index,
                owner,
                path,
                problems,
            )
    extra: dict[str, Any] = {k: v for k, v in doc.items() if k not in ("version", "networks")}
    return NetworkMarker(version=version, networks=networks, **extra)


def save(path: Path, marker: NetworkMarker) -> None:
    """Write the marker atomically with mode 0600 (parent created 0700)."""
    path = Path(path)
    data = marker.to_json_bytes()
    if not path.parent.exists():
        ensure_private_dir(path.parent)
    try:
        write_file_atomic(path, data, mode=0o600)
    except OSError as exc:
        raise StateError(
            f"cannot write the network marker {path}: {exc.strerror or exc}; "
            "check free space and the data directory's permissions."
        ) from exc
