"""The engine: request semantics over the hooks, state, locks and rollback.

Every operation follows the same shape:

1. validate the input (nothing is touched if it is bad);
2. take the locks of the resources it touches, in a fixed order
   (global → service → device → handle → dns name), shared where it only
   needs the resource to stay put, exclusive where it changes it; there is no
   global lock, and ``status`` takes none;
3. run the steps in a worker thread, recording the inverse of each completed
   host effect; when a step fails the inverses run in reverse order;
4. commit the durable records once, in one store transaction; only then the
   in-memory view changes and the answer goes out.

Where each concern lives:

============================================  =========================================
:mod:`~overlayd.engine.base`                  shared state, lifecycle, events, commit
:mod:`~overlayd.engine.work`                  worker pool, undo, store transactions
:mod:`~overlayd.engine.validation`            input validation
:mod:`~overlayd.engine.loading`               rebuilding the view from the store
:mod:`~overlayd.engine.layout`                the node slice, pools and subnet carving
:mod:`~overlayd.engine.global_overlay`        the global device, node identity, masquerade
:mod:`~overlayd.engine.services`              service overlays
:mod:`~overlayd.engine.addresses`             manual leases (``allocate_ip``)
:mod:`~overlayd.engine.attach`                attach and detach
:mod:`~overlayd.engine.peering`               peer changes
:mod:`~overlayd.engine.dns`                   the overlay zone and its records
:mod:`~overlayd.engine.nat`                   port mappings, the NAT tick
:mod:`~overlayd.engine.health`                ``status`` and peer health
:mod:`~overlayd.engine.reconcile`             listings, ``gc`` and ``reconcile``
============================================  =========================================

:class:`Engine` composes them; the reason for mixins over one typed base is in
``docs/design-notes.rst`` ("The engine package").
"""

from __future__ import annotations

from typing import Any

from overlayd.errors import NotSupported
from overlayd.model import AnyHandle
from overlayd.model import DriverInfo

from .addresses import AddressesMixin
from .attach import AttachMixin
from .attach import short_name
from .base import DETACH_INTENT
from .base import GLOBAL_KEY
from .base import NODE_POOL
from .base import EngineBase
from .dns import DnsMixin
from .global_overlay import GlobalOverlayMixin
from .health import HealthMixin
from .loading import LoadingMixin
from .loading import gc_paused
from .loading import leases_from_records
from .nat import NatMixin
from .peering import PeersMixin
from .reconcile import ReconcileMixin
from .results import DedicatedStatus
from .results import GcReport
from .results import ReconcileSummary
from .results import Status
from .services import ServicesMixin
from .validation import build_change
from .validation import parse_handle

__all__ = [
    "DETACH_INTENT",
    "GLOBAL_KEY",
    "NODE_POOL",
    "DedicatedStatus",
    "Engine",
    "GcReport",
    "ReconcileSummary",
    "Status",
    "gc_paused",
    "leases_from_records",
]

# Older private names still imported by the server and the tests.
_build_change = build_change
_short_name = short_name


class Engine(
    GlobalOverlayMixin,
    ServicesMixin,
    AddressesMixin,
    AttachMixin,
    PeersMixin,
    DnsMixin,
    NatMixin,
    HealthMixin,
    ReconcileMixin,
    LoadingMixin,
    EngineBase,
):
    """The overlay engine. Use as ``async with Engine(config) as engine: ...``.

    :param config: Engine configuration; ``config.drivers`` names the drivers
        to load through entry points unless ``drivers`` is given.
    :param drivers: Driver instances to register instead of loading by name
        (tests and embedders), first called first.
    :param store: A state store (:class:`overlayd.state.Store`); default:
        SQLite under ``config.data_dir``, or in memory when that is ``None``.
    :param plugins: Extra plugins to register (e.g. the built-in DNS server).
    """

    # -- convenience for embedders ------------------------------------------

    def node_public_key(self) -> str | None:
        return self.global_.device.public_key if self.global_ else None

    def handle_of(self, value: dict[str, Any]) -> AnyHandle:
        return parse_handle("handle", value)

    def describe_drivers(self) -> list[DriverInfo]:
        return self.hooks.describe()

    def supports(self, capability: str) -> bool:
        return any(capability in info.capabilities for info in self.describe_drivers())

    def require(self, capability: str) -> None:
        if not self.supports(capability):
            raise NotSupported(f"no loaded driver provides {capability}")
