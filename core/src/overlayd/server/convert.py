"""Wire models to engine models and back, for the handlers (:mod:`.handlers`).

Values the wire allows but no workload can have are :class:`InvalidRequest`.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

from pydantic import ValidationError

from overlayd import protocol as p
from overlayd.errors import InvalidRequest
from overlayd.model import Attachment
from overlayd.model import GuestManagedHandle
from overlayd.model import IPAddress
from overlayd.model import LinuxPidHandle
from overlayd.model import NatCandidate
from overlayd.model import NetnsHandle
from overlayd.model import PeerScope
from overlayd.model import PortMapping
from overlayd.model import ServiceOverlay
from overlayd.model import WindowsContainerHandle
from overlayd.model import parse_cidr_list

# POSIX only: the daemon serves a Unix socket; serving the Windows named pipe is
# not supported yet. (This assert also makes mypy --platform win32 skip the rest.)
assert sys.platform != "win32", "overlayd serve is not supported on Windows yet"

if TYPE_CHECKING:
    from overlayd.server.core import Server


def cidrs(value: str | None) -> tuple[Any, ...]:
    return tuple(parse_cidr_list(value)) if value else ()


def engine_handle(handle: p.AnyHandle) -> Any:
    """The engine's handle for a wire handle; values the wire allows but no
    workload can have (a pid of 2^22 or more, an empty id) are bad input."""
    try:
        if isinstance(handle, p.LinuxPidHandle):
            return LinuxPidHandle(pid=handle.pid)
        if isinstance(handle, p.WindowsContainerHandle):
            return WindowsContainerHandle.model_validate(handle.model_dump(exclude_none=True))
        if isinstance(handle, p.GuestManagedHandle):
            return GuestManagedHandle(id=handle.id)
        return NetnsHandle(
            path=handle.path,
            container_id=handle.container_id,
            ifname=handle.ifname,
            network=handle.network,
        )
    except ValidationError as exc:
        raise InvalidRequest(handle_problem(handle, exc)) from None


def handle_problem(handle: p.AnyHandle, exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in error["loc"]) or "handle"
    if isinstance(handle, p.LinuxPidHandle):
        what = f"pid {handle.pid} is not a Linux process id (1 to {2**22 - 1})"
    elif error["type"] == "string_too_short":
        what = f"'{field}' is empty"
    elif error["type"] == "string_too_long":
        limit = (error.get("ctx") or {}).get("max_length")
        what = f"'{field}' is longer than {limit} characters"
    else:
        what = f"'{field}': {error['msg']}"
    return f"invalid {handle.platform} handle: {what}"


def wire_handle(handle: Any) -> dict[str, Any]:
    return dict(handle.model_dump(mode="json", exclude_none=True))


def peer_scope(scope: p.AnyScope) -> PeerScope:
    if isinstance(scope, p.ServiceScope):
        return PeerScope(scope="service", service=scope.service)
    return PeerScope()


def endpoint(value: str | None) -> str | None:
    return value or None


def nat_candidate_info(c: NatCandidate) -> p.NatCandidateInfo:
    return p.NatCandidateInfo(
        kind=c.kind,
        endpoint=c.endpoint,
        priority=c.priority or None,
        guessed=True if c.guessed else None,
    )


def dedicated_status(d: Any) -> p.DedicatedServiceStatus:
    """A dedicated service device in ``status`` (from the engine's ``DedicatedStatus``)."""
    return p.DedicatedServiceStatus(
        service=d.service,
        interface=d.interface,
        public_key=d.public_key,
        listen_port=d.listen_port,
        overlay_ip=str(d.overlay_ip),
        subnet=str(d.subnet),
        peer_count=d.peer_count,
    )


def nat_status(nat: Any) -> p.NatStatusInfo | None:
    """``status.nat`` from :class:`overlayd.nat.host.NatStatus`."""
    if nat is None:
        return None
    return p.NatStatusInfo(
        candidates=[nat_candidate_info(c) for c in nat.candidates],
        peers=[
            p.NatPeerPathInfo(
                public_key=peer.public_key,
                path=peer.path,
                endpoint=peer.endpoint,
                candidates=[nat_candidate_info(c) for c in peer.candidates],
            )
            for peer in nat.peers
        ],
        warnings=list(nat.warnings),
    )


def attachment_info(s: Server, a: Attachment) -> p.AttachmentInfo:
    svc = s.engine.services.get(a.service)
    nameservers, domain = s.engine.resolver(a.service) if svc is not None else ([], None)
    return describe_attachment(a, svc, nameservers, domain, detaching=a.key in s.engine.detaching)


def describe_attachment(
    a: Attachment,
    svc: ServiceOverlay | None,
    nameservers: Sequence[IPAddress],
    domain: str | None,
    *,
    detaching: bool = False,
) -> p.AttachmentInfo:
    """The wire form of attachment ``a`` on service ``svc`` (``None``: not set up here)."""
    return p.AttachmentInfo.model_validate(
        {
            "handle": wire_handle(a.handle),
            "service": a.service,
            "ip": str(a.ip),
            "global_ip": str(a.global_ip) if a.global_ip else None,
            "namespace_guid": a.namespace_guid,
            "interfaces": list(a.interfaces),
            "driver": a.driver,
            "created_unix_secs": a.created_unix_secs,
            "detaching": True if detaching else None,
            "ifname": a.ifname,
            "mac": a.mac,
            "prefix_len": svc.subnet.prefixlen if svc is not None else None,
            "gateway": str(svc.gateway) if svc is not None else None,
            "routes": [str(n) for n in a.routes] or None,
            "mtu": a.mtu,
            "dns_servers": [str(n) for n in nameservers] or None,
            "dns_domain": domain,
        }
    )


def port_mapping(r: p.MapPortRequest | p.UnmapPortRequest) -> PortMapping:
    return PortMapping(
        protocol=r.protocol,
        host_port=r.host_port,
        container_ip=ipaddress.ip_address(r.container_ip),
        container_port=r.container_port,
        host_ip=ipaddress.ip_address(r.host_ip) if r.host_ip else None,
    )
