"""The engine as cluster mode sees it: the only engine surface ``overlayd.cluster`` uses.

Cluster mode drives the engine exactly as an orchestrator would (set up the
global overlay, apply peer differences, read ``status`` for handshakes) plus
two things the IPC does not offer: carrying NAT candidates through the store
(``nat_exchange``, see :func:`overlayd.nat.host.use_exchange`), and serving
DNS records that other nodes own without storing or re-publishing them
(:meth:`ClusterEngine.serve_remote_dns`). Anything the
engine offers beyond this protocol is off limits to the cluster package, so
the engine can change shape freely behind it.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Protocol

from overlayd.model import DnsRecord
from overlayd.model import GlobalOverlay
from overlayd.model import IPNetwork
from overlayd.model import PeerChange
from overlayd.model import PeerConfig
from overlayd.model import PeerScope

if TYPE_CHECKING:
    from overlayd.engine import Status
    from overlayd.nat.agent import NatAgent
    from overlayd.nat.candidates import CandidateExchange

__all__ = ["ClusterEngine"]


class ClusterEngine(Protocol):
    """What :class:`overlayd.engine.Engine` provides to cluster mode."""

    #: The NAT agent of the global device, when it runs (see :mod:`overlayd.nat.host`).
    nat: NatAgent | None
    #: How NAT candidates travel; cluster mode puts its own exchange here.
    nat_exchange: CandidateExchange

    @property
    def global_(self) -> GlobalOverlay | None:
        """The node's global overlay, ``None`` until it is set up."""

    @property
    def peers(self) -> Mapping[str, Mapping[str, PeerConfig]]:
        """Recorded peers per device name (read only here)."""

    async def setup_global_overlay(
        self,
        *,
        deployment: str,
        instance_id: str,
        cluster_cidr: str | IPNetwork,
        slice_cidr: str | IPNetwork | None = None,
        wg_port: int,
        nat_enabled: bool = False,
    ) -> str: ...

    async def apply_peers(
        self, changes: Sequence[PeerChange], scope: PeerScope | None = None
    ) -> None: ...

    async def status(self) -> Status: ...

    async def serve_remote_dns(
        self, added: Sequence[DnsRecord], removed: Sequence[DnsRecord]
    ) -> None: ...
