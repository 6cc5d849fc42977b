"""What the engine answers: ``status``, ``gc`` and ``reconcile`` results (frozen models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic import ConfigDict

from overlayd.model import AnyHandle
from overlayd.model import IPAddress
from overlayd.model import IPNetwork
from overlayd.model import PeerStatus
from overlayd.model import ReconcileReport

__all__ = ["DedicatedStatus", "GcReport", "ReconcileSummary", "Status"]


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True)


class DedicatedStatus(_Result):
    service: str
    interface: str
    public_key: str
    listen_port: int
    overlay_ip: IPAddress
    subnet: IPNetwork
    peer_count: int


class Status(_Result):
    """What ``status`` answers (ZLayer's StatusSnapshot)."""

    interface: str | None = None
    node_ip: IPAddress | None = None
    public_key: str | None = None
    overlay_cidr: IPNetwork | None = None
    slice_cidr: IPNetwork | None = None
    peer_count: int = 0
    service_count: int = 0
    peers: tuple[PeerStatus, ...] = ()
    dedicated_services: tuple[DedicatedStatus, ...] = ()
    #: NAT traversal (:class:`overlayd.nat.host.NatStatus`) when it runs.
    nat: Any = None


class GcReport(_Result):
    released: tuple[AnyHandle, ...] = ()
    kept: int = 0


class ReconcileSummary(_Result):
    adopted: int = 0
    recreated: int = 0
    removed: int = 0
    released: int = 0
    errors: tuple[str, ...] = ()
    reports: tuple[ReconcileReport, ...] = ()
