"""The NAT policy of the ``linux_bridge`` driver: masquerade and port mappings in nftables.

The driver keeps the desired state (masquerade rules by subnet, port
mappings by host port) and brings table ``inet overlayd`` to it: one
transaction per change when the table is there, the whole table again when a
firewall reload removed it (noted, and reported by the next reconcile).
Overlapping subnets are reduced to the widest before they reach the interval
sets. The mechanism (the nft transactions) is :mod:`overlayd_linux_bridge.nft`.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any

from overlayd import hookimpl
from overlayd.errors import NatError
from overlayd.errors import NotSupported
from overlayd.errors import OverlaydError
from overlayd.model import MasqueradeRule
from overlayd.model import PortMapping
from overlayd.model import ReconcileRequest
from overlayd_linux_bridge.nft import PORT_GROUP
from overlayd_linux_bridge.nft import TABLE as NFT_TABLE
from overlayd_linux_bridge.nft import NatState
from overlayd_linux_bridge.nft import Nftables
from overlayd_linux_bridge.nft import PortMapping as NftPortMapping

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["NatPolicy"]

log = logging.getLogger("overlayd_linux_bridge.driver")


class NatPolicy:
    """The NAT hooks of :class:`~overlayd_linux_bridge.driver.LinuxBridgeDriver`.

    A mixin: the driver's ``__init__`` sets the attributes declared here.
    """

    name: str
    _nft: Nftables | None
    _nft_unavailable: str | None
    _mld_filter_applied: bool
    _tables_recreated: list[str]
    _masq: dict[IPNetwork, MasqueradeRule]
    _mappings: dict[tuple[Any, ...], PortMapping]
    _pushed: NatState | None
    _nat_lock: threading.RLock

    def _table(self) -> Nftables:
        """The nftables table manager."""
        if self._nft is None:
            raise NotSupported(
                self._nft_unavailable
                or "The linux_bridge driver is not started, so NAT is unavailable."
            )
        return self._nft

    def _state(self) -> NatState:
        """The desired table: overlapping subnets reduced to the widest (interval sets)."""
        exempt: set[IPNetwork] = set()
        for rule in self._masq.values():
            exempt.update(rule.exempt)
        return NatState(
            masquerade=_cover(self._masq),
            exempt=_cover(exempt),
            port_mappings=frozenset(_nft_mapping(m) for m in self._mappings.values()),
        )

    def apply_nat(self) -> NatState:
        """Rebuild table ``inet overlayd`` from the desired state, atomically.

        The daemon calls this on demand (e.g. after a host firewall reload wiped
        the table); reconcile calls it on startup. Returns the state applied.
        """
        with self._nat_lock:
            state = self._state()
            self._table().apply_table(state)
            self._pushed = state
            return state

    def _recreate_nat(self) -> None:
        """Apply the whole NAT table, which is missing; note it when it had existed."""
        existed = self._pushed is not None
        self.apply_nat()
        if existed:
            self._note_recreated(f"nft table inet {NFT_TABLE}")

    def _note_recreated(self, what: str) -> None:
        log.warning("%s had vanished (a firewall reload?); created it again", what)
        if what not in self._tables_recreated:
            self._tables_recreated.append(what)

    def _sync_sets(self) -> None:
        """Bring the masquerade/exempt sets to the desired state with one transaction."""
        nft = self._table()
        if not nft.table_exists():
            self._recreate_nat()
            return
        if self._pushed is None:
            # First change since start: learn what a previous run left in the table.
            self._pushed = nft.list_elements()
        want = self._state()
        old = self._pushed
        nft.update_sets(
            remove=NatState(old.masquerade - want.masquerade, old.exempt - want.exempt),
            add=NatState(want.masquerade - old.masquerade, want.exempt - old.exempt),
        )
        self._pushed = NatState(want.masquerade, want.exempt, old.port_mappings)

    def _check_uplink(self, rule: MasqueradeRule) -> None:
        if rule.uplink is not None:
            raise NotSupported(
                f"Masquerade restricted to uplink {rule.uplink} is not supported by the "
                "linux_bridge driver; leave the uplink unset (any non-overlay interface)."
            )

    @hookimpl
    def overlayd_nat_masquerade(self, rule: MasqueradeRule, enable: bool) -> bool | None:
        with self._nat_lock:
            self._check_uplink(rule)
            previous = self._masq.get(rule.subnet)
            if enable:
                self._masq[rule.subnet] = rule
            else:
                self._masq.pop(rule.subnet, None)
            try:
                self._sync_sets()
            except OverlaydError:
                if previous is None:
                    self._masq.pop(rule.subnet, None)
                else:
                    self._masq[rule.subnet] = previous
                self._pushed = None  # unknown after a failed transaction: re-read next time
                raise
            return True

    @hookimpl
    def overlayd_nat_port_mapping(self, mapping: PortMapping, enable: bool) -> bool | None:
        with self._nat_lock:
            key = _mapping_key(mapping)
            nft = self._table()
            if enable:
                current = self._mappings.get(key)
                if current is not None and current != mapping:
                    raise NatError(
                        f"Host port {mapping.protocol}/{mapping.host_port} is already mapped "
                        f"to {current.container_ip}:{current.container_port}; remove that "
                        "mapping first.",
                        op="nat_port_mapping",
                        driver=self.name,
                    )
                self._mappings[key] = mapping
                if not nft.table_exists():
                    self._recreate_nat()
                    return True
                try:
                    nft.add_port_mapping(
                        mapping.protocol,
                        mapping.host_port,
                        mapping.container_ip,
                        mapping.container_port,
                        mapping.host_ip,
                    )
                except NatError:
                    if current is None:
                        self._mappings.pop(key, None)
                    raise
                return True
            self._mappings.pop(key, None)
            if not nft.table_exists():
                self._recreate_nat()
                return True
            nft.remove_port_mapping(
                mapping.protocol, mapping.host_port, mapping.container_ip, mapping.host_ip
            )
            return True

    def _reconcile_nat(self, request: ReconcileRequest, errors: list[str]) -> None:
        """Make the table match what the engine recorded (startup / table wiped)."""
        with self._nat_lock:
            if self._nft is None:
                if request.masquerades or request.port_mappings:
                    errors.append(f"NAT: {self.nft_unavailable_reason()}")
                return
            wanted_masq = {r.subnet: r for r in request.masquerades if r.uplink is None}
            wanted_maps = {_mapping_key(m): m for m in request.port_mappings}
            try:
                missing = not self._nft.table_exists()
                if (
                    request.startup
                    or missing
                    or wanted_masq != self._masq
                    or wanted_maps != self._mappings
                ):
                    existed = self._pushed is not None
                    self._masq, self._mappings = wanted_masq, wanted_maps
                    self.apply_nat()
                    if missing and existed:
                        self._note_recreated(f"nft table inet {NFT_TABLE}")
            except OverlaydError as exc:
                errors.append(f"NAT table: {exc}")
            # Checked on its own: the engine re-applies recorded masquerades
            # before this pass, which recreates a wiped NAT table (and hides
            # the reload from the check above), but not this one.
            try:
                if self._mld_filter_applied and not self._nft.mld_filter_exists():
                    self._ensure_mld_filter(again=True)
                    if self._nft.mld_filter_exists():
                        self._note_recreated(f"nft table bridge {NFT_TABLE}")
            except OverlaydError as exc:
                errors.append(f"MLD filter table: {exc}")

    def _ensure_mld_filter(self, *, again: bool = False) -> None:
        """Create table ``bridge overlayd`` once (``again``: recreate it).

        The filter only saves work (module docs of :mod:`.nft`): without
        nftables, or when the kernel refuses it, bridges work as before and a
        warning is logged.
        """
        if self._nft is None or (self._mld_filter_applied and not again):
            return
        try:
            self._nft.apply_mld_filter(PORT_GROUP)
        except OverlaydError as exc:
            log.warning("MLD reports stay flooded on overlayd's bridges: %s", exc)
        self._mld_filter_applied = True

    def nft_unavailable_reason(self) -> str:
        """Why NAT is unavailable (empty when it is available)."""
        return "" if self._nft is not None else (self._nft_unavailable or "not started")


def _cover(nets: Any) -> frozenset[IPNetwork]:
    """``nets`` without those inside another one (same membership, no overlap)."""
    items = set(nets)
    return frozenset(
        n
        for n in items
        if not any(m != n and m.version == n.version and n.subnet_of(m) for m in items)
    )


def _mapping_key(mapping: PortMapping) -> tuple[Any, ...]:
    return (mapping.protocol, mapping.host_port, mapping.host_ip, mapping.container_ip.version)


def _nft_mapping(mapping: PortMapping) -> NftPortMapping:
    return NftPortMapping(
        proto=mapping.protocol,
        host_port=mapping.host_port,
        container_ip=mapping.container_ip,
        container_port=mapping.container_port,
        host_ip=mapping.host_ip,
    )
