"""The state of the simulated HCN service: objects, handles, faults, persistence.

:class:`ServiceState` holds what :class:`~overlayd_hcn.simulator.SimulatedService`
keeps between calls and the plumbing every simulated function uses (handle
tables, document parsing, queries, the JSON state file, fault injection); the
functions themselves (networks, endpoints, namespaces) are in
:mod:`overlayd_hcn.simulator`.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Final
from typing import NoReturn
from uuid import UUID

from pydantic import TypeAdapter
from pydantic import ValidationError

from overlayd.errors import StateError
from overlayd.files import write_file_atomic
from overlayd_hcn import statefile
from overlayd_hcn._hcn_ctypes import HCN_FUNCTIONS
from overlayd_hcn.errors import E_HANDLE
from overlayd_hcn.errors import E_INVALIDARG
from overlayd_hcn.errors import ERROR_NOT_FOUND
from overlayd_hcn.errors import HCN_E_ENDPOINT_NOT_FOUND
from overlayd_hcn.errors import HCN_E_INVALID_JSON
from overlayd_hcn.errors import HCN_E_INVALID_POLICY
from overlayd_hcn.errors import HCN_E_INVALID_POLICY_TYPE
from overlayd_hcn.errors import HCN_E_MANAGER_STOPPED
from overlayd_hcn.errors import HCN_E_NETWORK_NOT_FOUND
from overlayd_hcn.errors import RPC_S_SERVER_UNAVAILABLE
from overlayd_hcn.errors import error_from_hresult
from overlayd_hcn.errors import error_record
from overlayd_hcn.schema import EndpointPolicy
from overlayd_hcn.schema import HostComputeEndpoint
from overlayd_hcn.schema import HostComputeNamespace
from overlayd_hcn.schema import HostComputeNetwork
from overlayd_hcn.schema import NamespaceType
from overlayd_hcn.schema import NetworkFlags
from overlayd_hcn.schema import NetworkPolicy
from overlayd_hcn.schema import NetworkType
from overlayd_hcn.schema import canonical

__all__ = ["STATE_FILE", "HcnCall", "ServiceState"]

#: File name of the simulator's persisted objects inside ``state_dir``.
STATE_FILE: Final = "hcn-simulator.json"

_HCN_E_REQUEST_UNSUPPORTED: Final = 0x803B0015
_ZERO = UUID(int=0)
_ENDPOINT_POLICIES: TypeAdapter[Any] = TypeAdapter(EndpointPolicy)
_NETWORK_POLICIES: TypeAdapter[Any] = TypeAdapter(NetworkPolicy)
_IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class HcnCall:
    """One call into the simulated DLL, with the exact document sent."""

    #: Export name (``HcnCreateNetwork``, ...).
    function: str
    #: The GUID argument, if the function takes one.
    id: UUID | None = None
    #: The handle argument, if the function takes one.
    handle: int | None = None
    #: The ``Settings`` or ``Query`` string exactly as passed.
    document: str | None = None


@dataclass
class _Fault:
    hresult: int
    remaining: int
    message: str | None


def _get(data: Mapping[str, Any], key: str) -> Any:
    """``data[key]`` matching the key case-insensitively (docs/reference/hcn.rst §2)."""
    lowered = key.lower()
    for name, value in data.items():
        if name.lower() == lowered:
            return value
    return None


def _upper_guid(value: object) -> object:
    return str(value).upper() if isinstance(value, str) else value


class ServiceState:
    """Objects, handles, recorded calls and faults of one simulated HCN service."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        settle_seconds: float = 0.0,
        strict_delete: bool = False,
        v1_not_found: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.state_dir = state_dir
        self.settle_seconds = settle_seconds
        self.strict_delete = strict_delete
        self.v1_not_found = v1_not_found
        #: Every call made, in order.
        self.calls: list[HcnCall] = []
        #: Every call answers ``RPC_S_SERVER_UNAVAILABLE`` while set.
        self.service_down = False
        #: Every call answers ``HCN_E_MANAGER_STOPPED`` while set.
        self.stopping = False
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.RLock()
        self._faults: dict[str, list[_Fault]] = {}
        self._latency: dict[str | None, float] = {}
        self._networks: dict[UUID, HostComputeNetwork] = {}
        self._endpoints: dict[UUID, HostComputeEndpoint] = {}
        self._namespaces: dict[UUID, HostComputeNamespace] = {}
        self._handles: dict[int, tuple[str, UUID]] = {}
        self._settle_until: dict[UUID, float] = {}
        self._next_handle = 0x1000
        self._next_namespace_id = 1
        self._mac_counter = 1
        self._load()
        if not any(ns.type == NamespaceType.HOST_DEFAULT for ns in self._namespaces.values()):
            default_id = uuid.uuid4()
            self._namespaces[default_id] = HostComputeNamespace(
                id=default_id,
                type=NamespaceType.HOST_DEFAULT,
                namespace_id=0,
                state=1,
            )
            self._save()

    # -- test controls -------------------------------------------------------------

    def fail_next(
        self, function: str, hresult: int, *, times: int = 1, message: str | None = None
    ) -> None:
        """Make the next ``times`` calls of ``function`` fail with ``hresult``."""
        if function not in HCN_FUNCTIONS:
            raise ValueError(f"{function!r} is not an HCN export this simulator models.")
        with self._lock:
            self._faults.setdefault(function, []).append(_Fault(hresult, times, message))

    def set_latency(self, seconds: float, function: str | None = None) -> None:
        """Delay every call (or only ``function``) by ``seconds`` (ACN ``Delay``)."""
        if function is not None and function not in HCN_FUNCTIONS:
            raise ValueError(f"{function!r} is not an HCN export this simulator models.")
        with self._lock:
            self._latency[function] = seconds

    def reboot(self) -> None:
        """What a reboot does: drop non-persistent networks, endpoints and namespaces.

        Networks created with ``Flags & 8`` (EnableNonPersistent) are dropped (ACN PR
        #4460); every endpoint and every non-default namespace with them; handles die.
        """
        with self._lock:
            self._networks = {
                nid: net
                for nid, net in self._networks.items()
                if not (net.flags or 0) & NetworkFlags.ENABLE_NON_PERSISTENT
            }
            self._endpoints.clear()
            self._namespaces = {
                nsid: ns.model_copy(update={"resources": []})
                for nsid, ns in self._namespaces.items()
                if ns.type == NamespaceType.HOST_DEFAULT
            }
            self._handles.clear()
            self._settle_until.clear()
            self._save()

    @property
    def live_handles(self) -> dict[int, tuple[str, UUID]]:
        """Handles opened and not yet closed: ``{handle: (kind, guid)}``."""
        with self._lock:
            return dict(self._handles)

    def calls_of(self, function: str) -> list[HcnCall]:
        """The recorded calls of one export."""
        return [call for call in self.calls if call.function == function]

    def host_default_namespace(self) -> UUID:
        """The GUID of the singleton ``HostDefault`` namespace."""
        with self._lock:
            for nsid, ns in self._namespaces.items():
                if ns.type == NamespaceType.HOST_DEFAULT:
                    return nsid
        raise AssertionError("the simulator lost its HostDefault namespace")

    # -- plumbing ------------------------------------------------------------------

    def _enter(
        self,
        function: str,
        *,
        id: UUID | None = None,
        handle: int | None = None,
        document: str | None = None,
    ) -> None:
        with self._lock:
            self.calls.append(HcnCall(function, id, handle, document))
            delay = self._latency.get(function, self._latency.get(None, 0.0))
        if delay > 0:
            self._sleep(delay)
        with self._lock:
            if self.service_down:
                self._fail(function, RPC_S_SERVER_UNAVAILABLE)
            if self.stopping:
                self._fail(function, HCN_E_MANAGER_STOPPED)
            faults = self._faults.get(function)
            if faults:
                fault = faults[0]
                fault.remaining -= 1
                if fault.remaining <= 0:
                    faults.pop(0)
                self._fail(function, fault.hresult, fault.message)

    @staticmethod
    def _fail(function: str, hresult: int, message: str | None = None) -> NoReturn:
        raise error_from_hresult(function, hresult, error_record(hresult, message))

    def _not_found(self, function: str, kind: str, id: UUID) -> NoReturn:
        code = {
            "network": HCN_E_NETWORK_NOT_FOUND,
            "endpoint": HCN_E_ENDPOINT_NOT_FOUND,
            # no NAMESPACE_NOT_FOUND exists (docs/reference/hcn.rst §3)
            "namespace": ERROR_NOT_FOUND,
        }[kind]
        if self.v1_not_found:
            code = ERROR_NOT_FOUND
        self._fail(function, code, f"The {kind} {str(id).upper()} was not found.")

    def _parse_object(self, function: str, text: str, *, empty_ok: bool = False) -> Any:
        if empty_ok and not text.strip():
            return {}
        try:
            parsed = json.loads(text)
        except ValueError:
            self._fail(function, HCN_E_INVALID_JSON)
        if not isinstance(parsed, dict):
            self._fail(function, HCN_E_INVALID_JSON, "The document is not a JSON object.")
        return parsed

    def _require_schema(self, function: str, raw: Mapping[str, Any]) -> None:
        # Choice (docs/reference/hcn.rst §6): "Schema version should be present in all
        # objects" (MSDOC).
        if _get(raw, "SchemaVersion") is None:
            self._fail(function, E_INVALIDARG, "The SchemaVersion field is missing.")

    def _check_policies(
        self,
        function: str,
        policies: object,
        kinds: Iterable[str],
        adapter: TypeAdapter[Any],
    ) -> None:
        if policies is None:
            return
        if not isinstance(policies, list):
            self._fail(function, HCN_E_INVALID_POLICY, "Policies is not a JSON array.")
        known = set(kinds)
        for policy in policies:
            kind = (
                canonical(_get(policy, "Type"), tuple(known)) if isinstance(policy, dict) else None
            )
            if kind not in known:
                self._fail(
                    function,
                    HCN_E_INVALID_POLICY_TYPE,
                    f"Invalid policy type {kind!r}.",
                )
            try:
                adapter.validate_python(policy)
            except ValidationError:
                self._fail(function, HCN_E_INVALID_POLICY)

    def _new_handle(self, kind: str, id: UUID) -> int:
        handle = self._next_handle
        self._next_handle += 8
        self._handles[handle] = (kind, id)
        return handle

    def _store(self, kind: str) -> Mapping[UUID, object]:
        stores: dict[str, Mapping[UUID, object]] = {
            "network": self._networks,
            "endpoint": self._endpoints,
            "namespace": self._namespaces,
        }
        return stores[kind]

    def _target(self, function: str, handle: int, kind: str) -> UUID:
        """The GUID behind a live handle of ``kind``; the object must still exist."""
        entry = self._handles.get(handle)
        if entry is None or entry[0] != kind:
            self._fail(function, E_HANDLE, f"0x{handle:X} is not an open {kind} handle.")
        id = entry[1]
        store = self._store(kind)
        if id not in store:
            self._not_found(function, kind, id)
        return id

    def _close(self, function: str, handle: int, kind: str) -> None:
        self._enter(function, handle=handle)
        with self._lock:
            entry = self._handles.get(handle)
            if entry is None or entry[0] != kind:
                self._fail(function, E_HANDLE, f"0x{handle:X} is not an open {kind} handle.")
            del self._handles[handle]

    def _render(self, doc: HostComputeNetwork | HostComputeEndpoint | HostComputeNamespace) -> str:
        """The document as the service returns it: GUIDs upper case (docs/reference/hcn.rst §1)."""
        data = doc.to_dict()
        for key in ("ID", "HostComputeNetwork", "HostComputeNamespace"):
            if key in data:
                data[key] = _upper_guid(data[key])
        for resource in data.get("Resources", []):
            payload = resource.get("Data", {})
            for key in list(payload):
                if key.lower() == "id":
                    payload[key] = _upper_guid(payload[key])
        # hcsshim hcnnetwork.go: a NAT network's Type is omitted from the JSON blob.
        if isinstance(doc, HostComputeNetwork) and data.get("Type") == NetworkType.NAT:
            del data["Type"]
        return json.dumps(data, separators=(",", ":"))

    def _query(self, function: str, handle: int, query: str, kind: str) -> str:
        self._enter(function, handle=handle, document=query)
        with self._lock:
            id = self._target(function, handle, kind)
            self._parse_object(function, query, empty_ok=True)
            doc: HostComputeNetwork | HostComputeEndpoint | HostComputeNamespace
            if kind == "network":
                doc = self._networks[id]
            elif kind == "endpoint":
                doc = self._endpoints[id]
            else:
                doc = self._namespaces[id]
            return self._render(doc)

    def _open(self, function: str, id: UUID, kind: str) -> int:
        self._enter(function, id=id)
        with self._lock:
            store = self._store(kind)
            if id not in store:
                self._not_found(function, kind, id)
            return self._new_handle(kind, id)

    def _enumerate(self, function: str, query: str, kind: str) -> str:
        self._enter(function, document=query)
        with self._lock:
            raw = self._parse_object(function, query, empty_ok=True)
            filter_text = _get(raw, "Filter")
            wanted: dict[str, Any] = {}
            if filter_text not in (None, ""):
                # docs/reference/hcn.rst §2: Filter is a JSON document serialized into a string.
                if not isinstance(filter_text, str):
                    self._fail(function, HCN_E_INVALID_JSON, "Filter must be a JSON string.")
                wanted = self._parse_object(function, filter_text)
            docs: Mapping[UUID, HostComputeNetwork | HostComputeEndpoint | HostComputeNamespace]
            if kind == "network":
                docs = self._networks
            elif kind == "endpoint":
                docs = self._endpoints
            else:
                docs = self._namespaces
            found = [str(id).upper() for id, doc in docs.items() if self._matches(doc, wanted)]
            return json.dumps(found, separators=(",", ":"))

    @staticmethod
    def _matches(
        doc: HostComputeNetwork | HostComputeEndpoint | HostComputeNamespace,
        wanted: Mapping[str, Any],
    ) -> bool:
        for key, value in wanted.items():
            lowered = key.lower()
            if lowered == "id":
                if str(value).strip("{}").lower() != str(doc.id).lower():
                    return False
            elif lowered == "name":
                if doc.name != value:
                    return False
            elif lowered == "owner":
                if doc.owner != value:
                    return False
            elif lowered in ("virtualnetwork", "hostcomputenetwork"):
                if not isinstance(doc, HostComputeEndpoint):
                    return False
                if str(value).strip("{}").lower() != str(doc.host_compute_network).lower():
                    return False
            # other keys: ignored, as the service ignores unknown keys (docs/reference/hcn.rst §6)
        return True

    # -- persistence ---------------------------------------------------------------

    @property
    def state_file(self) -> Path | None:
        """Where objects are persisted, if anywhere."""
        return self.state_dir / STATE_FILE if self.state_dir is not None else None

    def _load(self) -> None:
        path = self.state_file
        if path is None or not path.exists():
            return
        remedy = "to start with an empty simulated host"
        with statefile.reading(path, "The HCN simulator state file", remedy) as data:
            self._networks = {
                n.id: n
                for n in (HostComputeNetwork.model_validate(d) for d in data["networks"])
                if n.id is not None
            }
            self._endpoints = {
                e.id: e
                for e in (HostComputeEndpoint.model_validate(d) for d in data["endpoints"])
                if e.id is not None
            }
            self._namespaces = {
                n.id: n
                for n in (HostComputeNamespace.model_validate(d) for d in data["namespaces"])
                if n.id is not None
            }
            self._next_namespace_id = int(data["next_namespace_id"])
            self._mac_counter = int(data["mac_counter"])

    def _save(self) -> None:
        path = self.state_file
        if path is None:
            return
        payload = {
            "version": 1,
            "networks": [n.to_dict() for n in self._networks.values()],
            "endpoints": [e.to_dict() for e in self._endpoints.values()],
            "namespaces": [n.to_dict() for n in self._namespaces.values()],
            "next_namespace_id": self._next_namespace_id,
            "mac_counter": self._mac_counter,
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_file_atomic(path, json.dumps(payload, separators=(",", ":")).encode())
        except OSError as exc:
            raise StateError(
                f"The HCN simulator could not write {path} ({exc}); check that the "
                "directory exists and is writable."
            ) from exc
