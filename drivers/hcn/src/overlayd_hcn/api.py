"""The HCN surface the hcn driver uses, and its native (ctypes) implementation.

Two layers:

* :class:`HcnFunctions` is the raw C surface (JSON strings in and out, handles as
  ints, typed :class:`~overlayd_hcn.errors.HcnError` on failure). Implemented by
  :class:`~overlayd_hcn._hcn_ctypes.HcnLibrary` (computenetwork.dll) and by
  :class:`~overlayd_hcn.simulator.SimulatedService` (in memory).
* :class:`HcnApi` is what the driver calls: typed documents in, parsed documents
  out, every handle closed before returning. :class:`HcnClient` implements it over
  any :class:`HcnFunctions`, so the simulator exercises the same serialization,
  parsing and handle discipline as the native backend.

:class:`NativeHcn` is the client over computenetwork.dll (Windows only);
:class:`~overlayd_hcn.simulator.SimulatedHcn` the one over the simulator.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import Protocol
from typing import TypeVar
from uuid import UUID

from pydantic import ValidationError

from overlayd.errors import DeviceError
from overlayd.errors import NotSupported
from overlayd_hcn._hcn_ctypes import load
from overlayd_hcn.errors import ERROR_TIMEOUT
from overlayd_hcn.errors import error_from_hresult
from overlayd_hcn.schema import HcnModel
from overlayd_hcn.schema import HostComputeEndpoint
from overlayd_hcn.schema import HostComputeNamespace
from overlayd_hcn.schema import HostComputeNetwork
from overlayd_hcn.schema import HostComputeQuery
from overlayd_hcn.schema import ModifyRequestType
from overlayd_hcn.schema import ModifySettingRequest

__all__ = [
    "ZERO_GUID",
    "HcnApi",
    "HcnClient",
    "HcnFunctions",
    "NativeHcn",
]

#: HcnCreate* with the zero GUID lets the service pick the ID (hcsshim does;
#: docs/reference/hcn.rst §1).
ZERO_GUID = UUID(int=0)

_T = TypeVar("_T")
_M = TypeVar("_M", bound=HcnModel)


class HcnFunctions(Protocol):
    """The raw computenetwork.dll surface (docs/reference/hcn.rst §1), one method per export."""

    def enumerate_networks(self, query: str) -> str: ...
    def create_network(self, id: UUID, settings: str) -> int: ...
    def open_network(self, id: UUID) -> int: ...
    def modify_network(self, handle: int, settings: str) -> None: ...
    def query_network_properties(self, handle: int, query: str) -> str: ...
    def delete_network(self, id: UUID) -> None: ...
    def close_network(self, handle: int) -> None: ...

    def enumerate_endpoints(self, query: str) -> str: ...
    def create_endpoint(self, network: int, id: UUID, settings: str) -> int: ...
    def open_endpoint(self, id: UUID) -> int: ...
    def modify_endpoint(self, handle: int, settings: str) -> None: ...
    def query_endpoint_properties(self, handle: int, query: str) -> str: ...
    def delete_endpoint(self, id: UUID) -> None: ...
    def close_endpoint(self, handle: int) -> None: ...

    def enumerate_namespaces(self, query: str) -> str: ...
    def create_namespace(self, id: UUID, settings: str) -> int: ...
    def open_namespace(self, id: UUID) -> int: ...
    def modify_namespace(self, handle: int, settings: str) -> None: ...
    def query_namespace_properties(self, handle: int, query: str) -> str: ...
    def delete_namespace(self, id: UUID) -> None: ...
    def close_namespace(self, handle: int) -> None: ...


class HcnApi(Protocol):
    """What the hcn driver needs from HCN. Every method may raise ``HcnError``.

    ``create_*`` with ``id=None`` lets the service choose the GUID; the returned
    document is always read back from the service, so its ``id`` is authoritative
    (docs/reference/hcn.rst §2: HostDefault namespaces ignore the requested GUID). ``open_*``
    returns the current document or raises ``HcnNotFoundError``.
    """

    def create_network(
        self, network: HostComputeNetwork, id: UUID | None = None
    ) -> HostComputeNetwork: ...
    def open_network(self, id: UUID) -> HostComputeNetwork: ...
    def query_network(
        self, id: UUID, query: HostComputeQuery | None = None
    ) -> HostComputeNetwork: ...
    def modify_network(self, id: UUID, request: ModifySettingRequest) -> None: ...
    def delete_network(self, id: UUID) -> None: ...
    def enumerate_networks(self, query: HostComputeQuery | None = None) -> list[UUID]: ...

    def create_endpoint(
        self, network_id: UUID, endpoint: HostComputeEndpoint, id: UUID | None = None
    ) -> HostComputeEndpoint: ...
    def open_endpoint(self, id: UUID) -> HostComputeEndpoint: ...
    def query_endpoint(
        self, id: UUID, query: HostComputeQuery | None = None
    ) -> HostComputeEndpoint: ...
    def modify_endpoint(self, id: UUID, request: ModifySettingRequest) -> None: ...
    def delete_endpoint(self, id: UUID) -> None: ...
    def enumerate_endpoints(self, query: HostComputeQuery | None = None) -> list[UUID]: ...

    def create_namespace(
        self, namespace: HostComputeNamespace, id: UUID | None = None
    ) -> HostComputeNamespace: ...
    def open_namespace(self, id: UUID) -> HostComputeNamespace: ...
    def query_namespace(
        self, id: UUID, query: HostComputeQuery | None = None
    ) -> HostComputeNamespace: ...
    def modify_namespace(self, id: UUID, request: ModifySettingRequest) -> None: ...
    def delete_namespace(self, id: UUID) -> None: ...
    def enumerate_namespaces(self, query: HostComputeQuery | None = None) -> list[UUID]: ...

    def add_namespace_endpoint(self, namespace_id: UUID, endpoint_id: UUID) -> None: ...
    def remove_namespace_endpoint(self, namespace_id: UUID, endpoint_id: UUID) -> None: ...


class HcnClient:
    """:class:`HcnApi` over any :class:`HcnFunctions` backend.

    ``call_timeout`` (seconds) bounds each operation: HCN calls can hang
    (moby/moby#40699), so an operation runs on a worker thread and
    ``HcnTimeoutError`` is raised when it does not return in time (ACN's
    ``hnsv2wrapperwithtimeout``). A late operation still completes and closes its
    handles on the worker.
    """

    def __init__(self, functions: HcnFunctions, *, call_timeout: float | None = None) -> None:
        self.functions = functions
        self.call_timeout = call_timeout

    # -- plumbing ------------------------------------------------------------------

    def _run(self, function: str, body: Callable[[], _T]) -> _T:
        if self.call_timeout is None:
            return body()
        outcome: list[_T] = []
        failure: list[BaseException] = []

        def worker() -> None:
            try:
                outcome.append(body())
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                failure.append(exc)

        thread = threading.Thread(target=worker, name=f"hcn-{function}", daemon=True)
        thread.start()
        thread.join(self.call_timeout)
        if thread.is_alive():
            raise error_from_hresult(
                function,
                ERROR_TIMEOUT,
                f"The call did not return within {self.call_timeout:g} s; the Host "
                "Network Service may be hung (restart the hns service if this "
                "persists).",
            )
        if failure:
            raise failure[0]
        return outcome[0]

    @staticmethod
    def _parse(model: type[_M], function: str, text: str) -> _M:
        try:
            return model.from_json(text)
        except ValidationError as exc:
            raise DeviceError(
                f"{function} returned a {model.__name__} document that overlayd "
                "cannot parse "
                f"({exc.error_count()} error(s)): {text[:200]}",
                op=function,
                driver="hcn",
            ) from exc

    @staticmethod
    def _parse_ids(function: str, text: str) -> list[UUID]:
        try:
            parsed = json.loads(text) if text.strip() else []
            if not isinstance(parsed, list):
                raise TypeError("not a JSON array")
            return [UUID(str(item).strip("{}")) for item in parsed]
        except (ValueError, TypeError) as exc:
            raise DeviceError(
                f"{function} returned {text[:200]!r}, which is not a JSON array of "
                "GUIDs as HCN documents.",
                op=function,
                driver="hcn",
            ) from exc

    @staticmethod
    def _query_text(query: HostComputeQuery | None) -> str:
        # hcsshim defaultQuery(): SchemaVersion 2.0, Flags None (docs/reference/hcn.rst §2).
        return (query or HostComputeQuery()).to_json()

    # -- networks ------------------------------------------------------------------

    def create_network(
        self, network: HostComputeNetwork, id: UUID | None = None
    ) -> HostComputeNetwork:
        """Create a network and return its document as the service reports it."""
        f = self.functions

        def body() -> HostComputeNetwork:
            handle = f.create_network(id or ZERO_GUID, network.to_json())
            try:
                text = f.query_network_properties(handle, self._query_text(None))
            finally:
                f.close_network(handle)
            return self._parse(HostComputeNetwork, "HcnQueryNetworkProperties", text)

        return self._run("HcnCreateNetwork", body)

    def query_network(self, id: UUID, query: HostComputeQuery | None = None) -> HostComputeNetwork:
        """Open, query and close a network."""
        f = self.functions

        def body() -> HostComputeNetwork:
            handle = f.open_network(id)
            try:
                text = f.query_network_properties(handle, self._query_text(query))
            finally:
                f.close_network(handle)
            return self._parse(HostComputeNetwork, "HcnQueryNetworkProperties", text)

        return self._run("HcnQueryNetworkProperties", body)

    def open_network(self, id: UUID) -> HostComputeNetwork:
        """The network's document; ``HcnNotFoundError`` if it does not exist."""
        return self.query_network(id)

    def modify_network(self, id: UUID, request: ModifySettingRequest) -> None:
        """Apply a modify request (e.g. add a policy) to a network."""
        f = self.functions

        def body() -> None:
            handle = f.open_network(id)
            try:
                f.modify_network(handle, request.to_json())
            finally:
                f.close_network(handle)

        self._run("HcnModifyNetwork", body)

    def delete_network(self, id: UUID) -> None:
        """Delete a network by GUID."""
        self._run("HcnDeleteNetwork", lambda: self.functions.delete_network(id))

    def enumerate_networks(self, query: HostComputeQuery | None = None) -> list[UUID]:
        """GUIDs of the networks matching ``query``'s filter."""
        text = self._run(
            "HcnEnumerateNetworks",
            lambda: self.functions.enumerate_networks(self._query_text(query)),
        )
        return self._parse_ids("HcnEnumerateNetworks", text)

    # -- endpoints -----------------------------------------------------------------

    def create_endpoint(
        self, network_id: UUID, endpoint: HostComputeEndpoint, id: UUID | None = None
    ) -> HostComputeEndpoint:
        """Create an endpoint on a network and return its document."""
        f = self.functions

        def body() -> HostComputeEndpoint:
            network = f.open_network(network_id)
            try:
                handle = f.create_endpoint(network, id or ZERO_GUID, endpoint.to_json())
            finally:
                f.close_network(network)
            try:
                text = f.query_endpoint_properties(handle, self._query_text(None))
            finally:
                f.close_endpoint(handle)
            return self._parse(HostComputeEndpoint, "HcnQueryEndpointProperties", text)

        return self._run("HcnCreateEndpoint", body)

    def query_endpoint(
        self, id: UUID, query: HostComputeQuery | None = None
    ) -> HostComputeEndpoint:
        """Open, query and close an endpoint."""
        f = self.functions

        def body() -> HostComputeEndpoint:
            handle = f.open_endpoint(id)
            try:
                text = f.query_endpoint_properties(handle, self._query_text(query))
            finally:
                f.close_endpoint(handle)
            return self._parse(HostComputeEndpoint, "HcnQueryEndpointProperties", text)

        return self._run("HcnQueryEndpointProperties", body)

    def open_endpoint(self, id: UUID) -> HostComputeEndpoint:
        """The endpoint's document; ``HcnNotFoundError`` if it does not exist."""
        return self.query_endpoint(id)

    def modify_endpoint(self, id: UUID, request: ModifySettingRequest) -> None:
        """Apply a modify request (e.g. add a policy) to an endpoint."""
        f = self.functions

        def body() -> None:
            handle = f.open_endpoint(id)
            try:
                f.modify_endpoint(handle, request.to_json())
            finally:
                f.close_endpoint(handle)

        self._run("HcnModifyEndpoint", body)

    def delete_endpoint(self, id: UUID) -> None:
        """Delete an endpoint by GUID."""
        self._run("HcnDeleteEndpoint", lambda: self.functions.delete_endpoint(id))

    def enumerate_endpoints(self, query: HostComputeQuery | None = None) -> list[UUID]:
        """GUIDs of the endpoints matching ``query``'s filter."""
        text = self._run(
            "HcnEnumerateEndpoints",
            lambda: self.functions.enumerate_endpoints(self._query_text(query)),
        )
        return self._parse_ids("HcnEnumerateEndpoints", text)

    # -- namespaces ----------------------------------------------------------------

    def create_namespace(
        self, namespace: HostComputeNamespace, id: UUID | None = None
    ) -> HostComputeNamespace:
        """Create a namespace and return its document (read the ID from it)."""
        f = self.functions

        def body() -> HostComputeNamespace:
            handle = f.create_namespace(id or ZERO_GUID, namespace.to_json())
            try:
                text = f.query_namespace_properties(handle, self._query_text(None))
            finally:
                f.close_namespace(handle)
            return self._parse(HostComputeNamespace, "HcnQueryNamespaceProperties", text)

        return self._run("HcnCreateNamespace", body)

    def query_namespace(
        self, id: UUID, query: HostComputeQuery | None = None
    ) -> HostComputeNamespace:
        """Open, query and close a namespace."""
        f = self.functions

        def body() -> HostComputeNamespace:
            handle = f.open_namespace(id)
            try:
                text = f.query_namespace_properties(handle, self._query_text(query))
            finally:
                f.close_namespace(handle)
            return self._parse(HostComputeNamespace, "HcnQueryNamespaceProperties", text)

        return self._run("HcnQueryNamespaceProperties", body)

    def open_namespace(self, id: UUID) -> HostComputeNamespace:
        """The namespace's document; ``HcnNotFoundError`` if it does not exist."""
        return self.query_namespace(id)

    def modify_namespace(self, id: UUID, request: ModifySettingRequest) -> None:
        """Apply a modify request to a namespace."""
        f = self.functions

        def body() -> None:
            handle = f.open_namespace(id)
            try:
                f.modify_namespace(handle, request.to_json())
            finally:
                f.close_namespace(handle)

        self._run("HcnModifyNamespace", body)

    def delete_namespace(self, id: UUID) -> None:
        """Delete a namespace by GUID."""
        self._run("HcnDeleteNamespace", lambda: self.functions.delete_namespace(id))

    def enumerate_namespaces(self, query: HostComputeQuery | None = None) -> list[UUID]:
        """GUIDs of the namespaces matching ``query``'s filter."""
        text = self._run(
            "HcnEnumerateNamespaces",
            lambda: self.functions.enumerate_namespaces(self._query_text(query)),
        )
        return self._parse_ids("HcnEnumerateNamespaces", text)

    def add_namespace_endpoint(self, namespace_id: UUID, endpoint_id: UUID) -> None:
        """Attach an endpoint to a namespace (hcsshim ``AddNamespaceEndpoint``)."""
        self.modify_namespace(
            namespace_id,
            ModifySettingRequest.namespace_endpoint(ModifyRequestType.ADD, endpoint_id),
        )

    def remove_namespace_endpoint(self, namespace_id: UUID, endpoint_id: UUID) -> None:
        """Detach an endpoint from a namespace (hcsshim ``RemoveNamespaceEndpoint``)."""
        self.modify_namespace(
            namespace_id,
            ModifySettingRequest.namespace_endpoint(ModifyRequestType.REMOVE, endpoint_id),
        )


class NativeHcn(HcnClient):
    """:class:`HcnApi` over computenetwork.dll. Windows only.

    ``library`` may inject an already-built :class:`HcnFunctions` (for example an
    ``HcnLibrary`` over ctypes callbacks in tests); by default the DLL is loaded.
    """

    def __init__(
        self, library: HcnFunctions | None = None, *, call_timeout: float | None = 60.0
    ) -> None:
        if library is None:
            if sys.platform == "win32":
                library = load()
            else:
                raise NotSupported(
                    "the native HCN backend needs Windows; set [drivers.hcn] backend = "
                    '"simulator" to run the hcn driver against the in-memory HCN '
                    "simulator on this host."
                )
        super().__init__(library, call_timeout=call_timeout)
