"""Driver discovery (stevedore) and dispatch (pluggy), and the typed hook facade.

stevedore decides *which* drivers load: only those the configuration names, in
that order, failing fast. pluggy decides *how* they are called. :class:`Hooks`
is the only code that calls ``pm.hook``.

Escape hatches: ``OVERLAYD_DISABLE_DRIVERS=a,b`` blocks drivers by name, and
``OVERLAYD_TRACE_HOOKS=1`` logs every hook call with its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import socket
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Final
from typing import TypeVar
from typing import cast

import pluggy

from overlayd import hookspecs
from overlayd.errors import ConfigError
from overlayd.errors import DriverError
from overlayd.errors import NoDriverError
from overlayd.errors import OverlaydError
from overlayd.model import DRIVER_API
from overlayd.model import Attachment
from overlayd.model import AttachRequest
from overlayd.model import Device
from overlayd.model import DeviceSpec
from overlayd.model import DnsRecord
from overlayd.model import DnsRecordLike
from overlayd.model import DriverInfo
from overlayd.model import Event
from overlayd.model import GuestManagedHandle
from overlayd.model import IPAddress
from overlayd.model import IPNetwork
from overlayd.model import Lease
from overlayd.model import MasqueradeRule
from overlayd.model import NatCandidate
from overlayd.model import PeerChange
from overlayd.model import PeerStatus
from overlayd.model import Pool
from overlayd.model import PortMapping
from overlayd.model import ReconcileReport
from overlayd.model import ReconcileRequest
from overlayd.model import SubnetRequest
from overlayd.secrets import Secrets

__all__ = [
    "DRIVER_NAMESPACE",
    "OWNER_DISPATCHED",
    "DriverContext",
    "Hooks",
    "driver_name",
    "installed_drivers",
    "load_drivers",
    "make_plugin_manager",
]

log = logging.getLogger(__name__)

DRIVER_NAMESPACE: Final = "overlayd.drivers"

T = TypeVar("T")


@dataclass
class DriverContext:
    """Services the engine offers drivers through ``overlayd_startup``."""

    #: The data directory, or ``None`` for an in-memory engine.
    data_dir: Path | None
    #: Push an event to subscribed clients; thread-safe.
    emit: Callable[[Event], None]
    #: Read and write private keys (mode 0600 files, or memory without a data directory).
    secrets: Secrets | None = None
    #: The engine's event loop (for plugins that run asyncio servers).
    loop: asyncio.AbstractEventLoop | None = None
    #: Free-form extras for embedders.
    extra: dict[str, Any] = field(default_factory=dict)


def driver_name(driver: object) -> str:
    """The name a driver instance is registered under (its ``name`` attribute)."""
    name = getattr(driver, "name", None)
    if isinstance(name, str) and name:
        return name
    return type(driver).__name__


def make_plugin_manager(*, include_core_defaults: bool = True) -> pluggy.PluginManager:
    """A plugin manager with overlayd's hookspecs and, by default, the built-in plugins."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if include_core_defaults:
        from overlayd.ipam import BuiltinIpam

        pm.register(BuiltinIpam(), name="builtin_ipam")
    blocked = os.environ.get("OVERLAYD_DISABLE_DRIVERS", "")
    for name in filter(None, (n.strip() for n in blocked.split(","))):
        pm.set_blocked(name)
    if os.environ.get("OVERLAYD_TRACE_HOOKS") == "1":
        _trace(pm)
    return pm


def _trace(pm: pluggy.PluginManager) -> None:
    def before(name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        log.debug("hook %s -> %s", name, [i.plugin_name for i in impls])

    def after(
        outcome: pluggy.Result[Any],
        name: str,
        impls: Sequence[pluggy.HookImpl],
        kwargs: Mapping[str, Any],
    ) -> None:
        exc = outcome.exception
        log.debug("hook %s <- %s", name, exc if exc else type(outcome.get_result()).__name__)

    pm.add_hookcall_monitoring(before, after)


def installed_drivers() -> list[str]:
    """Names of every driver installed under the ``overlayd.drivers`` entry-point group."""
    eps = importlib.metadata.entry_points(group=DRIVER_NAMESPACE)
    return sorted({ep.name for ep in eps})


def load_drivers(pm: pluggy.PluginManager, names: Sequence[str]) -> list[object]:
    """Import, instantiate and register the named drivers in order, failing fast.

    Unknown names raise :class:`ConfigError` listing the installed drivers; an
    import failure names the driver and the missing module.
    """
    if not names:
        return []
    from stevedore import NamedExtensionManager

    def on_missing(missing: Any) -> None:
        have = ", ".join(installed_drivers()) or "none"
        raise ConfigError(
            f"unknown driver(s) {', '.join(sorted(missing))}; installed drivers: {have}"
        )

    def on_failure(manager: Any, entrypoint: Any, exc: BaseException) -> None:
        if isinstance(exc, ModuleNotFoundError):
            raise ConfigError(
                f"driver {entrypoint.name!r} cannot be loaded: it needs the Python "
                f"module {exc.name!r}, which is not installed ({exc})"
            ) from exc
        raise ConfigError(f"driver {entrypoint.name!r} failed to load: {exc}") from exc

    manager = NamedExtensionManager(
        DRIVER_NAMESPACE,
        names=list(names),
        name_order=True,
        invoke_on_load=True,
        on_load_failure_callback=on_failure,
        on_missing_entrypoints_callback=on_missing,
        propagate_map_exceptions=True,
    )
    drivers = [ext.obj for ext in manager]
    register_drivers(pm, drivers, names=list(names))
    return drivers


def register_drivers(
    pm: pluggy.PluginManager,
    drivers: Sequence[object],
    names: Sequence[str] | None = None,
) -> None:
    """Register driver instances so that the first listed is called first.

    pluggy calls the most recently registered plugin first, so register in
    reverse. Each driver's ``overlayd_describe`` is checked for API compatibility.
    """
    for index in reversed(range(len(drivers))):
        driver = drivers[index]
        name = names[index] if names else driver_name(driver)
        if pm.is_blocked(name):
            log.warning("driver %s is disabled by OVERLAYD_DISABLE_DRIVERS", name)
            continue
        pm.register(driver, name=name)
        describe = getattr(driver, "overlayd_describe", None)
        if describe is not None:
            info = describe()
            if info.api != DRIVER_API:
                pm.unregister(driver)
                raise ConfigError(
                    f"driver {name!r} implements driver API {info.api}, "
                    f"this overlayd provides API {DRIVER_API}"
                )
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"a driver implements an unknown hook: {exc}") from exc


@contextlib.contextmanager
def driver_errors(op: str) -> Iterator[None]:
    """Wrap anything a driver raises that is not an OverlaydError, keeping the cause."""
    try:
        yield
    except OverlaydError:
        raise
    except Exception as exc:
        log.exception("driver failed in %s: %r", op, exc)
        raise DriverError(f"{op} failed in a driver: {type(exc).__name__}: {exc}", op=op) from exc


#: Hooks the facade sends only to the driver named on the object they are given
#: (``Device.driver``, ``Attachment.driver``, ``Pool.driver``, the segment's
#: ``driver`` for attach). :data:`OWNER_DISPATCHED` is what the docs and the
#: conformance kit check against.
OWNER_DISPATCHED: Final = (
    "overlayd_device_delete",
    "overlayd_peer_apply",
    "overlayd_peer_status",
    "overlayd_ipam_pool_create",
    "overlayd_ipam_pool_delete",
    "overlayd_ipam_allocate",
    "overlayd_ipam_reserve",
    "overlayd_ipam_release",
    "overlayd_dns_endpoint_configure",
    "overlayd_nat_candidates",
    "overlayd_nat_socket",
    "overlayd_nat_set_endpoint",
    "overlayd_attach",
    "overlayd_attach_plan",
    "overlayd_detach",
    "overlayd_attachment_alive",
)


#: Records per ``overlayd_dns_records_changed`` call when the load is handed to
#: plugins without the bulk hook: bounds the models alive at once.
DNS_LOAD_BATCH: Final = 10_000


def _wraps(impl: Any) -> bool:
    """True for a hook wrapper (it observes a call, it does not answer it)."""
    return bool(impl.wrapper or impl.hookwrapper)


def _dns_record(rec: DnsRecordLike) -> DnsRecord:
    if isinstance(rec, DnsRecord):
        return rec
    return DnsRecord(name=rec.name, ip=rec.ip, source=rec.source)


class Hooks:
    """Typed, keyword-only calls into the drivers. Nothing else touches ``pm.hook``.

    Owner dispatch: a hook in :data:`OWNER_DISPATCHED` is given an object that
    names the driver owning it. The facade calls that driver's implementation
    alone (a pluggy subset caller, cached per hook and owner), so a driver is
    never asked about another driver's object. An object with no owner stamped
    (``Pool.driver`` left ``None``, a guest attach) goes to every driver with
    ``firstresult`` semantics as before. Hook wrappers of other plugins
    (``wrapper=True``) still wrap an owner-dispatched call. An owner that is
    not loaded raises :class:`~overlayd.errors.NoDriverError` naming it, where
    the hook has no documented fallback. ``overlayd_reconcile`` is given, per
    driver, only the devices and attachments that driver owns.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._hook = pm.hook
        self._callers: dict[tuple[str, str], tuple[object, list[Any], Any]] = {}
        #: False once the DNS hooks were given records the store does not hold
        #: (``stored=False``) or a change of records failed in one of them:
        #: what they built may then differ from the stored records.
        self.dns_as_stored = True

    def _first(self, op: str, kind: str, result: T | None) -> T:
        if result is None:
            raise NoDriverError(op=op, kind=kind)
        return result

    def _loaded(self) -> tuple[str, ...]:
        return tuple(sorted(name for name, plugin in self.pm.list_name_plugin() if plugin))

    def _owner_caller(self, name: str, owner: str | None) -> Any:
        """The caller of hook ``name`` reaching only ``owner``; ``None`` if it is not loaded.

        Without an owner the full hook (every driver, ``firstresult``).
        """
        hook = getattr(self._hook, name)
        if not owner:
            return hook
        # Valid while the owner and the hook's implementations stay the same.
        impls = hook.get_hookimpls()
        plugin = self.pm.get_plugin(owner)
        cached = self._callers.get((name, owner))
        if cached is not None and cached[0] is plugin and cached[1] == impls:
            return cached[2]
        caller = None
        if plugin is not None:
            # Other plugins' wrappers still wrap the call (they observe, not answer).
            others = [
                impl.plugin for impl in impls if impl.plugin is not plugin and not _wraps(impl)
            ]
            caller = self.pm.subset_hook_caller(name, others)
        self._callers[(name, owner)] = (plugin, impls, caller)
        return caller

    def _owned(self, name: str, driver: str | None, /, **kwargs: Any) -> Any:
        """Call ``name`` on ``driver`` alone; a driver that is not loaded is an error."""
        caller = self._owner_caller(name, driver)
        if caller is None:
            raise NoDriverError(
                op=name.removeprefix("overlayd_"), kind=str(driver), loaded=self._loaded()
            )
        with driver_errors(name.removeprefix("overlayd_")):
            return caller(**kwargs)

    def _owned_or_none(self, name: str, driver: str | None, /, **kwargs: Any) -> Any:
        """Like :meth:`_owned`, but a driver that is not loaded answers ``None``."""
        caller = self._owner_caller(name, driver)
        if caller is None:
            return None
        with driver_errors(name.removeprefix("overlayd_")):
            return caller(**kwargs)

    # lifecycle
    def describe(self) -> list[DriverInfo]:
        with driver_errors("describe"):
            return list(self._hook.overlayd_describe())

    def configure(self, config: Any) -> None:
        with driver_errors("configure"):
            self._hook.overlayd_configure.call_historic(kwargs={"config": config})

    def startup(self, context: DriverContext) -> None:
        with driver_errors("startup"):
            self._hook.overlayd_startup.call_historic(kwargs={"context": context})

    def shutdown(self) -> None:
        with driver_errors("shutdown"):
            self._hook.overlayd_shutdown()

    def warm_up(self) -> list[str]:
        """Call every driver's ``overlayd_warm_up``; one that fails does not stop the others.

        Returns ``"<driver>: <error>"`` for each failure (best effort: the
        caller logs them, nothing depends on a warm-up). First the callers
        that reach one driver are built for every owner-dispatched hook each
        driver implements, which the first call of each built lazily.
        """
        for name in OWNER_DISPATCHED:
            for impl in getattr(self._hook, name).get_hookimpls():
                if not _wraps(impl):
                    self._owner_caller(name, impl.plugin_name)
        failures: list[str] = []
        for impl in self._hook.overlayd_warm_up.get_hookimpls():
            if _wraps(impl):
                continue  # wraps each driver's call below, as in reconcile
            try:
                self._owner_caller("overlayd_warm_up", impl.plugin_name)()
            except Exception as exc:  # noqa: BLE001 - a failed warm-up only costs time later
                failures.append(f"{impl.plugin_name}: {type(exc).__name__}: {exc}")
        return failures

    def reconcile(self, request: ReconcileRequest) -> list[ReconcileReport]:
        """Every driver, in the configured order, each given only the objects it owns."""
        reports: list[ReconcileReport] = []
        # pluggy calls the last implementation in this list first.
        for impl in reversed(self._hook.overlayd_reconcile.get_hookimpls()):
            if _wraps(impl):
                continue  # wraps each driver's call below
            owner = impl.plugin_name
            mine = request.model_copy(
                update={
                    "devices": tuple(d for d in request.devices if d.driver == owner),
                    "attachments": tuple(a for a in request.attachments if a.driver == owner),
                }
            )
            with driver_errors("reconcile"):
                result = self._owner_caller("overlayd_reconcile", owner)(request=mine)
            reports.extend(result)
        return reports

    # device
    def device_create(self, spec: DeviceSpec) -> Device:
        with driver_errors("device_create"):
            result = self._hook.overlayd_device_create(spec=spec)
        return cast(Device, self._first("device_create", spec.kind, result))

    def device_delete(self, device: Device) -> bool:
        result = self._owned("overlayd_device_delete", device.driver, device=device)
        return bool(self._first("device_delete", device.driver, result))

    def device_list(self, kind: str) -> list[Device]:
        with driver_errors("device_list"):
            lists = self._hook.overlayd_device_list(kind=kind)
        return [d for sub in lists for d in sub]

    # peer
    def peer_apply(self, device: Device, changes: Sequence[PeerChange]) -> None:
        result = self._owned(
            "overlayd_peer_apply", device.driver, device=device, changes=list(changes)
        )
        self._first("peer_apply", device.driver, result)

    def peer_status(self, device: Device) -> list[PeerStatus]:
        result = self._owned("overlayd_peer_status", device.driver, device=device)
        return cast(list[PeerStatus], self._first("peer_status", device.driver, result))

    # ipam
    def ipam_pool_create(self, pool: Pool, leases: Sequence[Lease]) -> None:
        result = self._owned(
            "overlayd_ipam_pool_create", pool.driver, pool=pool, leases=list(leases)
        )
        self._first("ipam_pool_create", pool.name, result)

    def ipam_pool_delete(self, pool: Pool) -> bool:
        return bool(self._owned("overlayd_ipam_pool_delete", pool.driver, pool=pool))

    def ipam_allocate(self, pool: Pool, owner: str) -> Lease:
        result = self._owned("overlayd_ipam_allocate", pool.driver, pool=pool, owner=owner)
        return cast(Lease, self._first("ipam_allocate", pool.name, result))

    def ipam_reserve(self, pool: Pool, ip: IPAddress, owner: str) -> Lease:
        result = self._owned("overlayd_ipam_reserve", pool.driver, pool=pool, ip=ip, owner=owner)
        return cast(Lease, self._first("ipam_reserve", pool.name, result))

    def ipam_release(self, pool: Pool, ip: IPAddress) -> bool:
        result = self._owned("overlayd_ipam_release", pool.driver, pool=pool, ip=ip)
        return bool(self._first("ipam_release", pool.name, result))

    def ipam_subnet_allocate(self, request: SubnetRequest) -> IPNetwork:
        with driver_errors("ipam_subnet_allocate"):
            result = self._hook.overlayd_ipam_subnet_allocate(request=request)
        return cast(IPNetwork, self._first("ipam_subnet_allocate", request.service, result))

    def ipam_subnet_release(self, pool: Pool) -> bool:
        with driver_errors("ipam_subnet_release"):
            return bool(self._hook.overlayd_ipam_subnet_release(pool=pool))

    # dns
    def dns_records_changed(
        self, added: Sequence[DnsRecord], removed: Sequence[DnsRecord], *, stored: bool = True
    ) -> None:
        """A change of records; ``stored=False``: records the store does not hold (cluster mode)."""
        if not added and not removed:
            return
        if not stored:
            self.dns_as_stored = False
        try:
            with driver_errors("dns_records_changed"):
                self._hook.overlayd_dns_records_changed(added=list(added), removed=list(removed))
        except BaseException:
            self.dns_as_stored = False
            raise

    def dns_records_loaded(
        self, records: Sequence[DnsRecordLike], fingerprint: str | None = None
    ) -> None:
        """Every record at start: the bulk hook to its implementers, models to the others.

        A plugin implementing only ``overlayd_dns_records_changed`` is given
        the records as ``added``, in batches of :data:`DNS_LOAD_BATCH` models
        (fewer models alive at once); no model is built when none does.
        """
        bulk = self._hook.overlayd_dns_records_loaded
        takers = [impl.plugin for impl in bulk.get_hookimpls() if not _wraps(impl)]
        with driver_errors("dns_records_loaded"):
            if takers:
                bulk(records=records, fingerprint=fingerprint)
            rest = self.pm.subset_hook_caller("overlayd_dns_records_changed", takers)
            if all(_wraps(impl) for impl in rest.get_hookimpls()):
                return
            for start in range(0, len(records), DNS_LOAD_BATCH):
                batch = records[start : start + DNS_LOAD_BATCH]
                rest(added=[_dns_record(r) for r in batch], removed=[])

    def dns_records_stored(self, fingerprint: str | None) -> None:
        with driver_errors("dns_records_stored"):
            self._hook.overlayd_dns_records_stored(fingerprint=fingerprint)

    def dns_serve(self, zone: str, addresses: Sequence[str]) -> None:
        with driver_errors("dns_serve"):
            self._hook.overlayd_dns_serve(zone=zone, addresses=list(addresses))

    def dns_endpoint_configure(
        self, attachment: Attachment, servers: Sequence[IPAddress], domain: str | None
    ) -> bool:
        """False when the owner cannot configure the workload's resolver (or is not loaded)."""
        result = self._owned_or_none(
            "overlayd_dns_endpoint_configure",
            attachment.driver,
            attachment=attachment,
            servers=list(servers),
            domain=domain,
        )
        return bool(result)

    # nat
    def nat_masquerade(self, rule: MasqueradeRule, enable: bool) -> bool:
        """Returns False when no loaded driver does NAT."""
        with driver_errors("nat_masquerade"):
            return bool(self._hook.overlayd_nat_masquerade(rule=rule, enable=enable))

    def nat_port_mapping(self, mapping: PortMapping, enable: bool) -> None:
        with driver_errors("nat_port_mapping"):
            result = self._hook.overlayd_nat_port_mapping(mapping=mapping, enable=enable)
        self._first("nat_port_mapping", "port mappings", result)

    def nat_candidates(self, device: Device) -> list[NatCandidate]:
        """Empty when the owner gathers no candidates (or is not loaded)."""
        result = self._owned_or_none("overlayd_nat_candidates", device.driver, device=device)
        return list(result or [])

    def nat_socket(self, device: Device, family: int, type: int, proto: int) -> socket.socket:
        """A socket in the device's namespace; plain ``socket.socket`` when no driver answers.

        ``OSError`` (no ``CAP_NET_RAW``, say) passes through unwrapped.
        """
        caller = self._owner_caller("overlayd_nat_socket", device.driver)
        result = None
        if caller is not None:
            try:
                result = caller(device=device, family=family, type=type, proto=proto)
            except (OSError, OverlaydError):
                raise
            except Exception as exc:
                raise DriverError(f"nat_socket failed in a driver: {exc}", op="nat_socket") from exc
        if result is None:
            return socket.socket(family, type, proto)
        return cast(socket.socket, result)

    def nat_set_endpoint(
        self, device: Device, public_key: str, endpoint: str, keepalive: int
    ) -> None:
        result = self._owned(
            "overlayd_nat_set_endpoint",
            device.driver,
            device=device,
            public_key=public_key,
            endpoint=endpoint,
            keepalive=keepalive,
        )
        self._first("nat_set_endpoint", device.driver, result)

    # attach
    def attach(self, request: AttachRequest) -> Attachment:
        """The segment's driver attaches; a guest goes to whichever driver handles guests."""
        owner = None if isinstance(request.handle, GuestManagedHandle) else request.segment.driver
        result = self._owned("overlayd_attach", owner, request=request)
        return cast(Attachment, self._first("attach", request.handle.platform, result))

    def attach_plan(self, request: AttachRequest) -> Attachment | None:
        """The attachment the segment's driver says its attach will return; ``None``: no plan."""
        if isinstance(request.handle, GuestManagedHandle):
            return None
        result = self._owned_or_none(
            "overlayd_attach_plan", request.segment.driver, request=request
        )
        return cast(Attachment | None, result)

    def detach(self, attachment: Attachment) -> bool:
        result = self._owned("overlayd_detach", attachment.driver, attachment=attachment)
        return bool(self._first("detach", attachment.driver, result))

    def attachment_alive(self, attachment: Attachment) -> bool:
        """``True`` when unsure: the owner did not answer or is not loaded."""
        result = self._owned_or_none(
            "overlayd_attachment_alive", attachment.driver, attachment=attachment
        )
        return True if result is None else bool(result)
