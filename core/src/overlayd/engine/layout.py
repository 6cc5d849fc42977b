"""Where a node's addresses come from: the node slice, its pools and the service subnets.

The layout is chosen once, when the global overlay is set up, and recorded
with it (an older record without one keeps the ``carved`` layout it was made
with). There are three:

``carved`` (Linux, a slice of useful size)
   The slice is cut into aligned blocks of ``ipam.service_prefix_v4/v6``
   (shrunk to a quarter of the slice when the slice is smaller): the first
   block is the node pool (the node's address and ``join_global``
   addresses), every other block can be a service subnet, shared or
   dedicated. Everything the node hosts lies inside its slice, so one
   AllowedIPs entry per node routes all of it.

``local`` (Linux, a small slice)
   When those blocks would hold fewer containers than ZLayer gives a service
   (a /28: 13 containers, i.e. slices smaller than /26, or /118 for IPv6), the
   whole slice is the node pool, and each service gets a subnet of
   ``ipam.outside_prefix_v4/v6`` (ZLayer's /28 and /120) from the cluster CIDR
   **outside** the slice, placed the way ZLayer places them (see
   :func:`hashed_block`). As with ZLayer, such a subnet is routed only where
   the orchestrator adds it (a dedicated service's peers carry it); across
   nodes a shared service's containers are reached by their ``join_global``
   address.

``base-network`` (Windows, ``engine.segment_kind = "hcn-network"``)
   Shared services put their containers on the node's base HCN network, which
   spans the whole slice (ZLayer's model): the whole slice is one pool, shared
   by every shared service and ``join_global``, so a caller may pass any free
   address of the slice (ZLayer's HCS runtime allocates from the slice
   itself). A dedicated service gets its own HCN network, which must not
   overlap the base network: its subnet comes from outside the slice, as in
   the ``local`` layout. Without a slice smaller than the cluster there is no
   such room, and a dedicated service is refused with a clear error.

ZLayer's daemon carves every service subnet (/28, /120) from the cluster CIDR
by a hash of the service and node, with no regard to any slice; the
``local``/``base-network`` placement does the same but never inside this
node's slice or on a subnet this node already uses.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from collections.abc import Iterable
from typing import Final
from typing import Literal
from typing import TypeAlias
from typing import cast

from overlayd.config import IpamSettings
from overlayd.errors import Conflict
from overlayd.errors import InvalidRequest
from overlayd.errors import PoolExhausted
from overlayd.hookspecs import hookimpl
from overlayd.ipam import SubnetCarver
from overlayd.model import DeviceKind
from overlayd.model import GlobalOverlay
from overlayd.model import IPNetwork
from overlayd.model import OverlayMode
from overlayd.model import Pool
from overlayd.model import SubnetRequest

__all__ = [
    "NODE_POOL",
    "BuiltinSubnets",
    "LayoutKind",
    "SliceLayout",
    "choose_layout",
    "global_conflicts",
    "hashed_block",
]

LayoutKind: TypeAlias = Literal["carved", "local", "base-network"]
NODE_POOL: Final = "node"
#: The smallest carved block still worth a service (ZLayer's per-service size).
_MIN_BLOCK: Final = {4: 28, 6: 120}
#: How many outside blocks are probed before giving up (the search is a hash walk).
_PROBES: Final = 1 << 16


def _block_prefix(slice_net: IPNetwork, ipam: IpamSettings) -> int:
    want = ipam.service_prefix_v4 if slice_net.version == 4 else ipam.service_prefix_v6
    # The slice must hold the node pool block plus at least three service blocks.
    return max(want, slice_net.prefixlen + 2)


def choose_layout(
    cluster: IPNetwork, slice_net: IPNetwork, ipam: IpamSettings, segment_kind: str
) -> LayoutKind:
    """The layout a new global overlay gets (see the module docstring)."""
    if segment_kind == DeviceKind.HCN_NETWORK:
        return "base-network"
    want = ipam.service_prefix_v4 if slice_net.version == 4 else ipam.service_prefix_v6
    block = _block_prefix(slice_net, ipam)
    # Only a slice too small for the configured blocks, shrinking them below
    # ZLayer's per-service size, moves the service subnets out of it.
    if block > want and block > _MIN_BLOCK[slice_net.version] and slice_net != cluster:
        return "local"
    return "carved"


def global_conflicts(
    existing: GlobalOverlay,
    *,
    deployment: str,
    cluster: IPNetwork,
    slice_net: IPNetwork | None,
    port: int,
) -> list[str]:
    """Why a ``setup_global_overlay`` cannot adopt ``existing`` (empty: it can).

    The instance id never conflicts (a restarted agent has a new one), nor
    ``nat_enabled`` (it is applied), nor an absent slice (the recorded one is
    kept). A different deployment, cluster CIDR, given slice or listen port
    would need a different device or different addresses for what already
    exists, so it is refused rather than half applied.
    """
    out: list[str] = []
    if deployment != existing.deployment:
        out.append(f"deployment {existing.deployment!r}, not {deployment!r}")
    if cluster != existing.cluster_cidr:
        out.append(f"cluster_cidr {existing.cluster_cidr}, not {cluster}")
    if slice_net is not None and slice_net != existing.slice_cidr:
        out.append(f"slice_cidr {existing.slice_cidr}, not {slice_net}")
    if port != existing.wg_port:
        out.append(f"wg_port {existing.wg_port}, not {port}")
    return out


def _fnv1a(service: str, node: str) -> int:
    """FNV-1a 64 over the service, a 0x1f separator and the node (ZLayer's placement hash)."""
    value = 0xCBF29CE484222325
    for byte in (*service.encode(), 0x1F, *node.encode()):
        value ^= byte
        value = (value * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


def hashed_block(cluster: IPNetwork, prefix: int, service: str, node: str, probe: int) -> IPNetwork:
    """The ``probe``-th candidate block for ``(service, node)``: hash start, then linear.

    ZLayer's service subnet registry places a ``(service, node)`` pair the same
    way: block ``(fnv1a(service, node) + probe) mod count`` of the cluster CIDR.
    """
    count = 1 << (prefix - cluster.prefixlen)
    index = (_fnv1a(service, node) + probe) % count
    step = 1 << (cluster.max_prefixlen - prefix)
    return ipaddress.ip_network((int(cluster.network_address) + index * step, prefix))


class SliceLayout:
    """A node's address layout: its node pool and where service subnets come from.

    :param node_key: What distinguishes this node when placing subnets outside
        the slice (its slice, unique per node), so two nodes do not pick the
        same subnet for one service.
    """

    def __init__(
        self,
        kind: LayoutKind,
        cluster: IPNetwork,
        slice_net: IPNetwork,
        ipam: IpamSettings,
        *,
        node_key: str,
    ) -> None:
        self.kind = kind
        self.cluster = cluster
        self.slice = slice_net
        self.node_key = node_key
        self._outside_prefix = (
            ipam.outside_prefix_v4 if slice_net.version == 4 else ipam.outside_prefix_v6
        )
        self._used: set[IPNetwork] = set()
        self._carver: SubnetCarver | None = None
        if kind == "carved":
            prefix = _block_prefix(slice_net, ipam)
            self.node_block = cast(IPNetwork, next(iter(slice_net.subnets(new_prefix=prefix))))
            self._carver = SubnetCarver(slice_net, prefix, exclude=[self.node_block])
        else:
            self.node_block = slice_net

    def node_pool(self, node_ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Pool:
        return Pool(name=NODE_POOL, cidr=self.node_block, reserved=(node_ip,))

    def flat(self, mode: OverlayMode) -> bool:
        """Whether a service of ``mode`` uses the node pool instead of a subnet of its own."""
        return self.kind == "base-network" and mode is OverlayMode.SHARED

    def outside(self, mode: OverlayMode) -> bool:
        """Whether a service of ``mode`` gets its subnet from outside the slice."""
        return self.kind == "local" or (
            self.kind == "base-network" and mode is OverlayMode.DEDICATED
        )

    def mark_used(self, subnet: IPNetwork) -> None:
        """Record a subnet in use (loading records)."""
        if self._carver is not None and subnet.subnet_of(self.slice):  # type: ignore[arg-type]
            self._carver.mark_used(subnet)
        else:
            self._used.add(subnet)

    def release(self, subnet: IPNetwork) -> None:
        if self._carver is not None:
            self._carver.release(subnet)
        self._used.discard(subnet)

    def allocate(self, service: str, mode: OverlayMode, in_use: Iterable[IPNetwork]) -> IPNetwork:
        """A subnet for a new service of ``mode`` (not for a flat one: it uses the slice)."""
        if self.flat(mode):
            return self.slice
        if not self.outside(mode):
            assert self._carver is not None
            return self._carver.allocate()
        if self.slice == self.cluster:
            raise Conflict(
                f"a dedicated service on Windows needs a subnet outside the node slice, "
                f"but the slice is the whole cluster CIDR {self.cluster}; set the overlay "
                "up with a slice_cidr smaller than the cluster (as ZLayer's HCS runtime does)"
            )
        taken = [*self._used, *in_use, self.slice]
        for probe in range(_PROBES):
            block = hashed_block(self.cluster, self._outside_prefix, service, self.node_key, probe)
            if not any(block.overlaps(other) for other in taken):
                self._used.add(block)
                return block
        raise PoolExhausted(
            f"no free /{self._outside_prefix} subnet left in {self.cluster} outside the "
            f"node slice {self.slice}"
        )


class BuiltinSubnets:
    """The built-in carving on the subnet hooks, over the engine's current layout.

    Registered by the engine; answers last (``trylast``) and only for pools
    and requests no driver owns (see ``[ipam] driver``).
    """

    name = "builtin_subnets"

    def __init__(self, layout: Callable[[], SliceLayout | None]) -> None:
        self._layout = layout
        self._lock = threading.Lock()

    @hookimpl(trylast=True)
    def overlayd_ipam_subnet_allocate(self, request: SubnetRequest) -> IPNetwork | None:
        if request.driver not in (None, self.name):
            return None
        layout = self._layout()
        if layout is None:
            raise InvalidRequest("no address layout: the global overlay is not set up")
        with self._lock:
            return layout.allocate(request.service, request.mode, request.taken)

    @hookimpl(trylast=True)
    def overlayd_ipam_subnet_release(self, pool: Pool) -> bool | None:
        if pool.driver not in (None, self.name):
            return None
        layout = self._layout()
        if layout is None:
            return False
        with self._lock:
            layout.release(pool.cidr)
        return True
