"""Attach and detach of Windows containers for the ``hcn`` driver.

Attach creates a ``Host`` namespace and an endpoint named
``overlayd-<container>`` with the leased address, default route, DNS and the
OutBoundNAT / SDNRoute / ACL policies, and adds the endpoint to the
namespace; anything half-made is deleted on failure. Detach deletes the
endpoint and the namespace. :class:`AttachHooks` is mixed into
:class:`~overlayd_hcn.driver.HcnDriver`.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Final
from typing import TypeVar
from uuid import UUID

from overlayd import hookimpl
from overlayd.errors import AttachError
from overlayd.errors import NotSupported
from overlayd.model import Attachment
from overlayd.model import AttachRequest
from overlayd.model import Device
from overlayd.model import IPNetwork
from overlayd.model import WindowsContainerHandle
from overlayd_hcn.api import HcnApi
from overlayd_hcn.errors import HCN_E_ENDPOINT_NOT_ATTACHED
from overlayd_hcn.errors import HcnError
from overlayd_hcn.errors import HcnNotFoundError
from overlayd_hcn.retry import in_use
from overlayd_hcn.retry import settling
from overlayd_hcn.retry import settling_after_create
from overlayd_hcn.schema import AclPolicy
from overlayd_hcn.schema import AclSettings
from overlayd_hcn.schema import Dns
from overlayd_hcn.schema import EndpointPolicy
from overlayd_hcn.schema import HostComputeEndpoint
from overlayd_hcn.schema import HostComputeNamespace
from overlayd_hcn.schema import HostComputeQuery
from overlayd_hcn.schema import IpConfig
from overlayd_hcn.schema import NamespaceType
from overlayd_hcn.schema import OutBoundNatPolicy
from overlayd_hcn.schema import OutBoundNatSettings
from overlayd_hcn.schema import Route
from overlayd_hcn.schema import SdnRoutePolicy
from overlayd_hcn.schema import SdnRouteSettings

__all__ = [
    "ACL_PRIORITY",
    "ENDPOINT_PREFIX",
    "OWNER_TAG",
    "AttachHooks",
    "default_route",
    "endpoint_name",
    "is_ours",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: ``Owner`` written on every endpoint and namespace overlayd creates.
OWNER_TAG: Final = "overlayd"
#: Name prefix of overlayd's endpoints and namespaces (ZLayer's ``<owner>-`` form).
ENDPOINT_PREFIX: Final = f"{OWNER_TAG}-"
#: ACL priority ZLayer gives its cluster allow rule (docs/reference/hcn.rst §2).
ACL_PRIORITY: Final = 65500


def endpoint_name(container_id: str) -> str:
    """The HCN name of a container's endpoint (and namespace): ``overlayd-<container>``."""
    return f"{ENDPOINT_PREFIX}{container_id}"


def is_ours(name: str | None, owner: str | None) -> bool:
    """Unmistakably overlayd's: our name prefix, and our Owner tag when HCN reports one."""
    return bool(name and name.startswith(ENDPOINT_PREFIX)) and owner in (None, OWNER_TAG)


def default_route(net: IPNetwork) -> str:
    return "0.0.0.0/0" if net.version == 4 else "::/0"


class AttachHooks:
    """The attach, detach and liveness hooks of the ``hcn`` driver."""

    if TYPE_CHECKING:  # provided by the driver class
        name: str
        _lock: threading.RLock
        _segments: dict[str, Device]

        def hcn(self) -> HcnApi: ...

        def _retry(
            self, op: Callable[[], _T], *, retry_if: Callable[[HcnError], bool], what: str
        ) -> _T: ...

    def _segment_for(self, segment: Device) -> Device:
        with self._lock:
            return self._segments.get(segment.name, segment)

    def endpoint_document(self, request: AttachRequest, network: UUID) -> HostComputeEndpoint:
        """The HostComputeEndpoint overlayd sends for ``request`` (ZLayer's shape)."""
        assert isinstance(request.handle, WindowsContainerHandle)
        segment = self._segment_for(request.segment)
        options = segment.options
        net_subnet = ipaddress.ip_network(
            str(options.get("network_subnet") or request.address.network)
        )
        gateway = str(options.get("network_gateway") or request.gateway)
        cluster_raw = (
            str(request.node.cluster_cidr)
            if request.node is not None
            else str(options.get("cluster_cidr") or net_subnet)
        )
        cluster = str(ipaddress.ip_network(cluster_raw))
        configs = [IpConfig(ip_address=str(request.address.ip), prefix_length=net_subnet.prefixlen)]
        if request.global_address is not None:
            if request.global_address.ip not in net_subnet:
                raise NotSupported(
                    f"join_global on HCN network {segment.name}: the global address "
                    f"{request.global_address.ip} is outside the network's subnet {net_subnet} "
                    "(dedicated HCN networks cannot carry node-pool addresses)"
                )
            configs.append(
                IpConfig(
                    ip_address=str(request.global_address.ip),
                    prefix_length=net_subnet.prefixlen,
                )
            )
        dns: Dns | None = None
        if request.dns_server is not None or request.dns_domain:
            dns = Dns(
                domain=request.dns_domain,
                search=[request.dns_domain] if request.dns_domain else None,
                server_list=[str(request.dns_server)] if request.dns_server else None,
            )
        policies: list[EndpointPolicy] = [
            OutBoundNatPolicy(settings=OutBoundNatSettings(exceptions=[cluster])),
            SdnRoutePolicy(settings=SdnRouteSettings(destination_prefix=cluster, need_encap=False)),
            AclPolicy(
                settings=AclSettings(
                    action="Allow",
                    direction="In",
                    remote_addresses=cluster,
                    rule_type="Switch",
                    priority=ACL_PRIORITY,
                )
            ),
        ]
        return HostComputeEndpoint(
            name=endpoint_name(request.handle.container_id),
            owner=OWNER_TAG,
            host_compute_network=network,
            policies=policies,
            ip_configurations=configs,
            dns=dns,
            routes=[Route(next_hop=gateway, destination_prefix=default_route(net_subnet))],
        )

    @hookimpl
    def overlayd_attach(self, request: AttachRequest) -> Attachment | None:
        handle = request.handle
        if not isinstance(handle, WindowsContainerHandle):
            return None
        segment = self._segment_for(request.segment)
        if not segment.id:
            raise AttachError(
                f"segment {segment.name} has no HCN network GUID; set the service up again",
                op="attach",
                driver=self.name,
            )
        network = UUID(segment.id)
        name = endpoint_name(handle.container_id)
        document = self.endpoint_document(request, network)
        api = self.hcn()
        endpoint_id: UUID | None = None
        namespace_id: UUID | None = None
        try:
            self._remove_leftovers(network, name)
            namespace = api.create_namespace(
                HostComputeNamespace(name=name, owner=OWNER_TAG, type=NamespaceType.HOST)
            )
            namespace_id = namespace.id
            assert namespace_id is not None
            endpoint = self._retry(
                lambda: api.create_endpoint(network, document),
                retry_if=settling,
                what=f"creating HCN endpoint {name}",
            )
            endpoint_id = endpoint.id
            assert endpoint_id is not None
            ns, ep = namespace_id, endpoint_id
            self._retry(
                lambda: api.add_namespace_endpoint(ns, ep),
                retry_if=settling_after_create,
                what=f"adding endpoint {ep} to namespace {ns}",
            )
        except (HcnError, NotSupported) as exc:
            self._rollback(endpoint_id, namespace_id)
            if isinstance(exc, NotSupported):
                raise
            raise AttachError(
                f"attaching container {handle.container_id} to HCN network {network} failed: {exc}",
                op="attach",
                driver=self.name,
            ) from exc
        except BaseException:
            self._rollback(endpoint_id, namespace_id)
            raise
        return request.as_attachment(
            self.name,
            interfaces=(str(endpoint_id),),
            namespace_guid=str(namespace_id).lower(),
            endpoint_id=str(endpoint_id).lower(),
            extra={"network_id": str(network), "endpoint_name": name},
        )

    def _rollback(self, endpoint_id: UUID | None, namespace_id: UUID | None) -> None:
        api = self.hcn()
        steps = (
            ("endpoint", endpoint_id, api.delete_endpoint),
            ("namespace", namespace_id, api.delete_namespace),
        )
        for what, guid, delete in steps:
            if guid is None:
                continue
            try:
                delete(guid)
            except HcnNotFoundError:
                pass
            except HcnError as exc:
                log.error("rollback: cannot delete HCN %s %s: %s", what, guid, exc)

    def _remove_leftovers(self, network: UUID, name: str) -> None:
        """Delete endpoints of a crashed earlier attempt with the same name."""
        for endpoint in self.hcn().enumerate_endpoints(
            HostComputeQuery.filtered(name=name, network=network)
        ):
            log.warning("removing leftover HCN endpoint %s named %s", endpoint, name)
            self._delete_endpoint_and_namespace(endpoint, None)

    def _delete_endpoint_and_namespace(self, endpoint: UUID, namespace: UUID | None) -> bool:
        """Delete one of our endpoints and its namespace; False if neither existed.

        Foreign endpoints (not our name prefix / Owner) are left alone.
        """
        api = self.hcn()
        existed = False
        try:
            doc = api.open_endpoint(endpoint)
        except HcnNotFoundError:
            doc = None
        if doc is not None:
            if not is_ours(doc.name, doc.owner):
                return False
            namespace = namespace or doc.host_compute_namespace
            if namespace is not None and doc.host_compute_namespace == namespace:
                try:
                    api.remove_namespace_endpoint(namespace, endpoint)
                except HcnNotFoundError:
                    pass
                except HcnError as exc:
                    if exc.hresult != HCN_E_ENDPOINT_NOT_ATTACHED:
                        raise
            try:
                api.delete_endpoint(endpoint)
                existed = True
            except HcnNotFoundError:
                pass
        if namespace is not None:
            ns = namespace
            try:
                self._retry(
                    lambda: api.delete_namespace(ns),
                    retry_if=in_use,
                    what=f"deleting HCN namespace {ns}",
                )
                existed = True
            except HcnNotFoundError:
                pass
        return existed

    @hookimpl
    def overlayd_detach(self, attachment: Attachment) -> bool | None:
        try:
            endpoint = UUID(attachment.endpoint_id) if attachment.endpoint_id else None
            namespace = UUID(attachment.namespace_guid) if attachment.namespace_guid else None
        except ValueError as exc:
            raise AttachError(
                f"the recorded attachment of {attachment.key} has an invalid HCN GUID: {exc}",
                op="detach",
                driver=self.name,
            ) from exc
        try:
            if endpoint is None:
                if namespace is None:
                    return False
                return self._delete_namespace_only(namespace)
            return self._delete_endpoint_and_namespace(endpoint, namespace)
        except HcnError as exc:
            raise AttachError(
                f"detaching {attachment.key} (HCN endpoint {endpoint}, namespace "
                f"{namespace}) failed: {exc}",
                op="detach",
                driver=self.name,
            ) from exc

    def _delete_namespace_only(self, namespace: UUID) -> bool:
        try:
            self.hcn().delete_namespace(namespace)
        except HcnNotFoundError:
            return False
        return True

    @hookimpl
    def overlayd_attachment_alive(self, attachment: Attachment) -> bool | None:
        if not attachment.endpoint_id:
            return False
        try:
            self.hcn().open_endpoint(UUID(attachment.endpoint_id))
        except HcnNotFoundError:
            return False
        except (HcnError, ValueError) as exc:
            log.warning("cannot tell whether %s is alive: %s", attachment.key, exc)
            return True
        return True
