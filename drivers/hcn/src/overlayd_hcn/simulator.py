"""An in-memory model of computenetwork.dll, for hosts without Windows.

:class:`SimulatedService` implements the raw :class:`~overlayd_hcn.api.HcnFunctions`
surface: JSON strings in, JSON strings out, handles as ints, and the same
HRESULT-typed errors real HCN returns (docs/reference/hcn.rst §3, simulator semantics §6).
:class:`SimulatedHcn` is the :class:`~overlayd_hcn.api.HcnClient` over it, so the
driver's documents go through exactly the serialization and parsing they get
against the real service.

What it models (source in docs/reference/hcn.rst §6 unless said otherwise):

* documents validated against :mod:`overlayd_hcn.schema`; not-JSON settings or
  queries → ``HCN_E_INVALID_JSON``; missing ``SchemaVersion`` → ``E_INVALIDARG``;
* networks: unknown ``Type`` → ``HCN_E_INVALID_NETWORK_TYPE``, duplicate name →
  ``HCN_E_NETWORK_ALREADY_EXISTS``, duplicate GUID → ``ERROR_ALREADY_EXISTS``, bad
  prefix → ``HCN_E_INVALID_PREFIX``, a subnet overlapping another network's →
  ``HCN_E_INVALID_SUBNET`` (a choice: HCN has no dedicated overlap code, docs/reference/hcn.rst §3);
* endpoints: static IPs checked against the subnets (``HCN_E_INVALID_IP``) and
  against reserved or used addresses (``HCN_E_ADDR_INVALID_OR_RESERVED``), also
  during a configurable settle window after the network was created (ZL);
  unknown policy type → ``HCN_E_INVALID_POLICY_TYPE``, malformed policy →
  ``HCN_E_INVALID_POLICY``; duplicate port mapping → ``HCN_E_PORT_ALREADY_EXISTS``;
* namespaces: ``HostDefault`` is a singleton that ignores the requested GUID (ZL);
  attach/detach through ``ModifyNamespace`` with the §2 error codes;
* not found: network ``0x803B0001``, endpoint ``0x803B0002``, namespace
  ``0x80070490`` (or ``0x80070490`` for all with ``v1_not_found``);
* objects persist in ``{state_dir}/hcn-simulator.json`` (atomic write) so they
  outlive the process like real HCN objects; :meth:`SimulatedService.reboot`
  drops what a reboot drops;
* fault injection: :meth:`~SimulatedService.fail_next`,
  :meth:`~SimulatedService.set_latency`, ``service_down`` and ``stopping``;
* every call is recorded with its exact JSON document in ``calls``.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from typing import TypeVar
from uuid import UUID

from pydantic import TypeAdapter
from pydantic import ValidationError

from overlayd_hcn.api import HcnClient
from overlayd_hcn.errors import E_INVALIDARG
from overlayd_hcn.errors import ERROR_ALREADY_EXISTS
from overlayd_hcn.errors import HCN_E_ADDR_INVALID_OR_RESERVED
from overlayd_hcn.errors import HCN_E_ENDPOINT_NAMESPACE_ALREADY_EXISTS
from overlayd_hcn.errors import HCN_E_ENDPOINT_NOT_ATTACHED
from overlayd_hcn.errors import HCN_E_ENTITY_HAS_REFERENCES
from overlayd_hcn.errors import HCN_E_INVALID_ENDPOINT
from overlayd_hcn.errors import HCN_E_INVALID_IP
from overlayd_hcn.errors import HCN_E_INVALID_JSON
from overlayd_hcn.errors import HCN_E_INVALID_NETWORK
from overlayd_hcn.errors import HCN_E_INVALID_NETWORK_TYPE
from overlayd_hcn.errors import HCN_E_INVALID_PREFIX
from overlayd_hcn.errors import HCN_E_INVALID_SUBNET
from overlayd_hcn.errors import HCN_E_NETWORK_ALREADY_EXISTS
from overlayd_hcn.errors import HCN_E_POLICY_ALREADY_EXISTS
from overlayd_hcn.errors import HCN_E_PORT_ALREADY_EXISTS
from overlayd_hcn.schema import NAMESPACE_RESOURCE_TYPES
from overlayd_hcn.schema import EndpointPolicyType
from overlayd_hcn.schema import HostComputeEndpoint
from overlayd_hcn.schema import HostComputeNamespace
from overlayd_hcn.schema import HostComputeNetwork
from overlayd_hcn.schema import IpConfig
from overlayd_hcn.schema import ModifyRequestType
from overlayd_hcn.schema import NamespaceResource
from overlayd_hcn.schema import NamespaceType
from overlayd_hcn.schema import NetworkPolicyType
from overlayd_hcn.schema import NetworkType
from overlayd_hcn.schema import PortMappingPolicy
from overlayd_hcn.schema import canonical
from overlayd_hcn.simstate import _ENDPOINT_POLICIES
from overlayd_hcn.simstate import _HCN_E_REQUEST_UNSUPPORTED
from overlayd_hcn.simstate import _NETWORK_POLICIES
from overlayd_hcn.simstate import _ZERO
from overlayd_hcn.simstate import STATE_FILE
from overlayd_hcn.simstate import HcnCall
from overlayd_hcn.simstate import ServiceState
from overlayd_hcn.simstate import _get
from overlayd_hcn.simstate import _IpAddress
from overlayd_hcn.simstate import _IpNetwork

__all__ = ["STATE_FILE", "HcnCall", "SimulatedHcn", "SimulatedService"]

#: The documents whose policies HcnModify* changes.
_Doc = TypeVar("_Doc", HostComputeNetwork, HostComputeEndpoint)


class SimulatedService(ServiceState):
    """The raw HCN surface in memory (see the module docstring for the semantics).

    :param state_dir: where to persist objects; ``None`` keeps them in memory only.
    :param settle_seconds: after a network is created, static-IP endpoint creates on
        it fail with ``HCN_E_ADDR_INVALID_OR_RESERVED`` for this long (ZL).
    :param strict_delete: deleting a network that still has endpoints fails with
        ``HCN_E_ENTITY_HAS_REFERENCES`` instead of cascading (real behaviour unknown).
    :param v1_not_found: answer ``0x80070490`` for every missing object.
    """

    # -- networks ------------------------------------------------------------------

    def enumerate_networks(self, query: str) -> str:
        """``HcnEnumerateNetworks``."""
        return self._enumerate("HcnEnumerateNetworks", query, "network")

    def create_network(self, id: UUID, settings: str) -> int:
        """``HcnCreateNetwork``."""
        fn = "HcnCreateNetwork"
        self._enter(fn, id=id, document=settings)
        with self._lock:
            raw = self._parse_object(fn, settings)
            self._require_schema(fn, raw)
            kind = canonical(_get(raw, "Type") or NetworkType.NAT, NetworkType)
            if kind not in set(NetworkType):
                self._fail(fn, HCN_E_INVALID_NETWORK_TYPE, f"Invalid network type {kind!r}.")
            self._check_policies(fn, _get(raw, "Policies"), NetworkPolicyType, _NETWORK_POLICIES)
            try:
                doc = HostComputeNetwork.model_validate(raw)
            except ValidationError:
                self._fail(fn, HCN_E_INVALID_NETWORK)
            gid = id if id != _ZERO else uuid.uuid4()
            if gid in self._networks:
                self._fail(fn, ERROR_ALREADY_EXISTS, f"A network with ID {gid} exists.")
            if doc.name is not None and any(n.name == doc.name for n in self._networks.values()):
                self._fail(fn, HCN_E_NETWORK_ALREADY_EXISTS)
            mine = self._prefixes(fn, doc)
            for other in self._networks.values():
                for theirs in self._prefixes(fn, other):
                    for prefix in mine:
                        if prefix.version == theirs.version and prefix.overlaps(theirs):
                            self._fail(
                                fn,
                                HCN_E_INVALID_SUBNET,
                                f"The subnet {prefix} overlaps subnet {theirs} of "
                                f"network "
                                f"{other.name or other.id}.",
                            )
            stored = doc.model_copy(update={"id": gid, "type": kind, "state": 1})
            self._networks[gid] = stored
            if self.settle_seconds > 0:
                self._settle_until[gid] = self._clock() + self.settle_seconds
            self._save()
            return self._new_handle("network", gid)

    def _prefixes(self, function: str, doc: HostComputeNetwork) -> list[_IpNetwork]:
        prefixes: list[_IpNetwork] = []
        for text in doc.subnet_prefixes():
            try:
                prefixes.append(ipaddress.ip_network(text, strict=True))
            except ValueError:
                self._fail(function, HCN_E_INVALID_PREFIX, f"The prefix {text!r} is invalid.")
        for i, first in enumerate(prefixes):
            for second in prefixes[i + 1 :]:
                if first.version == second.version and first.overlaps(second):
                    self._fail(function, HCN_E_INVALID_SUBNET, f"{first} overlaps {second}.")
        return prefixes

    def open_network(self, id: UUID) -> int:
        """``HcnOpenNetwork``."""
        return self._open("HcnOpenNetwork", id, "network")

    def modify_network(self, handle: int, settings: str) -> None:
        """``HcnModifyNetwork``: ``Policy`` Add/Remove/Update."""
        self._modify(
            "HcnModifyNetwork",
            handle,
            settings,
            "network",
            self._networks,
            NetworkPolicyType,
            _NETWORK_POLICIES,
        )

    def _modify(
        self,
        function: str,
        handle: int,
        settings: str,
        kind: str,
        store: dict[UUID, _Doc],
        kinds: Iterable[str],
        adapter: TypeAdapter[Any],
    ) -> None:
        """Change the policies of the ``kind`` object behind ``handle`` in ``store``."""
        self._enter(function, handle=handle, document=settings)
        with self._lock:
            target = self._target(function, handle, kind)
            doc = store[target]
            current = list(doc.policies or [])
            policies = self._modify_policies(function, settings, current, kinds, adapter)
            store[target] = doc.model_copy(update={"policies": policies})
            self._save()

    def _modify_policies(
        self,
        function: str,
        settings: str,
        current: list[Any],
        kinds: Iterable[str],
        adapter: TypeAdapter[Any],
    ) -> list[Any]:
        raw = self._parse_object(function, settings)
        resource = _get(raw, "ResourceType")
        request = canonical(_get(raw, "RequestType"), ModifyRequestType)
        body = _get(raw, "Settings")
        if not isinstance(body, dict):
            self._fail(function, HCN_E_INVALID_JSON, "Settings must be a JSON object.")
        if not isinstance(resource, str) or resource.lower() != "policy":
            self._fail(function, _HCN_E_REQUEST_UNSUPPORTED)
        new = _get(body, "Policies")
        self._check_policies(function, new, kinds, adapter)
        parsed = [adapter.validate_python(p) for p in new or []]
        types = {p.type for p in parsed}
        if request == ModifyRequestType.ADD:
            if any(p.type in types for p in current):
                self._fail(function, HCN_E_POLICY_ALREADY_EXISTS)
            return current + parsed
        if request == ModifyRequestType.REMOVE:
            return [p for p in current if p.type not in types]
        if request == ModifyRequestType.UPDATE:
            return [p for p in current if p.type not in types] + parsed
        self._fail(function, _HCN_E_REQUEST_UNSUPPORTED)

    def query_network_properties(self, handle: int, query: str) -> str:
        """``HcnQueryNetworkProperties``."""
        return self._query("HcnQueryNetworkProperties", handle, query, "network")

    def delete_network(self, id: UUID) -> None:
        """``HcnDeleteNetwork``: cascades to its endpoints unless ``strict_delete``."""
        fn = "HcnDeleteNetwork"
        self._enter(fn, id=id)
        with self._lock:
            if id not in self._networks:
                self._not_found(fn, "network", id)
            endpoints = [eid for eid, e in self._endpoints.items() if e.host_compute_network == id]
            if endpoints and self.strict_delete:
                self._fail(fn, HCN_E_ENTITY_HAS_REFERENCES)
            # docs/reference/hcn.rst §6: endpoints go with the network; namespaces keep
            # dangling refs.
            for eid in endpoints:
                del self._endpoints[eid]
            del self._networks[id]
            self._settle_until.pop(id, None)
            self._save()

    def close_network(self, handle: int) -> None:
        """``HcnCloseNetwork``."""
        self._close("HcnCloseNetwork", handle, "network")

    # -- endpoints -----------------------------------------------------------------

    def enumerate_endpoints(self, query: str) -> str:
        """``HcnEnumerateEndpoints``."""
        return self._enumerate("HcnEnumerateEndpoints", query, "endpoint")

    def create_endpoint(self, network: int, id: UUID, settings: str) -> int:
        """``HcnCreateEndpoint``."""
        fn = "HcnCreateEndpoint"
        self._enter(fn, id=id, handle=network, document=settings)
        with self._lock:
            nid = self._target(fn, network, "network")
            raw = self._parse_object(fn, settings)
            self._require_schema(fn, raw)
            if _get(raw, "HostComputeNamespace") is not None:
                self._fail(
                    fn,
                    HCN_E_INVALID_ENDPOINT,
                    "HostComputeNamespace is read-only; attach with ModifyNamespace.",
                )
            self._check_policies(fn, _get(raw, "Policies"), EndpointPolicyType, _ENDPOINT_POLICIES)
            try:
                doc = HostComputeEndpoint.model_validate(raw)
            except ValidationError:
                self._fail(fn, HCN_E_INVALID_ENDPOINT)
            if doc.host_compute_network is not None and doc.host_compute_network != nid:
                self._fail(
                    fn,
                    HCN_E_INVALID_ENDPOINT,
                    "HostComputeNetwork names another network.",
                )
            gid = id if id != _ZERO else uuid.uuid4()
            if gid in self._endpoints:
                self._fail(fn, ERROR_ALREADY_EXISTS, f"An endpoint with ID {gid} exists.")
            net = self._networks[nid]
            configs = self._assign_addresses(fn, nid, net, doc.ip_configurations or [])
            self._check_port_mappings(fn, nid, doc)
            mac = self._mac_counter
            self._mac_counter += 1
            stored = doc.model_copy(
                update={
                    "id": gid,
                    "host_compute_network": nid,
                    "ip_configurations": configs or None,
                    "mac_address": doc.mac_address
                    or f"00-15-5D-{(mac >> 16) & 0xFF:02X}-{(mac >> 8) & 0xFF:02X}-"
                    f"{mac & 0xFF:02X}",
                    "state": 1,
                }
            )
            self._endpoints[gid] = stored
            self._save()
            return self._new_handle("endpoint", gid)

    def _assign_addresses(
        self, fn: str, nid: UUID, net: HostComputeNetwork, wanted: list[IpConfig]
    ) -> list[IpConfig]:
        subnets = self._prefixes(fn, net)
        used = {
            ipaddress.ip_address(c.ip_address)
            for e in self._endpoints.values()
            if e.host_compute_network == nid
            for c in e.ip_configurations or []
        }
        reserved = self._reserved(net, subnets)
        if not wanted:
            # No IP requested: the service allocates the next free one.
            for subnet in subnets:
                for host in subnet.hosts():
                    if host not in used and host not in reserved:
                        return [IpConfig(ip_address=str(host), prefix_length=subnet.prefixlen)]
            return []
        if self._clock() < self._settle_until.get(nid, float("-inf")):
            # ZL: static IPAM is not ready right after the network was created.
            self._fail(fn, HCN_E_ADDR_INVALID_OR_RESERVED, "The network is still settling.")
        for config in wanted:
            try:
                address: _IpAddress = ipaddress.ip_address(config.ip_address)
            except ValueError:
                self._fail(fn, HCN_E_INVALID_IP, f"{config.ip_address!r} is not an address.")
            if not any(address in subnet for subnet in subnets):
                self._fail(fn, HCN_E_INVALID_IP)
            if address in reserved or address in used:
                self._fail(
                    fn,
                    HCN_E_ADDR_INVALID_OR_RESERVED,
                    f"{address} is reserved or used.",
                )
            used.add(address)
        return wanted

    @staticmethod
    def _reserved(net: HostComputeNetwork, subnets: list[_IpNetwork]) -> set[_IpAddress]:
        """Network and broadcast addresses and each subnet's gateway (next hops)."""
        reserved: set[_IpAddress] = set()
        hops: set[_IpAddress] = set()
        for ipam in net.ipams or []:
            for block in ipam.subnets or []:
                for route in block.routes or []:
                    if route.next_hop:
                        try:
                            hops.add(ipaddress.ip_address(route.next_hop))
                        except ValueError:
                            continue
        for subnet in subnets:
            reserved.add(subnet.network_address)
            if subnet.version == 4:
                reserved.add(subnet.broadcast_address)
            gateways = {hop for hop in hops if hop in subnet}
            reserved |= gateways or {subnet.network_address + 1}
        return reserved

    def _check_port_mappings(self, fn: str, nid: UUID, doc: HostComputeEndpoint) -> None:
        def mappings(e: HostComputeEndpoint) -> set[tuple[int, int | None]]:
            return {
                (p.settings.protocol, p.settings.external_port)
                for p in e.policies or []
                if isinstance(p, PortMappingPolicy)
            }

        mine = mappings(doc)
        for other in self._endpoints.values():
            if other.host_compute_network == nid and mine & mappings(other):
                self._fail(fn, HCN_E_PORT_ALREADY_EXISTS)

    def open_endpoint(self, id: UUID) -> int:
        """``HcnOpenEndpoint``."""
        return self._open("HcnOpenEndpoint", id, "endpoint")

    def modify_endpoint(self, handle: int, settings: str) -> None:
        """``HcnModifyEndpoint``: ``Policy`` Add/Remove/Update."""
        self._modify(
            "HcnModifyEndpoint",
            handle,
            settings,
            "endpoint",
            self._endpoints,
            EndpointPolicyType,
            _ENDPOINT_POLICIES,
        )

    def query_endpoint_properties(self, handle: int, query: str) -> str:
        """``HcnQueryEndpointProperties``."""
        return self._query("HcnQueryEndpointProperties", handle, query, "endpoint")

    def delete_endpoint(self, id: UUID) -> None:
        """``HcnDeleteEndpoint``: detaches it from its namespace first (ZL)."""
        fn = "HcnDeleteEndpoint"
        self._enter(fn, id=id)
        with self._lock:
            ep = self._endpoints.get(id)
            if ep is None:
                self._not_found(fn, "endpoint", id)
            if ep.host_compute_namespace is not None:
                self._drop_resource(ep.host_compute_namespace, id)
            del self._endpoints[id]
            self._save()

    def close_endpoint(self, handle: int) -> None:
        """``HcnCloseEndpoint``."""
        self._close("HcnCloseEndpoint", handle, "endpoint")

    # -- namespaces ----------------------------------------------------------------

    def enumerate_namespaces(self, query: str) -> str:
        """``HcnEnumerateNamespaces``."""
        return self._enumerate("HcnEnumerateNamespaces", query, "namespace")

    def create_namespace(self, id: UUID, settings: str) -> int:
        """``HcnCreateNamespace``; ``HostDefault`` returns the singleton (ZL)."""
        fn = "HcnCreateNamespace"
        self._enter(fn, id=id, document=settings)
        with self._lock:
            raw = self._parse_object(fn, settings)
            self._require_schema(fn, raw)
            kind = canonical(_get(raw, "Type") or NamespaceType.HOST, NamespaceType)
            if kind not in set(NamespaceType):
                self._fail(fn, E_INVALIDARG, f"Invalid namespace type {kind!r}.")
            if kind == NamespaceType.HOST_DEFAULT:
                return self._new_handle("namespace", self.host_default_namespace())
            try:
                doc = HostComputeNamespace.model_validate(raw)
            except ValidationError:
                self._fail(fn, E_INVALIDARG)
            gid = id if id != _ZERO else uuid.uuid4()
            if gid in self._namespaces:
                self._fail(fn, ERROR_ALREADY_EXISTS, f"A namespace with ID {gid} exists.")
            stored = doc.model_copy(
                update={
                    "id": gid,
                    "type": kind,
                    "namespace_id": self._next_namespace_id,
                    "resources": [],
                    "state": 1,
                }
            )
            self._next_namespace_id += 1
            self._namespaces[gid] = stored
            self._save()
            return self._new_handle("namespace", gid)

    def open_namespace(self, id: UUID) -> int:
        """``HcnOpenNamespace``."""
        return self._open("HcnOpenNamespace", id, "namespace")

    def modify_namespace(self, handle: int, settings: str) -> None:
        """``HcnModifyNamespace``: Endpoint Add/Remove (docs/reference/hcn.rst §2, §6)."""
        fn = "HcnModifyNamespace"
        self._enter(fn, handle=handle, document=settings)
        with self._lock:
            nsid = self._target(fn, handle, "namespace")
            raw = self._parse_object(fn, settings)
            resource = canonical(_get(raw, "ResourceType"), NAMESPACE_RESOURCE_TYPES)
            request = canonical(_get(raw, "RequestType"), ModifyRequestType)
            body = _get(raw, "Settings")
            if not isinstance(body, dict):
                # ZL: a Settings string is rejected ("ExpectedObject").
                self._fail(fn, HCN_E_INVALID_JSON, "Settings must be a JSON object.")
            if resource != "Endpoint":
                self._fail(fn, _HCN_E_REQUEST_UNSUPPORTED)
            try:
                eid = UUID(str(_get(body, "EndpointId")).strip("{}"))
            except ValueError:
                self._fail(fn, E_INVALIDARG, "EndpointId is not a GUID.")
            ep = self._endpoints.get(eid)
            if ep is None:
                self._not_found(fn, "endpoint", eid)
            if request == ModifyRequestType.ADD:
                if ep.host_compute_namespace is not None:
                    self._fail(fn, HCN_E_ENDPOINT_NAMESPACE_ALREADY_EXISTS)
                ns = self._namespaces[nsid]
                self._namespaces[nsid] = ns.model_copy(
                    update={
                        "resources": [
                            *(ns.resources or []),
                            NamespaceResource.endpoint(eid),
                        ]
                    }
                )
                self._endpoints[eid] = ep.model_copy(update={"host_compute_namespace": nsid})
            elif request == ModifyRequestType.REMOVE:
                if ep.host_compute_namespace != nsid:
                    self._fail(fn, HCN_E_ENDPOINT_NOT_ATTACHED)
                self._drop_resource(nsid, eid)
            else:
                self._fail(fn, _HCN_E_REQUEST_UNSUPPORTED)
            self._save()

    def _drop_resource(self, nsid: UUID, eid: UUID) -> None:
        ns = self._namespaces.get(nsid)
        if ns is not None:
            kept = [r for r in ns.resources or [] if r.endpoint_id != eid]
            self._namespaces[nsid] = ns.model_copy(update={"resources": kept})
        ep = self._endpoints.get(eid)
        if ep is not None:
            self._endpoints[eid] = ep.model_copy(update={"host_compute_namespace": None})

    def query_namespace_properties(self, handle: int, query: str) -> str:
        """``HcnQueryNamespaceProperties``."""
        return self._query("HcnQueryNamespaceProperties", handle, query, "namespace")

    def delete_namespace(self, id: UUID) -> None:
        """``HcnDeleteNamespace``: detaches its endpoints (a choice, docs/reference/hcn.rst §6)."""
        fn = "HcnDeleteNamespace"
        self._enter(fn, id=id)
        with self._lock:
            ns = self._namespaces.get(id)
            if ns is None:
                self._not_found(fn, "namespace", id)
            if ns.type == NamespaceType.HOST_DEFAULT:
                self._fail(fn, _HCN_E_REQUEST_UNSUPPORTED, "HostDefault cannot be deleted.")
            for eid in ns.endpoint_ids():
                self._drop_resource(id, eid)
            del self._namespaces[id]
            self._save()

    def close_namespace(self, handle: int) -> None:
        """``HcnCloseNamespace``."""
        self._close("HcnCloseNamespace", handle, "namespace")


class SimulatedHcn(HcnClient):
    """:class:`~overlayd_hcn.api.HcnApi` over :class:`SimulatedService`.

    Takes the service's options (``state_dir``, ``settle_seconds``, ...) or a
    ready ``service``; ``call_timeout`` bounds each operation as for the native
    backend.
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        service: SimulatedService | None = None,
        call_timeout: float | None = None,
        settle_seconds: float = 0.0,
        strict_delete: bool = False,
        v1_not_found: bool = False,
    ) -> None:
        self.service = service or SimulatedService(
            state_dir,
            settle_seconds=settle_seconds,
            strict_delete=strict_delete,
            v1_not_found=v1_not_found,
        )
        super().__init__(self.service, call_timeout=call_timeout)

    @property
    def calls(self) -> list[HcnCall]:
        """Every raw call made, with its exact JSON document."""
        return self.service.calls

    def fail_next(
        self, function: str, hresult: int, *, times: int = 1, message: str | None = None
    ) -> None:
        """Make the next ``times`` calls of ``function`` fail with ``hresult``."""
        self.service.fail_next(function, hresult, times=times, message=message)

    def set_latency(self, seconds: float, function: str | None = None) -> None:
        """Delay every call (or only ``function``) by ``seconds``."""
        self.service.set_latency(seconds, function)
