"""The handler table: one coroutine per op, protocol model in, protocol model out.

Adding an op means a request (and response) class in :mod:`overlayd.protocol`
and one function here decorated with :func:`handles`; :meth:`Server.dispatch
<overlayd.server.core.Server.dispatch>` finds it by the request's type.
"""

# ruff: noqa: E402  (the package's own imports follow the POSIX assert)

from __future__ import annotations

import sys
from collections.abc import Awaitable
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any

from overlayd import __version__
from overlayd import protocol as p
from overlayd.errors import InvalidRequest
from overlayd.model import NatCandidate
from overlayd.model import OverlayMode
from overlayd.model import PeerChange
from overlayd.model import handle_key

# POSIX only: the daemon serves a Unix socket; serving the Windows named pipe is
# not supported yet. (This assert also makes mypy --platform win32 skip the rest,
# so the server's own modules are imported after it.)
assert sys.platform != "win32", "overlayd serve is not supported on Windows yet"

if TYPE_CHECKING:
    from overlayd.server.core import Server


from overlayd.server.convert import attachment_info
from overlayd.server.convert import cidrs
from overlayd.server.convert import endpoint
from overlayd.server.convert import engine_handle
from overlayd.server.convert import peer_scope
from overlayd.server.convert import port_mapping
from overlayd.server.convert import wire_handle

__all__ = ["HANDLERS", "Handler", "handles"]

Handler = Callable[["Server", Any], Awaitable[p.AnyResponse]]
#: Request type -> its handler.
HANDLERS: dict[type, Handler] = {}


def handles(cls: type) -> Callable[[Handler], Handler]:
    """Register the decorated coroutine as the handler of requests of type ``cls``."""

    def register(fn: Handler) -> Handler:
        HANDLERS[cls] = fn
        return fn

    return register


@handles(p.SetLocalNodeIdRequest)
async def _set_node_id(s: Server, r: p.SetLocalNodeIdRequest) -> p.AnyResponse:
    await s.engine.set_local_node_id(r.node_id)
    return p.OkResponse()


@handles(p.SetLocalWgPubkeyRequest)
async def _set_pubkey(s: Server, r: p.SetLocalWgPubkeyRequest) -> p.AnyResponse:
    await s.engine.set_local_wg_pubkey(r.pubkey)
    return p.OkResponse()


@handles(p.SetupGlobalOverlayRequest)
async def _setup_global(s: Server, r: p.SetupGlobalOverlayRequest) -> p.AnyResponse:
    name = await s.engine.setup_global_overlay(
        deployment=r.deployment,
        instance_id=r.instance_id,
        cluster_cidr=r.cluster_cidr,
        slice_cidr=r.slice_cidr,
        wg_port=r.wg_port,
        nat_enabled=r.nat_enabled,
    )
    return p.BridgeNameResponse(name=name)


@handles(p.TeardownGlobalOverlayRequest)
async def _teardown_global(s: Server, r: p.TeardownGlobalOverlayRequest) -> p.AnyResponse:
    await s.engine.teardown_global_overlay()
    return p.OkResponse()


@handles(p.SetupServiceOverlayRequest)
async def _setup_service(s: Server, r: p.SetupServiceOverlayRequest) -> p.AnyResponse:
    svc = await s.engine.setup_service_overlay(r.service, OverlayMode(r.mode))
    ded = svc.dedicated
    return p.ServiceOverlayResponse(
        name=svc.bridge.name,
        mode=svc.mode.value,
        wg_public_key=ded.public_key if ded else None,
        wg_port=ded.listen_port if ded else None,
        overlay_ip=str(svc.overlay_ip) if ded and svc.overlay_ip else None,
        subnet=str(svc.subnet),
    )


@handles(p.TeardownServiceOverlayRequest)
async def _teardown_service(s: Server, r: p.TeardownServiceOverlayRequest) -> p.AnyResponse:
    await s.engine.teardown_service_overlay(r.service)
    return p.OkResponse()


@handles(p.AllocateIpRequest)
async def _allocate(s: Server, r: p.AllocateIpRequest) -> p.AnyResponse:
    ip = await s.engine.allocate_ip(r.service, r.join_global)
    return p.IpResponse(ip=str(ip))


@handles(p.ReleaseIpRequest)
async def _release(s: Server, r: p.ReleaseIpRequest) -> p.AnyResponse:
    await s.engine.release_ip(r.ip)
    return p.OkResponse()


@handles(p.AttachContainerRequest)
async def _attach(s: Server, r: p.AttachContainerRequest) -> p.AnyResponse:
    att = await s.engine.attach(
        engine_handle(r.handle),
        r.service,
        join_global=r.join_global,
        dns_server=r.dns_server,
        dns_domain=r.dns_domain,
    )
    if att.guest is not None:
        g = att.guest
        return p.GuestConfigResponse(
            overlay_ip=str(g.overlay_ip),
            prefix_len=g.prefix_len,
            private_key=g.private_key,
            public_key=g.public_key,
            listen_port=g.listen_port,
            peers=[
                p.PeerSpec(
                    public_key=peer.public_key,
                    endpoint=peer.endpoint or "",
                    allowed_ips=",".join(str(n) for n in peer.allowed_ips),
                    persistent_keepalive_secs=peer.persistent_keepalive_secs,
                )
                for peer in g.peers
            ],
            dns_server=str(g.dns_server) if g.dns_server else None,
            dns_domain=g.dns_domain,
        )
    return p.AttachedResponse(ip=str(att.ip), namespace_guid=att.namespace_guid)


@handles(p.DetachContainerRequest)
async def _detach(s: Server, r: p.DetachContainerRequest) -> p.AnyResponse:
    await s.engine.detach(engine_handle(r.handle))
    return p.OkResponse()


@handles(p.AddPeerRequest)
async def _add_peer(s: Server, r: p.AddPeerRequest) -> p.AnyResponse:
    await s.engine.add_peer(
        r.public_key,
        endpoint(r.endpoint),
        r.allowed_ips,
        int(r.persistent_keepalive_secs),
        peer_scope(r.scope),
    )
    return p.OkResponse()


@handles(p.RemovePeerRequest)
async def _remove_peer(s: Server, r: p.RemovePeerRequest) -> p.AnyResponse:
    await s.engine.remove_peer(r.pubkey, peer_scope(r.scope))
    return p.OkResponse()


@handles(p.AddAllowedIpRequest)
async def _add_allowed(s: Server, r: p.AddAllowedIpRequest) -> p.AnyResponse:
    await s.engine.add_allowed_ip(r.pubkey, r.cidr, peer_scope(r.scope))
    return p.OkResponse()


@handles(p.RemoveAllowedIpRequest)
async def _remove_allowed(s: Server, r: p.RemoveAllowedIpRequest) -> p.AnyResponse:
    await s.engine.remove_allowed_ip(r.pubkey, r.cidr, peer_scope(r.scope))
    return p.OkResponse()


@handles(p.RegisterDnsRequest)
async def _register_dns(s: Server, r: p.RegisterDnsRequest) -> p.AnyResponse:
    await s.engine.register_dns(r.name, r.ip)
    return p.OkResponse()


@handles(p.UnregisterDnsRequest)
async def _unregister_dns(s: Server, r: p.UnregisterDnsRequest) -> p.AnyResponse:
    await s.engine.unregister_dns(r.name)
    return p.OkResponse()


@handles(p.StatusRequest)
async def _status(s: Server, r: p.StatusRequest) -> p.AnyResponse:
    st = await s.engine.status()
    memo = s.status_memo
    if memo is not None and (memo[0] is st or memo[0] == st):
        # Unchanged: the same answer object, which the server encodes only once.
        # Keep the engine's newest equal object, which its fast lane compares by identity.
        if memo[0] is not st:
            s.status_memo = (st, memo[1], memo[2])
        return memo[1]
    # Only the peers whose values changed get a new wire model and JSON
    # (overlayd.server.statuswire); the server answers with the bytes built here.
    response, encoded = s.status_wire.build(st)
    s.status_memo = (st, response, encoded)
    return response


@handles(p.NatPeerCandidatesRequest)
async def _nat_peer_candidates(s: Server, r: p.NatPeerCandidatesRequest) -> p.AnyResponse:
    await s.engine.nat_peer_candidates(
        r.public_key,
        [
            NatCandidate(
                kind=c.kind,
                endpoint=c.endpoint,
                priority=c.priority or 0,
                guessed=bool(c.guessed),
            )
            for c in r.candidates
        ],
    )
    return p.OkResponse()


@handles(p.NatTickRequest)
async def _nat_tick(s: Server, r: p.NatTickRequest) -> p.AnyResponse:
    await s.engine.nat_tick()
    return p.OkResponse()


@handles(p.ShutdownRequest)
async def _shutdown(s: Server, r: p.ShutdownRequest) -> p.AnyResponse:
    # Answer first; _answer then starts the graceful stop. The data plane stays up.
    return p.OkResponse()


@handles(p.HelloRequest)
async def _hello(s: Server, r: p.HelloRequest) -> p.AnyResponse:
    drivers = [
        p.DriverDescription(
            name=info.name,
            api=info.api,
            platforms=sorted(info.platforms),
            capabilities=sorted(c.value for c in info.capabilities),
        )
        for info in s.engine.describe_drivers()
    ]
    return p.HelloResponse(
        protocol_version=p.PROTOCOL_VERSION,
        server_version=__version__,
        drivers=drivers,
        ops=list(p.ALL_OPS),
    )


@handles(p.ApplyPeersRequest)
async def _apply_peers(s: Server, r: p.ApplyPeersRequest) -> p.AnyResponse:
    from overlayd.engine import _build_change

    changes: list[PeerChange] = []
    for ch in r.changes:
        kwargs: dict[str, Any] = {"public_key": ch.public_key, "remove": bool(ch.remove)}
        if ch.endpoint:
            kwargs["endpoint"] = ch.endpoint
        if ch.persistent_keepalive_secs is not None:
            kwargs["keepalive"] = ch.persistent_keepalive_secs
        if ch.allowed_ips is not None:
            kwargs["allowed_ips"] = ch.allowed_ips
        kwargs["add_allowed_ips"] = cidrs(ch.add_allowed_ips)
        kwargs["remove_allowed_ips"] = cidrs(ch.remove_allowed_ips)
        changes.append(_build_change(**kwargs))
    await s.engine.apply_peers(changes, peer_scope(r.scope))
    return p.OkResponse()


@handles(p.ListAttachmentsRequest)
async def _list_attachments(s: Server, r: p.ListAttachmentsRequest) -> p.AnyResponse:
    if r.handle is not None:
        one = s.engine.attachments.get(handle_key(engine_handle(r.handle)))
        found = [one] if one is not None and r.service in (None, one.service) else []
    else:
        found = s.engine.list_attachments(r.service)
    return p.AttachmentsResponse(attachments=[attachment_info(s, a) for a in found])


@handles(p.AttachInterfaceRequest)
async def _attach_interface(s: Server, r: p.AttachInterfaceRequest) -> p.AnyResponse:
    if isinstance(r.handle, p.GuestManagedHandle):
        raise InvalidRequest(
            "attach_interface cannot attach a guest_managed handle (its answer would "
            "lose the guest's keys); use attach_container"
        )
    if r.create_mode is not None and r.service not in s.engine.services:
        await s.engine.setup_service_overlay(r.service, r.create_mode)
    att = await s.engine.attach(
        engine_handle(r.handle),
        r.service,
        join_global=bool(r.join_global),
        dns_server=r.dns_server,
        dns_domain=r.dns_domain,
        default_route=r.default_route is not False,
    )
    return p.AttachmentResponse(attachment=attachment_info(s, att))


@handles(p.ListLeasesRequest)
async def _list_leases(s: Server, r: p.ListLeasesRequest) -> p.AnyResponse:
    return p.LeasesResponse(
        leases=[
            p.LeaseInfo(
                ip=str(lease.ip),
                pool=lease.pool,
                owner=lease.owner,
                created_unix_secs=lease.created_unix_secs,
            )
            for lease in s.engine.list_leases(r.pool)
        ]
    )


@handles(p.GcRequest)
async def _gc(s: Server, r: p.GcRequest) -> p.AnyResponse:
    report = await s.engine.gc(
        [engine_handle(h) for h in r.live], dry_run=bool(r.dry_run), network=r.network
    )
    return p.GcReportResponse.model_validate(
        {"released": [wire_handle(h) for h in report.released], "kept": report.kept}
    )


@handles(p.ReconcileRequest)
async def _reconcile(s: Server, r: p.ReconcileRequest) -> p.AnyResponse:
    summary = await s.engine.reconcile()
    return p.ReconcileReportResponse(
        adopted=summary.adopted,
        recreated=summary.recreated,
        removed=summary.removed,
        released=summary.released,
        errors=list(summary.errors),
    )


@handles(p.MapPortRequest)
async def _map_port(s: Server, r: p.MapPortRequest) -> p.AnyResponse:
    await s.engine.add_port_mapping(port_mapping(r))
    return p.OkResponse()


@handles(p.UnmapPortRequest)
async def _unmap_port(s: Server, r: p.UnmapPortRequest) -> p.AnyResponse:
    await s.engine.remove_port_mapping(port_mapping(r))
    return p.OkResponse()


@handles(p.ClusterStatusRequest)
async def _cluster_status(s: Server, r: p.ClusterStatusRequest) -> p.AnyResponse:
    if s.cluster is None:
        return p.ErrResponse(
            message="cluster mode is not enabled on this node "
            "(its configuration has no [cluster] table)"
        )
    response: p.AnyResponse = await s.cluster.status()
    return response


# The cni_exec op has a module of its own; importing it registers its handler.
from overlayd.server import cni_exec as _cni_exec  # noqa: F401
