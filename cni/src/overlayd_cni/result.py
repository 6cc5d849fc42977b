"""The CNI result of ``ADD``, built from the daemon's ``attachment`` answer.

The result lists the host end of the veth (no ``sandbox``: chained plugins
such as ``bandwidth`` look for it there) and the container interface (with
``sandbox`` = ``CNI_NETNS``, its MAC and, from 1.1.0 on, its MTU), the
address with its gateway, the routes via the gateway and the DNS settings.
When the plugin is chained after another interface plugin, its entries are
appended to ``prevResult``: interface indexes shift, earlier routes and DNS
entries are kept.
"""

from __future__ import annotations

from overlayd_cni.invocation import Invocation

# ``typing`` is not imported at run time: a CNI plugin pays for every import.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


_DEFAULT_DST = {"0.0.0.0/0": 4, "::/0": 6}


def has_default_route(prev: dict[str, Any] | None, version: int) -> bool:
    """Whether ``prev`` (a previous result) routes the default of IP ``version``."""
    for route in (prev or {}).get("routes") or []:
        if isinstance(route, dict) and _DEFAULT_DST.get(str(route.get("dst"))) == version:
            return True
    return False


def build(inv: Invocation, att: dict[str, Any]) -> dict[str, Any]:
    """The ADD result for attachment ``att`` (an ``AttachmentInfo`` object)."""
    prev = inv.prev_result or {}
    interfaces = [dict(i) for i in prev.get("interfaces") or []]
    ips = [dict(i) for i in prev.get("ips") or []]
    routes = [dict(r) for r in prev.get("routes") or []]
    for host_end in att.get("interfaces") or []:
        interfaces.append({"name": host_end})
    ours: dict[str, Any] = {"name": att.get("ifname") or inv.ifname, "sandbox": inv.netns}
    if att.get("mac"):
        ours["mac"] = att["mac"]
    if inv.cni_version != "1.0.0" and att.get("mtu"):
        ours["mtu"] = att["mtu"]
    interfaces.append(ours)
    gateway = att.get("gateway")
    ip: dict[str, Any] = {
        "address": f"{att['ip']}/{att.get('prefix_len') or _host_prefix(att['ip'])}",
        "interface": len(interfaces) - 1,
    }
    if gateway:
        ip["gateway"] = gateway
    ips.append(ip)
    known = {(r.get("dst"), r.get("gw")) for r in routes}
    for dst in att.get("routes") or []:
        if (dst, gateway) not in known:
            routes.append({"dst": dst, "gw": gateway} if gateway else {"dst": dst})
    out: dict[str, Any] = {"cniVersion": inv.cni_version, "interfaces": interfaces, "ips": ips}
    if routes:
        out["routes"] = routes
    dns = _dns(prev.get("dns") or {}, att, inv.dns)
    if dns:
        out["dns"] = dns
    return out


def _host_prefix(ip: str) -> int:
    return 128 if ":" in ip else 32


def _dns(prev: dict[str, Any], att: dict[str, Any], configured: dict[str, Any]) -> dict[str, Any]:
    """Earlier results first, then overlayd's resolver, then the configuration's ``dns``."""
    nameservers: list[str] = []
    for source in (prev.get("nameservers"), att.get("dns_servers"), configured.get("nameservers")):
        for server in source or []:
            if server not in nameservers:
                nameservers.append(server)
    search: list[str] = []
    # The zone only helps when overlayd's own server answers for it.
    zone = att.get("dns_domain") if att.get("dns_servers") else None
    for source in (prev.get("search"), [zone] if zone else [], configured.get("search")):
        for domain in source or []:
            if domain not in search:
                search.append(domain)
    out: dict[str, Any] = {}
    if nameservers:
        out["nameservers"] = nameservers
    domain = configured.get("domain") or prev.get("domain") or zone
    if domain:
        out["domain"] = domain
    if search:
        out["search"] = search
    options = [*(prev.get("options") or []), *(configured.get("options") or [])]
    if options:
        out["options"] = options
    return out
