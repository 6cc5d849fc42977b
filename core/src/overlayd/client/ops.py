"""The typed ops of :class:`AsyncClient`, one method per op (docs/reference/zlayer.rst §3).

Each builds the request model of :mod:`overlayd.protocol`, sends it with
:meth:`~overlayd.client.base.BaseAsyncClient.call` and checks the response's
type; the blocking :class:`~overlayd.client.Client` is made from these methods.
"""

from __future__ import annotations

from collections.abc import Iterable

from overlayd import __version__
from overlayd.client.base import BaseAsyncClient
from overlayd.protocol import PROTOCOL_VERSION
from overlayd.protocol import AddAllowedIpRequest
from overlayd.protocol import AddPeerRequest
from overlayd.protocol import AllocateIpRequest
from overlayd.protocol import AnyHandle
from overlayd.protocol import AnyScope
from overlayd.protocol import ApplyPeersRequest
from overlayd.protocol import AttachContainerRequest
from overlayd.protocol import AttachedResponse
from overlayd.protocol import AttachInterfaceRequest
from overlayd.protocol import AttachmentInfo
from overlayd.protocol import AttachmentResponse
from overlayd.protocol import AttachmentsResponse
from overlayd.protocol import BridgeNameResponse
from overlayd.protocol import ClusterStatusRequest
from overlayd.protocol import ClusterStatusResponse
from overlayd.protocol import DetachContainerRequest
from overlayd.protocol import GcReportResponse
from overlayd.protocol import GcRequest
from overlayd.protocol import GlobalScope
from overlayd.protocol import GuestConfigResponse
from overlayd.protocol import HelloRequest
from overlayd.protocol import HelloResponse
from overlayd.protocol import IpResponse
from overlayd.protocol import LeaseInfo
from overlayd.protocol import LeasesResponse
from overlayd.protocol import ListAttachmentsRequest
from overlayd.protocol import ListLeasesRequest
from overlayd.protocol import MapPortRequest
from overlayd.protocol import NatCandidateInfo
from overlayd.protocol import NatPeerCandidatesRequest
from overlayd.protocol import NatTickRequest
from overlayd.protocol import OkResponse
from overlayd.protocol import OverlayModeName
from overlayd.protocol import PeerChange
from overlayd.protocol import ReconcileReportResponse
from overlayd.protocol import ReconcileRequest
from overlayd.protocol import RegisterDnsRequest
from overlayd.protocol import ReleaseIpRequest
from overlayd.protocol import RemoveAllowedIpRequest
from overlayd.protocol import RemovePeerRequest
from overlayd.protocol import ServiceOverlayResponse
from overlayd.protocol import ServiceScope
from overlayd.protocol import SetLocalNodeIdRequest
from overlayd.protocol import SetLocalWgPubkeyRequest
from overlayd.protocol import SetupGlobalOverlayRequest
from overlayd.protocol import SetupServiceOverlayRequest
from overlayd.protocol import ShutdownRequest
from overlayd.protocol import StatusRequest
from overlayd.protocol import StatusResponse
from overlayd.protocol import TeardownGlobalOverlayRequest
from overlayd.protocol import TeardownServiceOverlayRequest
from overlayd.protocol import UnmapPortRequest
from overlayd.protocol import UnregisterDnsRequest
from overlayd.rawclient import UnexpectedResponse

__all__ = ["AsyncClient"]


def _scope(service: str | None) -> AnyScope:
    return GlobalScope() if service is None else ServiceScope(service=service)


def _cidrs(value: str | Iterable[str]) -> str:
    return value if isinstance(value, str) else ",".join(value)


class AsyncClient(BaseAsyncClient):
    """asyncio client of the overlayd IPC protocol.

    :param address: Unix socket path, or ``\\\\.\\pipe\\<name>`` on Windows.
    :param timeout: Default seconds to wait for each answer (``None``: forever).
    :param connect_attempts: Connection attempts before :class:`ConnectError`.
    :param backoff: First retry delay in seconds; doubles up to ``max_backoff``.
    """

    async def hello(self, client: str = "overlayd.client") -> HelloResponse:
        """Version handshake: the daemon's protocol version, drivers and ops."""
        request = HelloRequest(client=f"{client}/{__version__}", protocol_version=PROTOCOL_VERSION)
        return await self._expect(request, HelloResponse)

    async def set_local_node_id(self, node_id: int) -> None:
        await self._expect(SetLocalNodeIdRequest(node_id=node_id), OkResponse)

    async def set_local_wg_pubkey(self, pubkey: str) -> None:
        await self._expect(SetLocalWgPubkeyRequest(pubkey=pubkey), OkResponse)

    async def setup_global_overlay(
        self,
        *,
        deployment: str,
        instance_id: str,
        cluster_cidr: str,
        wg_port: int,
        nat_enabled: bool,
        slice_cidr: str | None = None,
    ) -> str:
        """Create (or find) the global device; returns its interface name."""
        request = SetupGlobalOverlayRequest(
            deployment=deployment,
            instance_id=instance_id,
            cluster_cidr=cluster_cidr,
            slice_cidr=slice_cidr,
            wg_port=wg_port,
            nat_enabled=nat_enabled,
        )
        return (await self._expect(request, BridgeNameResponse)).name

    async def teardown_global_overlay(self) -> None:
        await self._expect(TeardownGlobalOverlayRequest(), OkResponse)

    async def setup_service_overlay(
        self, service: str, mode: OverlayModeName = "auto"
    ) -> ServiceOverlayResponse:
        """Create (or find) a service overlay.

        A ``bridge_name`` answer (ZLayer's daemon) is returned as a
        ``service_overlay`` with the requested mode (``auto`` resolved to ``shared``).
        """
        response = await self.call(SetupServiceOverlayRequest(service=service, mode=mode))
        if isinstance(response, ServiceOverlayResponse):
            return response
        if isinstance(response, BridgeNameResponse):
            resolved: OverlayModeName = "shared" if mode == "auto" else mode
            return ServiceOverlayResponse(name=response.name, mode=resolved)
        raise UnexpectedResponse(
            f"overlayd answered setup_service_overlay with {response.result!r}, "
            "expected 'service_overlay'"
        )

    async def teardown_service_overlay(self, service: str) -> None:
        await self._expect(TeardownServiceOverlayRequest(service=service), OkResponse)

    async def allocate_ip(self, service: str, *, join_global: bool = False) -> str:
        request = AllocateIpRequest(service=service, join_global=join_global)
        return (await self._expect(request, IpResponse)).ip

    async def release_ip(self, ip: str) -> None:
        await self._expect(ReleaseIpRequest(ip=ip), OkResponse)

    async def attach_container(
        self,
        handle: AnyHandle,
        service: str,
        *,
        join_global: bool = False,
        dns_server: str | None = None,
        dns_domain: str | None = None,
    ) -> AttachedResponse | GuestConfigResponse:
        """Attach a workload; a ``guest_managed`` handle gets a ``guest_config``."""
        request = AttachContainerRequest(
            handle=handle,
            service=service,
            join_global=join_global,
            dns_server=dns_server,
            dns_domain=dns_domain,
        )
        response = await self.call(request)
        if isinstance(response, AttachedResponse | GuestConfigResponse):
            return response
        raise UnexpectedResponse(
            f"overlayd answered attach_container with {response.result!r}, "
            "expected 'attached' or 'guest_config'"
        )

    async def detach_container(self, handle: AnyHandle) -> None:
        await self._expect(DetachContainerRequest(handle=handle), OkResponse)

    async def add_peer(
        self,
        public_key: str,
        endpoint: str,
        allowed_ips: str | Iterable[str],
        persistent_keepalive_secs: int = 0,
        *,
        service: str | None = None,
    ) -> None:
        """Add or update a peer; ``service`` targets that service's dedicated device."""
        request = AddPeerRequest(
            public_key=public_key,
            endpoint=endpoint,
            allowed_ips=_cidrs(allowed_ips),
            persistent_keepalive_secs=persistent_keepalive_secs,
            scope=_scope(service),
        )
        await self._expect(request, OkResponse)

    async def remove_peer(self, pubkey: str, *, service: str | None = None) -> None:
        request = RemovePeerRequest(pubkey=pubkey, scope=_scope(service))
        await self._expect(request, OkResponse)

    async def add_allowed_ip(self, pubkey: str, cidr: str, *, service: str | None = None) -> None:
        request = AddAllowedIpRequest(pubkey=pubkey, cidr=cidr, scope=_scope(service))
        await self._expect(request, OkResponse)

    async def remove_allowed_ip(
        self, pubkey: str, cidr: str, *, service: str | None = None
    ) -> None:
        request = RemoveAllowedIpRequest(pubkey=pubkey, cidr=cidr, scope=_scope(service))
        await self._expect(request, OkResponse)

    async def register_dns(self, name: str, ip: str) -> None:
        await self._expect(RegisterDnsRequest(name=name, ip=ip), OkResponse)

    async def unregister_dns(self, name: str) -> None:
        await self._expect(UnregisterDnsRequest(name=name), OkResponse)

    async def status(self) -> StatusResponse:
        return await self._expect(StatusRequest(), StatusResponse)

    async def nat_tick(self) -> None:
        await self._expect(NatTickRequest(), OkResponse)

    async def nat_peer_candidates(
        self, public_key: str, candidates: Iterable[NatCandidateInfo]
    ) -> None:
        """Pass a peer's NAT candidates (from its ``status.nat.candidates``)."""
        await self._expect(
            NatPeerCandidatesRequest(public_key=public_key, candidates=list(candidates)),
            OkResponse,
        )

    async def shutdown(self) -> None:
        """Ask the daemon to exit gracefully (it answers ``ok`` first)."""
        await self._expect(ShutdownRequest(), OkResponse)

    async def apply_peers(
        self, changes: Iterable[PeerChange], *, service: str | None = None
    ) -> None:
        """Apply a batch of peer changes to one device together."""
        request = ApplyPeersRequest(changes=list(changes), scope=_scope(service))
        await self._expect(request, OkResponse)

    async def list_attachments(
        self, service: str | None = None, *, handle: AnyHandle | None = None
    ) -> list[AttachmentInfo]:
        """Attachments: all, one service's, or the one of ``handle`` (empty if none)."""
        request = ListAttachmentsRequest(service=service, handle=handle)
        return (await self._expect(request, AttachmentsResponse)).attachments

    async def attach_interface(
        self,
        handle: AnyHandle,
        service: str,
        *,
        join_global: bool = False,
        dns_server: str | None = None,
        dns_domain: str | None = None,
        default_route: bool = True,
        create_mode: OverlayModeName | None = None,
    ) -> AttachmentInfo:
        """Attach a workload and return its interface's details (``attach_interface``).

        ``default_route=False`` routes only the cluster CIDR via the gateway;
        ``create_mode`` creates the service overlay first when it is missing.
        """
        request = AttachInterfaceRequest(
            handle=handle,
            service=service,
            join_global=join_global or None,
            dns_server=dns_server,
            dns_domain=dns_domain,
            default_route=None if default_route else False,
            create_mode=create_mode,
        )
        return (await self._expect(request, AttachmentResponse)).attachment

    async def list_leases(self, pool: str | None = None) -> list[LeaseInfo]:
        request = ListLeasesRequest(pool=pool)
        return (await self._expect(request, LeasesResponse)).leases

    async def gc(
        self, live: Iterable[AnyHandle], *, dry_run: bool = False, network: str | None = None
    ) -> GcReportResponse:
        """Detach every attachment whose handle is not in ``live``.

        ``network`` limits the candidates to the attachments of that CNI network.
        """
        request = GcRequest(live=list(live), dry_run=dry_run or None, network=network)
        return await self._expect(request, GcReportResponse)

    async def map_port(
        self,
        protocol: str,
        host_port: int,
        container_ip: str,
        container_port: int,
        *,
        host_ip: str | None = None,
    ) -> None:
        """Forward ``host_port`` to a container (overlayd extension ``map_port``)."""
        await self._port(MapPortRequest, protocol, host_port, container_ip, container_port, host_ip)

    async def unmap_port(
        self,
        protocol: str,
        host_port: int,
        container_ip: str,
        container_port: int,
        *,
        host_ip: str | None = None,
    ) -> None:
        """Remove a port mapping (overlayd extension ``unmap_port``)."""
        await self._port(
            UnmapPortRequest, protocol, host_port, container_ip, container_port, host_ip
        )

    async def _port(
        self,
        request_type: type[MapPortRequest | UnmapPortRequest],
        protocol: str,
        host_port: int,
        container_ip: str,
        container_port: int,
        host_ip: str | None,
    ) -> None:
        fields = {
            "protocol": protocol,
            "host_port": host_port,
            "container_ip": container_ip,
            "container_port": container_port,
            "host_ip": host_ip,
        }
        await self._expect(request_type.model_validate(fields), OkResponse)

    async def reconcile(self) -> ReconcileReportResponse:
        return await self._expect(ReconcileRequest(), ReconcileReportResponse)

    async def cluster_status(self) -> ClusterStatusResponse:
        """Cluster mode: the nodes this node sees (``err`` without ``[cluster]``)."""
        return await self._expect(ClusterStatusRequest(), ClusterStatusResponse)
