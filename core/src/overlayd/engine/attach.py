"""Attach and detach: a workload's address, interface, guest peer and DNS names.

An attach leases an address from the service's pool (and one from the node
pool with ``join_global``), asks the driver of the handle's platform to plug
the workload in, adds a guest-managed workload's key as a peer, and registers
``<service>`` and ``<short name>.<service>`` in DNS, all undone in reverse when
a step fails. A detach is recorded as under way before the host changes, so a
crash in the middle is finished by the next detach, reconcile or start.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import time
from typing import Any
from typing import Literal

from overlayd.errors import Conflict
from overlayd.errors import InvalidRequest
from overlayd.errors import OverlaydError
from overlayd.errors import StateError
from overlayd.errors import TeardownError
from overlayd.errors import quote
from overlayd.model import AnyHandle
from overlayd.model import Attachment
from overlayd.model import AttachRequest
from overlayd.model import Event
from overlayd.model import GlobalOverlay
from overlayd.model import GuestManagedHandle
from overlayd.model import IPAddress
from overlayd.model import Lease
from overlayd.model import LinuxPidHandle
from overlayd.model import NetnsHandle
from overlayd.model import NodeInfo
from overlayd.model import PeerChange
from overlayd.model import Pool
from overlayd.model import ServiceOverlay
from overlayd.model import WindowsContainerHandle
from overlayd.model import handle_key
from overlayd.stats import timed

from .base import DETACH_INTENT
from .base import EngineBase
from .base import owner_of
from .dnsview import records
from .validation import DNS_NAME_RE
from .validation import parse_handle
from .work import Handoff
from .work import Tx
from .work import Undo

__all__ = ["AttachMixin", "short_name"]

log = logging.getLogger(__name__)


class AttachMixin(EngineBase):
    """Attach and detach workloads."""

    @timed("attach")
    async def attach(
        self,
        handle: AnyHandle | dict[str, Any],
        service: str,
        *,
        join_global: bool = False,
        dns_server: str | IPAddress | None = None,
        dns_domain: str | None = None,
        default_route: bool = True,
    ) -> Attachment:
        """Attach a workload to ``service``. Idempotent per handle.

        ``default_route=False`` routes only the cluster CIDR via the service
        gateway (for a workload whose default route comes from another network).
        """
        self._require_started()
        handle = parse_handle("attach handle", handle)
        if isinstance(handle, NetnsHandle) and handle.path is None:
            raise InvalidRequest(
                "attaching a netns handle needs its path (the namespace to attach)"
            )
        self._check_name("service name", service)
        dns_ip = self._parse_ip("dns_server", dns_server) if dns_server else None
        if dns_domain is not None and not DNS_NAME_RE.match(dns_domain):
            raise InvalidRequest(f"invalid dns_domain {quote(dns_domain)}")
        key = handle_key(handle)
        if key in self.detaching:
            # Its detach is recorded as under way: finish it, then attach anew.
            await self.detach(handle)
        async with self._locks.hold(
            ("global", False), (f"service:{service}", False), (f"handle:{key}", True)
        ):
            existing = self.attachments.get(key)
            if existing is not None:
                if existing.service != service:
                    raise Conflict(
                        f"{key} is already attached to service {quote(existing.service)}; "
                        "detach it first"
                    )
                return existing
            self._global()
            svc = self._service(service)
            att = await self._run(
                self._attach, handle, svc, join_global, dns_ip, dns_domain, default_route
            )
        self.emit(_attachment_event("attached", att))
        return att

    def _attach(
        self,
        handle: AnyHandle,
        svc: ServiceOverlay,
        join_global: bool,
        dns_server: IPAddress | None,
        dns_domain: str | None,
        default_route: bool = True,
    ) -> Attachment:
        g = self._global()
        key = handle_key(handle)
        owner = owner_of(key)
        pool = self._pool_for(svc)
        undo = Undo()
        try:
            if isinstance(handle, WindowsContainerHandle) and handle.ip is not None:
                # On the base network (Windows, shared) the pool is the whole node
                # slice, where ZLayer's HCS runtime picks its addresses; the
                # reservation makes sure no one else is ever given the address.
                if handle.ip not in pool.cidr:
                    where = (
                        f"the node slice {pool.cidr}"
                        if self._flat(svc)
                        else f"service {svc.service}'s subnet {svc.subnet}"
                    )
                    raise InvalidRequest(f"requested address {handle.ip} is outside {where}")
                lease = self.hooks.ipam_reserve(pool, handle.ip, owner)
            else:
                lease = self.hooks.ipam_allocate(pool, owner)
            undo.push("release address", lambda: self.hooks.ipam_release(pool, lease.ip))
            global_lease: Lease | None = None
            if join_global:
                node_pool = self._node_pool()
                gl = self.hooks.ipam_allocate(node_pool, owner)
                global_lease = gl
                undo.push(
                    "release global address",
                    lambda: self.hooks.ipam_release(node_pool, gl.ip),
                )
            request = AttachRequest(
                handle=handle,
                service=svc.service,
                segment=svc.bridge,
                address=_interface(lease.ip, svc.subnet.prefixlen),
                gateway=svc.gateway,
                global_address=(
                    _interface(global_lease.ip, g.cluster_cidr.prefixlen) if global_lease else None
                ),
                node=self._node_info(svc),
                dns_server=dns_server,
                dns_domain=dns_domain,
                mtu=self.config.engine.mtu,
                default_route=default_route,
            )
            tx = Tx()
            entries = [
                self._dns_entry(svc.service, lease.ip, owner),
                self._dns_entry(f"{short_name(handle)}.{svc.service}", lease.ip, owner),
            ]
            for entry in entries:
                dns_key = self._dns_key(entry)
                tx.put("dns", f"{dns_key[0]}|{dns_key[1]}", entry.doc())
                tx.after.append(functools.partial(self._dns_put, dns_key, entry))
            tx.put("lease", f"{lease.pool}|{lease.ip}", lease)
            if global_lease is not None:
                tx.put("lease", f"{global_lease.pool}|{global_lease.ip}", global_lease)
            att, tx = self._plug_in(request, key, tx, undo)
            if att.guest is not None:
                device = svc.dedicated or g.device
                guest = PeerChange(
                    public_key=att.guest.public_key,
                    allowed_ips=(ipaddress.ip_network(f"{lease.ip}/{lease.ip.max_prefixlen}"),),
                )
                table = self._peer_table(device.name)
                merged = table.preview([guest])
                restore = table.undo_changes(merged)
                self.hooks.peer_apply(device, [guest])
                undo.push("remove guest peer", lambda: self.hooks.peer_apply(device, restore))
                self._record_peers(tx, table, merged)
            dns_added = records(entries)
            self.hooks.dns_records_changed(dns_added, [])
            undo.push(
                "remove DNS records",
                lambda: self.hooks.dns_records_changed([], dns_added),
            )
            if dns_server is not None:
                self.hooks.dns_endpoint_configure(att, [dns_server], dns_domain)
            self._commit(tx)
        except BaseException as exc:
            undo.rollback(exc)
            raise
        return att

    def _plug_in(
        self, request: AttachRequest, key: str, tx: Tx, undo: Undo
    ) -> tuple[Attachment, Tx]:
        """Have the driver attach; add the attachment's record to ``tx``.

        Returns the attachment and what is left to commit. Without a plan
        from the driver that is ``tx`` itself, written after the attach.
        With one (``overlayd_attach_plan``), ``tx`` is written by another
        worker while the driver plugs the workload in, and what is left is
        its in-memory changes, plus the record again if the driver's answer
        differs from its plan. A record written for an attach that then
        fails is removed as part of the rollback; a crash in between leaves
        a record whose interfaces the start-up reconcile recreates (or whose
        workload it finds gone), as for interfaces that vanished.
        """
        planned = self.hooks.attach_plan(request)
        if planned is None:
            att = self._stamped(self.hooks.attach(request))
            undo.push("detach", lambda: self.hooks.detach(att))
            self._record_attachment(tx, key, att)
            return att, tx
        att = self._stamped(planned)
        self._record_attachment(tx, key, att)
        written = self._work.hand_off(self._write, tx.puts, tx.deletes)
        if written is None:  # no worker free: the record first, then the attach
            self._write(tx.puts, tx.deletes)
        unwrite = functools.partial(self._write, {}, set(tx.puts))
        try:
            made = self.hooks.attach(request.model_copy(update={"planned": planned}))
        except BaseException:
            if written is None or _succeeds(written):
                undo.push("remove the attachment's record", unwrite)
            raise
        undo.push("detach", lambda: self.hooks.detach(made))
        if written is not None:
            written.result()
        undo.push("remove the attachment's record", unwrite)
        rest = Tx(after=list(tx.after))
        if made != planned:
            log.info("%s: the driver attached other than it planned; recording that", key)
            att = self._stamped(made)
            self._record_attachment(rest, key, att)
        return att, rest

    @staticmethod
    def _stamped(att: Attachment) -> Attachment:
        return att.model_copy(update={"created_unix_secs": int(time.time())})

    def _record_attachment(self, tx: Tx, key: str, att: Attachment) -> None:
        tx.put("attachment", key, att)
        tx.after.append(lambda: self.attachments.__setitem__(key, att))
        if att.namespace_guid:
            guid = att.namespace_guid.lower()
            tx.after.append(lambda: self._by_namespace.__setitem__(guid, key))

    #: The last :meth:`_node_info`: the service and global overlay it was built
    #: from (frozen models, replaced on every change) and the answer.
    _node_info_memo: tuple[ServiceOverlay | None, GlobalOverlay, NodeInfo] | None = None

    def _node_info(self, svc: ServiceOverlay | None = None) -> NodeInfo:
        g = self._global()
        memo = self._node_info_memo
        if memo is not None and memo[0] is svc and memo[1] is g:
            return memo[2]
        device = svc.dedicated if svc is not None and svc.dedicated is not None else g.device
        info = NodeInfo(
            interface=device.name,
            public_key=device.public_key,
            node_ip=(svc.overlay_ip if svc is not None and svc.dedicated else None) or g.node_ip,
            cluster_cidr=g.cluster_cidr,
            slice_cidr=g.slice_cidr,
            listen_port=device.listen_port or g.wg_port,
            mtu=self.config.engine.mtu,
        )
        self._node_info_memo = (svc, g, info)
        return info

    @timed("detach")
    async def detach(self, handle: AnyHandle | dict[str, Any]) -> bool:
        """Remove everything the attach of ``handle`` created. Unknown handles succeed.

        Returns ``True`` when an attachment was removed.
        """
        self._require_started()
        handle = parse_handle("detach handle", handle)
        key = self._attachment_key(handle)
        while True:
            att = self.attachments.get(key)
            if att is None:
                return False
            async with self._locks.hold(
                ("global", False),
                (f"service:{att.service}", False),
                (f"handle:{key}", True),
            ):
                # Read the attachment again under its locks: while this call
                # waited, the handle may have been detached and attached to
                # another service, whose lock is the one to hold.
                held = self.attachments.get(key)
                if held is None:
                    return False
                if held.service != att.service:
                    continue
                await self._run(self._detach_locked, key)
            self.emit(_attachment_event("detached", held))
            return True

    def _attachment_key(self, handle: AnyHandle) -> str:
        """The key of the attachment ``handle`` names.

        ZLayer's HCS runtime detaches a Windows container by the namespace GUID
        the attach answered, passed as ``container_id``; such a handle finds the
        attachment whose namespace it is.
        """
        key = handle_key(handle)
        if key in self.attachments or not isinstance(handle, WindowsContainerHandle):
            return key
        guid = handle.container_id.strip().strip("{}").lower()
        with self._mem:
            return self._by_namespace.get(guid, key)

    def _detach_locked(self, key: str) -> None:
        att = self.attachments[key]
        if key not in self.detaching:
            # The intent is durable before the host changes: whatever happens
            # next (a crash, a driver error, a store that stops accepting
            # writes), the record says the detach is under way, and the next
            # detach, reconcile or start finishes it. If even this write fails,
            # nothing was touched.
            intent = Tx()
            intent.put(DETACH_INTENT, key, {"since_unix_secs": int(time.time())})
            intent.after.append(functools.partial(self.detaching.add, key))
            try:
                self._commit(intent)
            except StateError as exc:
                raise StateError(f"detach of {key} changed nothing: {exc}") from exc
        self.hooks.detach(att)
        errors: list[BaseException] = []
        tx = Tx()
        owner = owner_of(key)
        # The records an attach creates are known: no scan of the whole zone.
        names = (att.service, f"{short_name(att.handle)}.{att.service}")
        keys = [(n.lower(), self._dns_ips.text(att.ip)) for n in names]
        found = [(k, self.dns.get(k)) for k in keys]
        gone = [(k, rec) for k, rec in found if rec is not None and rec.source == owner]
        try:
            self.hooks.dns_records_changed([], records(rec for _, rec in gone))
        except OverlaydError as exc:
            errors.append(exc)
        for dns_key, _ in gone:
            tx.delete("dns", f"{dns_key[0]}|{dns_key[1]}")
            tx.after.append(functools.partial(self._dns_pop, dns_key))
        if att.guest is not None:
            svc = self.services.get(att.service)
            g = self.global_
            device = svc.dedicated if svc and svc.dedicated else (g.device if g else None)
            if device is not None:
                removal = [PeerChange(public_key=att.guest.public_key, remove=True)]
                table = self._peer_table(device.name)
                try:
                    self.hooks.peer_apply(device, removal)
                except OverlaydError as exc:
                    errors.append(exc)
                self._record_peers(tx, table, table.preview(removal))
        svc = self.services.get(att.service)
        releases: list[tuple[Pool, IPAddress]] = []
        if svc is not None:
            releases.append((self._pool_for(svc), att.ip))
        if att.global_ip is not None and self._layout is not None:
            releases.append((self._node_pool(), att.global_ip))
        for pool, ip in releases:
            tx.delete("lease", f"{pool.name}|{ip}")
        tx.delete("attachment", key)
        tx.delete(DETACH_INTENT, key)
        tx.after.append(lambda: self.attachments.pop(key, None))
        if att.namespace_guid:
            tx.after.append(
                functools.partial(self._by_namespace.pop, att.namespace_guid.lower(), None)
            )
        tx.after.append(functools.partial(self.detaching.discard, key))
        try:
            self._commit(tx)
        except StateError as exc:
            raise StateError(
                f"detach of {key}: the host side is removed, but the store could not "
                f"record it ({exc}); the attachment stays recorded as detaching and its "
                "addresses stay reserved until the next detach, reconcile or start finishes it"
            ) from exc
        if att.guest is not None:
            # The guest's private key was in the attachment record: do not leave
            # it in the database's free pages or its write-ahead log.
            self._scrub_store()
        for pool, ip in releases:
            try:
                self.hooks.ipam_release(pool, ip)
            except OverlaydError as exc:
                errors.append(exc)
        if errors:
            raise TeardownError(f"detach of {key}", errors)

    # -- peers --------------------------------------------------------------


def _succeeds(call: Handoff) -> bool:
    """Wait for ``call``; whether it returned (an error is logged: the caller raises its own)."""
    try:
        call.result()
    except Exception as exc:  # noqa: BLE001 - the attach's own error is the one raised
        log.warning("writing the record of a failed attach failed too: %s", exc)
        return False
    return True


def _attachment_event(kind: Literal["attached", "detached"], att: Attachment) -> Event:
    return Event(event=kind, handle=att.key, service=att.service, ip=str(att.ip))


def _interface(ip: IPAddress, prefixlen: int) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """``ip/prefixlen`` as an interface, from the address's integer (no text to parse)."""
    if ip.version == 4:
        return ipaddress.IPv4Interface((int(ip), prefixlen))
    return ipaddress.IPv6Interface((int(ip), prefixlen))


#: What a DNS label may not hold; compiled at import, not by the first
#: attach (``re``'s cache compiles a pattern on its first use: 0.1 ms there).
_NOT_IN_LABEL = re.compile(r"[^a-z0-9-]")


def short_name(handle: AnyHandle) -> str:
    """The per-container DNS label of a handle."""
    if isinstance(handle, LinuxPidHandle):
        return f"pid-{handle.pid}"
    if isinstance(handle, WindowsContainerHandle):
        return _NOT_IN_LABEL.sub("-", handle.container_id.lower())[:12].strip("-") or "c"
    if isinstance(handle, GuestManagedHandle):
        return _NOT_IN_LABEL.sub("-", handle.id.lower())[:32].strip("-") or "guest"
    assert isinstance(handle, NetnsHandle)
    if handle.container_id is not None:
        base = handle.container_id[:12]
        if handle.container_ifname != "eth0":
            base += f"-{handle.container_ifname}"
    else:
        base = (handle.path or "").rstrip("/").rsplit("/", 1)[-1]
    return _NOT_IN_LABEL.sub("-", base.lower())[:32].strip("-") or "netns"
