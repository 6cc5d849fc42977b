"""Listings, garbage collection and reconcile.

``gc`` detaches attachments whose workloads are gone; ``reconcile`` finishes
recorded detaches, re-ensures every recorded device, peer, masquerade and port
mapping (create-or-adopt), then lets the drivers compare the host with the
records and reports what they adopted, recreated, removed and released.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from overlayd.errors import OverlaydError
from overlayd.model import AnyHandle
from overlayd.model import Attachment
from overlayd.model import Device
from overlayd.model import DeviceKind
from overlayd.model import DeviceSpec
from overlayd.model import Event
from overlayd.model import Lease
from overlayd.model import NetnsHandle
from overlayd.model import PeerChange
from overlayd.model import PeerConfig
from overlayd.model import PeerStatus
from overlayd.model import ReconcileRequest
from overlayd.model import handle_key
from overlayd.peers import change_from
from overlayd.progress import log_progress

from .base import GLOBAL_KEY
from .base import NODE_POOL
from .base import EngineBase
from .base import owner_of
from .results import GcReport
from .results import ReconcileSummary
from .validation import HANDLE_ADAPTER

__all__ = ["ReconcileMixin"]

log = logging.getLogger(__name__)


#: What a recorded device carries over into the spec that re-ensures it.
_SPEC_FIELDS = ("kind", "name", "owner", "addresses", "mtu", "listen_port", "subnet", "options")


class ReconcileMixin(EngineBase):
    """Listings, ``gc`` and ``reconcile``."""

    def list_attachments(self, service: str | None = None) -> list[Attachment]:
        with self._mem:
            return [a for a in self.attachments.values() if service is None or a.service == service]

    def list_leases(self, pool: str | None = None) -> list[Lease]:
        """Every lease (manual and attachment) recorded, optionally of one pool."""
        with self._mem:
            leases = list(self.manual_leases.values())
            atts = list(self.attachments.values())
            services = dict(self.services)
        for att in atts:
            svc = services.get(att.service)
            if svc is not None:
                leases.append(
                    Lease(
                        ip=att.ip,
                        pool=self._pool_for(svc).name,
                        owner=owner_of(att.key),
                        created_unix_secs=att.created_unix_secs,
                    )
                )
            if att.global_ip is not None:
                leases.append(
                    Lease(
                        ip=att.global_ip,
                        pool=NODE_POOL,
                        owner=owner_of(att.key),
                        created_unix_secs=att.created_unix_secs,
                    )
                )
        return [lease for lease in leases if pool is None or lease.pool == pool]

    async def gc(
        self,
        live: Iterable[AnyHandle | dict[str, Any]],
        *,
        dry_run: bool = False,
        network: str | None = None,
    ) -> GcReport:
        """Detach every attachment whose handle is not in ``live``.

        Race-safe without stopping the world: only attachments that existed when
        the call started are candidates, and each is re-checked under its
        handle lock, so an attach in flight is never collected. With
        ``network``, only the ``netns`` attachments of that CNI network are
        candidates, and ``kept`` counts that network's attachments.
        """
        self._require_started()
        live_keys = set()
        for h in live:
            handle = HANDLE_ADAPTER.validate_python(h) if isinstance(h, dict) else h
            live_keys.add(handle_key(handle))
        started = int(time.time())
        scope = [a for a in self.list_attachments() if _in_network(a, network)]
        candidates = [a for a in scope if a.key not in live_keys and a.created_unix_secs <= started]
        released: list[AnyHandle] = []
        for att in candidates:
            if dry_run or await self.detach(att.handle):
                released.append(att.handle)
        total = (
            len(self.attachments)
            if network is None
            else sum(1 for a in self.list_attachments() if _in_network(a, network))
        )
        kept = total - (len(released) if dry_run else 0)
        return GcReport(released=tuple(released), kept=kept)

    async def reconcile(self, startup: bool = False) -> ReconcileSummary:
        """Finish recorded detaches, re-ensure recorded devices and peers, then let
        drivers compare with the host. At start, a summary is logged."""
        self._require_started()
        started = time.perf_counter()
        # Detaches recorded as under way (a crash or a failed write cut them
        # short) are finished first, so that no driver repairs them.
        with self._mem:
            pending = sorted(self.detaching)
        finished, errors = await self._detach_keys(pending, "finishing the detach of")
        async with self._locks.hold(("global", True)):
            recreated, ensure_errors = await self._run(self._ensure_recorded)
            errors.extend(ensure_errors)
            with self._mem:
                # A detach under way is finished, not repaired: its interfaces
                # are left for the drivers to sweep as unrecorded.
                request = ReconcileRequest(
                    devices=tuple(self._recorded_devices()),
                    attachments=tuple(
                        a for k, a in self.attachments.items() if k not in self.detaching
                    ),
                    masquerades=tuple(self.masquerades.values()),
                    port_mappings=tuple(self.port_mappings.values()),
                    startup=startup,
                )
            reports = await self._run(self.hooks.reconcile, request)
        released = list(finished)
        for report in reports:
            errors.extend(report.errors)
            done, failed = await self._detach_keys(report.gone, "releasing")
            released += done
            errors.extend(failed)
        summary = ReconcileSummary(
            adopted=sum(len(r.adopted) for r in reports),
            recreated=len(recreated) + sum(len(r.recreated) for r in reports),
            removed=sum(len(r.removed) for r in reports),
            released=len(released),
            errors=tuple(errors),
            reports=tuple(reports),
        )
        if startup or summary.errors or summary.recreated or summary.removed or released:
            _log_reconcile(summary, "startup" if startup else "reconcile")
        repairs = {
            "recreated": [*recreated, *(o for r in reports for o in r.recreated)],
            "removed": [o for r in reports for o in r.removed],
            "released": released,
        }
        self._count_reconcile(summary, repairs, time.perf_counter() - started)
        return summary

    def _count_reconcile(
        self, summary: ReconcileSummary, repairs: dict[str, list[str]], seconds: float
    ) -> None:
        """Record a pass in :attr:`stats` and emit one ``reconcile_repaired`` per repair."""
        self.stats.reconcile_runs.inc("error" if summary.errors else "ok")
        self.stats.reconcile_seconds.observe(seconds)
        for kind, objects in repairs.items():
            if objects:
                self.stats.reconcile_repairs.inc(kind, amount=len(objects))
            for name in objects:
                self.emit(Event(event="reconcile_repaired", kind=kind, object=name))

    async def _detach_keys(self, keys: Iterable[str], what: str) -> tuple[list[str], list[str]]:
        """Detach the attachments of ``keys``; the keys that went, and what failed."""
        done: list[str] = []
        errors: list[str] = []
        keys = list(keys)
        progress = log_progress(f"reconcile, {what} attachments", len(keys), log)
        for key in keys:
            progress.step()
            att = self.attachments.get(key)
            if att is None:
                continue
            try:
                if await self.detach(att.handle):
                    done.append(key)
            except OverlaydError as exc:
                errors.append(f"{what} {key}: {exc}")
        progress.done()
        return done, errors

    def _recorded_devices(self) -> list[Device]:
        out = [self.global_.device] if self.global_ else []
        for svc in self.services.values():
            out.append(svc.bridge)
            if svc.dedicated is not None:
                out.append(svc.dedicated)
        return out

    def _ensure_recorded(self) -> tuple[list[str], list[str]]:
        """Create-or-adopt every recorded device (idempotent) and re-apply its peers;
        the names of the devices that were missing, and what failed."""
        errors: list[str] = []
        recreated: list[str] = []
        specs: list[tuple[Device, DeviceSpec]] = []
        g = self.global_
        if g is not None:
            specs.append((g.device, self._spec_of(g.device, GLOBAL_KEY)))
        for svc in self.services.values():
            specs.append((svc.bridge, self._spec_of(svc.bridge, None)))
            if svc.dedicated is not None:
                specs.append(
                    (
                        svc.dedicated,
                        self._spec_of(svc.dedicated, f"wg-service-{svc.service}"),
                    )
                )
        present = {
            (d.kind, d.name)
            for kind in {s.kind for _, s in specs}
            for d in self.hooks.device_list(kind)
        }
        progress = log_progress("reconcile, re-ensuring recorded devices", len(specs), log)
        for recorded, spec in specs:
            progress.step()
            try:
                # Always create-or-adopt: drivers learn the recorded key and port
                # this way even when the device survived the restart.
                if (spec.kind, spec.name) not in present:
                    recreated.append(spec.name)
                self.hooks.device_create(spec)
                if recorded.kind == DeviceKind.WIREGUARD:
                    self._reconcile_peers(recorded)
            except OverlaydError as exc:
                log.warning("could not re-ensure recorded device %s: %s", spec.name, exc)
                errors.append(f"{spec.name}: {exc}")
        progress.done()
        for rule in self.masquerades.values():
            try:
                self.hooks.nat_masquerade(rule, True)
            except OverlaydError as exc:
                errors.append(f"masquerade {rule.subnet}: {exc}")
        for mapping in self.port_mappings.values():
            try:
                self.hooks.nat_port_mapping(mapping, True)
            except OverlaydError as exc:
                errors.append(f"port mapping {mapping.host_port}: {exc}")
        self._sync_dns_serve()
        return recreated, errors

    def _reconcile_peers(self, device: Device) -> None:
        """Make the device's peers exactly the recorded ones.

        A recorded peer that the device reports with the same endpoint,
        allowed IPs and keepalive (every field of ``PeerConfig``) is not sent
        again: ``peer_apply`` applies differences, so re-sending it changed
        nothing, and at start it was 10,000 changes built and merged for
        nothing (docs/design-notes.rst, "Footprint of a large node"). An
        endpoint recorded as a host name never matches the resolved one the
        device reports, so such peers are re-sent (and re-resolved) as before.
        """
        peers = self._peer_table(device.name)
        status = {p.public_key: p for p in self.hooks.peer_status(device)}
        changes = [
            PeerChange(public_key=k, remove=True) for k in sorted(status.keys() - peers.keys())
        ]
        changes += [
            change_from(p) for p in peers.values() if not _in_place(p, status.get(p.public_key))
        ]
        if changes:
            self.hooks.peer_apply(device, changes)

    def _spec_of(self, device: Device, key_name: str | None) -> DeviceSpec:
        recorded = {field: getattr(device, field) for field in _SPEC_FIELDS}
        key = self._identity_key(key_name) if key_name else None
        return DeviceSpec(**recorded, private_key=key)

    # -- convenience for embedders ------------------------------------------


def _in_place(recorded: PeerConfig, reported: PeerStatus | None) -> bool:
    """True when the device reports ``recorded`` as it is (its every field)."""
    return (
        reported is not None
        and reported.endpoint == recorded.endpoint
        and reported.allowed_ips == recorded.allowed_ips
        and reported.persistent_keepalive_secs == recorded.persistent_keepalive_secs
    )


def _log_reconcile(summary: ReconcileSummary, what: str) -> None:
    """One line saying what a reconcile pass did; a warning when something failed."""
    level = logging.WARNING if summary.errors else logging.INFO
    log.log(
        level,
        "%s reconcile: %d adopted, %d recreated, %d removed, %d released, %d error(s)%s",
        what,
        summary.adopted,
        summary.recreated,
        summary.removed,
        summary.released,
        len(summary.errors),
        "".join(f"\n  {e}" for e in summary.errors[:20]),
    )


def _in_network(att: Attachment, network: str | None) -> bool:
    """Whether ``att`` is a candidate of a GC limited to CNI network ``network``."""
    if network is None:
        return True
    handle = att.handle
    return (
        isinstance(handle, NetnsHandle)
        and handle.container_id is not None
        and (handle.network or "") == network
    )
