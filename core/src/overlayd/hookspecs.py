# mypy: disable-error-code="empty-body"
# (hookspecs are signatures with docstrings; pluggy never calls their bodies)
"""The extension points of overlayd: every hook a driver may implement.

Each docstring is the contract a driver author writes against. Hooks are plain
synchronous functions; the engine calls them from a worker thread, serialised
per resource, so a hook may block on netlink, a socket or a Windows API.

Conventions that hold for every hook:

* Call-by-keyword only; a driver may accept fewer arguments than the spec lists
  (pluggy's opt-in arguments), which is how new arguments stay compatible.
* *Dispatching* hooks are ``firstresult``: the driver that handles the kind
  (device kind, handle platform) answers and the others return ``None``. If
  every driver returns ``None`` the engine raises
  :class:`~overlayd.errors.NoDriverError` (or, where documented, skips the step).
* Results are stamped with the driver's entry-point name (``Device.driver``,
  ``Attachment.driver``).
* *Owner-dispatched* hooks (:data:`overlayd.plugins.OWNER_DISPATCHED`) take an
  object that names its driver: ``device.driver``, ``attachment.driver``,
  ``pool.driver``, ``request.segment.driver``. The engine's hook facade
  (:class:`overlayd.plugins.Hooks`) calls only that driver, so an
  implementation never checks the stamp. An object with no driver named
  (a pool the built-in allocator keeps, a guest attach) goes to every driver
  as a dispatching hook. A named driver that is not loaded is a
  :class:`~overlayd.errors.NoDriverError` naming it, except where the hook
  documents a fallback.
* ``overlayd_reconcile`` is given, per driver, only the devices and
  attachments stamped with that driver's name.
* A driver raises :class:`~overlayd.errors.DriverError` subclasses for failures
  of its mechanism; anything else is wrapped by the engine with the cause kept.
  A hook that raises must first undo what it half-created.

Hook names are ``overlayd_<area>_<verb>``.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from overlayd.config import EngineConfig
    from overlayd.model import Attachment
    from overlayd.model import AttachRequest
    from overlayd.model import Device
    from overlayd.model import DeviceSpec
    from overlayd.model import DnsRecord
    from overlayd.model import DnsRecordLike
    from overlayd.model import DriverInfo
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
    from overlayd.plugins import DriverContext

PROJECT = "overlayd"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------
# lifecycle
# ---------------------------------------------------------------------------


@hookspec
def overlayd_describe() -> DriverInfo:
    """Describe the driver: name, driver API version, platforms and capabilities.

    Every driver implements this. The engine refuses a driver whose
    ``api`` major version differs from :data:`overlayd.DRIVER_API`, and the
    conformance kit derives its skips from ``capabilities``.

    :returns: A :class:`~overlayd.model.DriverInfo` whose ``name`` is the
        driver's entry-point name.

    Idempotent: yes, and side-effect free.
    Blocking: no.
    Raising: never; a driver that cannot run on this host says so in
    ``overlayd_startup``, not here.

    .. versionadded:: 0.1
    """


@hookspec(historic=True)
def overlayd_configure(config: EngineConfig) -> None:
    """Receive the engine configuration before anything else is called.

    A driver reads its own section with ``config.driver_options(<name>)`` (the
    ``[drivers.<name>]`` table of the configuration file) and validates it.
    Historic: a driver registered later receives this call at registration time.

    :param config: The validated engine configuration.

    Idempotent: must tolerate being called once per engine; it is never called twice.
    Blocking: no I/O expected; validate only.
    Raising: :class:`~overlayd.errors.ConfigError` naming the bad key; the engine
    refuses to start.

    .. versionadded:: 0.1
    """


@hookspec(historic=True)
def overlayd_startup(context: DriverContext) -> None:
    """Start the driver's mechanism (sockets, helper processes, DLLs).

    Called once when the engine starts, after ``overlayd_configure`` and before
    any operation. ``context`` gives the data directory, the secret store and
    ``context.emit(event)`` to push events (peer health, NAT endpoint changes).
    Historic: a driver registered later receives this call at registration time.

    :param context: Services the engine offers drivers.

    Idempotent: called once per engine.
    Blocking: yes; may load libraries or probe the kernel.
    Raising: :class:`~overlayd.errors.NotSupported` when this host cannot run
    the driver (e.g. the native HCN backend off Windows); the engine refuses
    to start and reports the message.

    .. versionadded:: 0.1
    """


@hookspec
def overlayd_shutdown() -> None:
    """Stop the driver's mechanism; leave the data plane running.

    Host objects (devices, attachments, NAT rules) must survive a daemon
    restart: shutdown stops helpers the driver can restart later, it does not
    tear the overlay down. Called in the configured driver order.

    Idempotent: yes.
    Blocking: yes, bounded (a few seconds at most).
    Raising: logged by the engine; shutdown of the other drivers continues.

    .. versionadded:: 0.1
    """


@hookspec
def overlayd_warm_up() -> None:
    """Prepare what the driver would otherwise set up on its first operation.

    Called once, in a worker thread, shortly after the daemon has started
    serving (never before its first answers): a driver opens here the
    sockets and descriptors its first attach would open lazily, so that a
    runtime's first attach does not pay for them. It must not create or
    change anything on the host (interfaces, routes, rules, files, sysctls),
    and may run while requests are being served.

    Idempotent: yes.
    Blocking: yes, briefly.
    Raising: logged at debug level and ignored; the other drivers are still
    warmed up and the daemon serves as before.

    .. versionadded:: 0.1
    """


@hookspec
def overlayd_reconcile(request: ReconcileRequest) -> ReconcileReport | None:
    """Compare what the engine recorded with what the host really has, and repair.

    ``request`` lists the recorded devices and attachments stamped with this
    driver's name (the facade filters them per driver) and every recorded NAT
    rule. For each device and attachment:
    adopt what exists, recreate what is recorded but missing (devices, with
    their recorded keys and ports), report in ``gone`` the attachments whose
    workload no longer exists (the engine releases their leases), and remove
    host objects that are unmistakably its own (name prefix and ownership
    tag) but not recorded. It never touches anything it did not create.

    :param request: Recorded devices, attachments and NAT rules.
    :returns: A :class:`~overlayd.model.ReconcileReport`, or ``None`` if the
        driver keeps no host state.

    Idempotent: yes; running it twice in a row finds nothing to do the second time.
    Blocking: yes; called on startup, periodically and on demand (``reconcile`` op).
    Raising: record per-object failures in ``report.errors`` and continue; raise
    only when the host cannot be inspected at all.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------
# device
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def overlayd_device_create(spec: DeviceSpec) -> Device | None:
    """Create (or adopt) the device described by ``spec`` and return it.

    Return ``None`` when ``spec.kind`` is a kind this driver does not create.
    Stops at the first non-None result; if every driver returns ``None`` the
    engine raises :class:`~overlayd.errors.NoDriverError`.

    :param spec: Kind, interface name, owner, addresses, MTU and for WireGuard
        the listen port and private key.
    :returns: The device; ``device.driver`` is this driver's name and
        ``device.public_key`` is set for WireGuard devices.

    Idempotent: a device that already exists with the requested configuration
    is adopted and returned unchanged (never deleted and recreated: traffic
    on it must not be disturbed); one that exists with a different
    configuration is brought to the requested one.
    Blocking: yes.
    Raising: :class:`~overlayd.errors.DeviceError` after removing anything
    half-created.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def overlayd_device_delete(device: Device) -> bool | None:
    """Delete ``device`` from the host.

    Owner-dispatched on ``device.driver``: only ever called for this driver's
    own devices; returning ``None`` makes the engine raise
    :class:`~overlayd.errors.NoDriverError`.

    :param device: A device previously returned by ``overlayd_device_create``.
    :returns: ``True`` if it existed and was deleted, ``False`` if it was already gone.

    Idempotent: yes; deleting an absent device returns ``False``.
    Blocking: yes.
    Raising: :class:`~overlayd.errors.DeviceError` only when the device exists
    and could not be removed.

    .. versionadded:: 0.1
    """


@hookspec
def overlayd_device_list(kind: str) -> list[Device]:
    """List the devices of ``kind`` that this driver owns on the host.

    Every driver is called; the engine concatenates the lists. A driver that
    does not create ``kind`` returns an empty list.

    :param kind: A device kind (:class:`~overlayd.model.DeviceKind` value).
    :returns: Devices stamped with this driver's name.

    Idempotent: yes, read-only.
    Blocking: yes.
    Raising: :class:`~overlayd.errors.DeviceError` when the host cannot be read.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------
# peer
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def overlayd_peer_apply(device: Device, changes: Sequence[PeerChange]) -> bool | None:
    """Apply a batch of peer changes to a WireGuard ``device`` in one transaction.

    Owner-dispatched on ``device.driver``: only ever called for this driver's
    own devices; returning ``None`` makes the engine raise
    :class:`~overlayd.errors.NoDriverError`. Changes apply as differences:
    unchanged peers are not re-sent, allowed IPs are replaced only when
    ``change.allowed_ips`` is given. Endpoints may be ``host:port`` with a
    host name; the driver resolves it (and re-resolves on failure).

    The resulting peer set must be the one :func:`overlayd.peers.merge` computes
    (the engine records exactly that): in particular an allowed IP routes to one
    peer only, the one that named it last, so a prefix given to a second peer is
    taken from the first. Drivers that keep peers compute the batch with that
    function instead of their own copy of the rules.

    :param device: The target WireGuard device.
    :param changes: Ordered changes; a later change to the same key wins.
    :returns: ``True`` once applied.

    Idempotent: yes; re-applying a batch leaves the device as the first application did.
    Removing an absent peer is not an error.
    Blocking: yes.
    Raising: :class:`~overlayd.errors.PeerError`; the batch is all-or-nothing
    where the mechanism allows it (UAPI ``set`` is one transaction).

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def overlayd_peer_status(device: Device) -> list[PeerStatus] | None:
    """Read the peers of ``device`` as the device reports them.

    Owner-dispatched on ``device.driver``: only ever called for this driver's
    own devices; returning ``None`` makes the engine raise
    :class:`~overlayd.errors.NoDriverError`.

    :param device: A WireGuard device.
    :returns: Every peer with endpoint, allowed IPs, last handshake (Unix
        seconds, 0 = never) and transfer counters.

    Idempotent: yes, read-only.
    Blocking: yes.
    Raising: :class:`~overlayd.errors.PeerError` when the device cannot be read.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------
# ipam
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def overlayd_ipam_pool_create(pool: Pool, leases: Sequence[Lease]) -> bool | None:
    """Start managing ``pool``, rehydrated with the ``leases`` the engine recorded.

    The built-in allocator answers last (``trylast``) for every pool no driver
    owns. A driver owns the pools stamped with its name (``pool.driver``, set
    by the engine from ``[ipam] driver``) and must then answer every IPAM hook
    for them. Owner-dispatched on ``pool.driver`` when it is set; a pool with
    no driver goes to every plugin: one that does not manage it returns
    ``None`` and the built-in allocator answers last.

    :param pool: The pool: name, CIDR and reserved addresses.
    :param leases: Leases already held in this pool (from the state store).
    :returns: ``True`` when this plugin manages the pool.

    Idempotent: creating an existing pool with the same CIDR is a no-op; a
    different CIDR is an :class:`~overlayd.errors.InvalidRequest`.
    Blocking: no (in-memory) for the built-in allocator.
    Raising: :class:`~overlayd.errors.InvalidRequest` for an invalid pool.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def overlayd_ipam_pool_delete(pool: Pool) -> bool | None:
    """Stop managing ``pool`` and forget its leases.

    Owner-dispatched on ``pool.driver`` when it is set (``None`` from that
    plugin makes the engine raise :class:`~overlayd.errors.NoDriverError`);
    the built-in allocator answers last (``trylast``) for every pool no
    driver took over.

    :param pool: A pool previously created.
    :returns: ``True`` if it existed, ``False`` if not; ``None`` if not ours.

    Idempotent: yes.
    Blocking: no.
    Raising: never for an unknown pool.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def overlayd_ipam_allocate(pool: Pool, owner: str) -> Lease | None:
    """Lease a free address from ``pool`` to ``owner``.

    Owner-dispatched on ``pool.driver`` when it is set (``None`` from that
    plugin makes the engine raise :class:`~overlayd.errors.NoDriverError`);
    the built-in allocator answers last (``trylast``) for every pool no
    driver took over.

    Never hands out the network, broadcast (IPv4), reserved or already
    leased addresses. The built-in allocator prefers never-used addresses and
    reuses released ones least-recently-released first, so a stale ARP, DNS
    or conntrack entry for a released address has the longest time to expire.

    :param pool: The pool to allocate from.
    :param owner: Who holds the lease (``handle:<key>`` or ``manual``).
    :returns: The new lease.

    Idempotent: no; each call leases another address (the engine makes attach
    idempotent per handle).
    Blocking: no; O(1) amortised for the built-in allocator.
    Raising: :class:`~overlayd.errors.PoolExhausted` when no address is free;
    :class:`~overlayd.errors.NotFound` for an unknown pool.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def overlayd_ipam_reserve(pool: Pool, ip: IPAddress, owner: str) -> Lease | None:
    """Lease the specific address ``ip`` from ``pool`` to ``owner``.

    Owner-dispatched on ``pool.driver`` when it is set (``None`` from that
    plugin makes the engine raise :class:`~overlayd.errors.NoDriverError`);
    the built-in allocator answers last (``trylast``) for every pool no
    driver took over.

    :param pool: The pool holding ``ip``.
    :param ip: The requested address.
    :param owner: Who holds the lease.
    :returns: The lease.

    Idempotent: reserving an address already leased to the same owner returns
    that lease.
    Blocking: no.
    Raising: :class:`~overlayd.errors.AllocationError` when ``ip`` is outside the
    pool, reserved, or leased to another owner.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def overlayd_ipam_release(pool: Pool, ip: IPAddress) -> bool | None:
    """Return ``ip`` to ``pool``.

    Owner-dispatched on ``pool.driver`` when it is set (``None`` from that
    plugin makes the engine raise :class:`~overlayd.errors.NoDriverError`);
    the built-in allocator answers last (``trylast``) for every pool no
    driver took over.

    :param pool: The pool holding ``ip``.
    :param ip: A leased address.
    :returns: ``True`` if it was leased, ``False`` if it was free already.

    Idempotent: yes.
    Blocking: no.
    Raising: :class:`~overlayd.errors.AllocationError` when ``ip`` is outside the pool.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def overlayd_ipam_subnet_allocate(request: SubnetRequest) -> IPNetwork | None:
    """Choose the subnet of a service being set up on this node.

    The built-in carving answers last (``trylast``) when ``request.driver`` is
    ``None``: it follows the node's layout (``[ipam]`` in the configuration
    docs). Return ``None`` when ``request.driver`` names another plugin. A
    service on the Windows base network (``base-network`` layout, shared
    mode) has no subnet of its own and is never asked for.

    The engine checks the answer before using it: the same address family as
    ``request.cluster_cidr`` and inside it, at least four addresses (the
    gateway and, for a dedicated service, the device's address come first),
    and no overlap with ``request.taken`` or a subnet being set up at the same
    time. An answer that breaks a rule is given back with
    :func:`overlayd_ipam_subnet_release` and the set-up fails with a
    :class:`~overlayd.errors.DriverError`, changing nothing.

    :param request: The service, its mode, the cluster CIDR, the node slice,
        the layout, what the node already uses, and the owning driver.
    :returns: The service's subnet.

    Idempotent: no; each call hands out another subnet until it is released.
    Blocking: yes (a driver may ask an external IPAM).
    Raising: :class:`~overlayd.errors.PoolExhausted` when no subnet is free;
    :class:`~overlayd.errors.Conflict` when the layout has no room for the mode.

    .. versionadded:: 0.2
    """


@hookspec(firstresult=True)
def overlayd_ipam_subnet_release(pool: Pool) -> bool | None:
    """Give back the subnet ``pool.cidr`` of a service torn down (or not set up after all).

    Called after the service's records are gone and its address pool deleted.
    Return ``None`` when ``pool.driver`` names another plugin; the built-in
    carving answers last (``trylast``) for pools no driver owns. A driver
    learns the subnets in use at start from the ``overlayd_ipam_pool_create``
    of each service pool (``pool.cidr``).

    :param pool: The service's pool: ``service:<name>``, its subnet, its owner.
    :returns: ``True`` when the subnet was held, ``False`` if it was free.

    Idempotent: yes.
    Blocking: yes.
    Raising: never for an unknown subnet; a failure is logged by the engine
    (the service is gone either way).

    .. versionadded:: 0.2
    """


# ---------------------------------------------------------------------------
# dns
# ---------------------------------------------------------------------------


@hookspec
def overlayd_dns_records_changed(added: Sequence[DnsRecord], removed: Sequence[DnsRecord]) -> None:
    """Observe DNS record changes (the built-in DNS server serves them).

    Every plugin is called. ``removed`` is applied before ``added``.

    :param added: Records that now exist.
    :param removed: Records that no longer exist.

    Idempotent: yes; adding an existing record or removing an absent one is a no-op.
    Blocking: must be fast (in-memory update); never tear down sockets here.
    Raising: :class:`~overlayd.errors.DnsError`; the engine rolls the operation back.

    .. versionadded:: 0.1
    """


@hookspec
def overlayd_dns_records_loaded(records: Sequence[DnsRecordLike], fingerprint: str | None) -> None:
    """Take every DNS record at once when the engine has loaded its state (a bulk path).

    Called once per engine start, after the state is loaded and before any
    ``overlayd_dns_records_changed``, with every record that exists: the
    same as being given them all as ``added``. A plugin that does not
    implement this hook is given them that way, through
    ``overlayd_dns_records_changed`` in batches of
    :class:`~overlayd.model.DnsRecord` models, so implementing it is
    optional: it spares a large zone a model per record (120,000 of them on
    a large node, docs/design-notes.rst, "Footprint of a large node").

    :param records: Every record, as read-only objects with the fields of
        ``DnsRecord`` (:class:`~overlayd.model.DnsRecordLike`: ``name``,
        ``ip``, ``source``), not models; each is immutable and may be kept.
    :param fingerprint: The state store's fingerprint of the stored records
        these came from (:meth:`overlayd.state.Store.fingerprint`), or
        ``None`` (no records, or no data directory). A plugin that kept what it built from the
        records under the fingerprint given to
        :func:`overlayd_dns_records_stored` may use it instead of building
        again when the two are equal. A plugin may leave this argument out
        of its signature.

    Idempotent: yes; adding a record the plugin holds already is a no-op.
    Blocking: must be fast (in-memory tables); never open sockets here.
    Raising: :class:`~overlayd.errors.DnsError`; the engine's start fails.

    .. versionadded:: 0.2
    """


@hookspec
def overlayd_dns_records_stored(fingerprint: str | None) -> None:
    """The engine is stopping: its DNS records are stored, under ``fingerprint``.

    Called once as the engine stops, after its last change to the records
    and before ``overlayd_shutdown``. A plugin may keep what it built from
    the records (in the data directory ``overlayd_startup`` gave it) under
    ``fingerprint``; the next start's :func:`overlayd_dns_records_loaded`
    gets the same fingerprint only if the stored records are still the same
    (whatever changed them in between, a crash included).

    :param fingerprint: :meth:`overlayd.state.Store.fingerprint` of the
        stored DNS records; ``None`` when there are none, without a data
        directory, and when the DNS
        plugins may hold other records than the stored ones (records of
        other nodes were served, cluster mode; or a change failed in one of
        them): nothing is to be kept then.

    Idempotent: yes. Blocking: may write a file. Raising: the error is
    logged and the stop goes on.

    .. versionadded:: 0.2
    """


@hookspec
def overlayd_dns_serve(zone: str, addresses: Sequence[str]) -> None:
    """Set the zone the DNS server is authoritative for and the addresses it listens on.

    Called whenever either changes (the global overlay was set up, a service
    bridge came up or went away). The server opens sockets for new addresses
    and closes removed ones; it never closes an address that stays in the list,
    so no query is dropped.

    :param zone: Absolute zone name, e.g. ``prod.local.``; record names are relative to it.
    :param addresses: ``ip:port`` / ``[ipv6]:port`` strings, the desired set.

    Idempotent: yes; level-triggered (the full desired set each time).
    Blocking: briefly (binding sockets).
    Raising: :class:`~overlayd.errors.DnsError` when an address cannot be bound;
    the engine logs it and keeps serving on the others.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def overlayd_dns_endpoint_configure(
    attachment: Attachment, servers: Sequence[IPAddress], domain: str | None
) -> bool | None:
    """Point an attached workload's resolver at ``servers`` with search ``domain``.

    Owner-dispatched on ``attachment.driver``. Return ``None`` when the
    driver has no way to configure the workload's resolver (the engine then
    leaves resolver configuration to the orchestrator; so it does when the
    owner is not loaded).

    :param attachment: The attached workload.
    :param servers: Resolver addresses, usually the service gateway.
    :param domain: Search domain, e.g. ``prod.local``.
    :returns: ``True`` once configured.

    Idempotent: yes.
    Blocking: yes.
    Raising: :class:`~overlayd.errors.DnsError`.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------
# nat
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def overlayd_nat_masquerade(rule: MasqueradeRule, enable: bool) -> bool | None:
    """Enable or disable outbound NAT (masquerade) for ``rule.subnet``.

    Traffic from the subnet leaving the node is source-NATed, except towards
    ``rule.exempt`` (the cluster CIDR: overlay traffic keeps its addresses).

    :param rule: Subnet, exempt destinations, optional uplink.
    :param enable: ``True`` to add, ``False`` to remove.
    :returns: ``True`` once applied; ``None`` if this driver does no NAT.

    Idempotent: yes in both directions.
    Blocking: yes (one firewall transaction).
    Raising: :class:`~overlayd.errors.NatError`.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def overlayd_nat_port_mapping(mapping: PortMapping, enable: bool) -> bool | None:
    """Add or remove a host port forwarded to a container (DNAT with hairpin).

    :param mapping: Protocol, host port (and optional host address), container address and port.
    :param enable: ``True`` to add, ``False`` to remove.
    :returns: ``True`` once applied; ``None`` if this driver does no NAT.

    Idempotent: yes in both directions.
    Blocking: yes.
    Raising: :class:`~overlayd.errors.NatError`; a host port already mapped to
    another container is an error.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def overlayd_nat_candidates(device: Device) -> list[NatCandidate] | None:
    """Gather NAT-traversal candidates (host, reflexive, relay) for ``device``.

    Called on ``nat_tick`` when NAT traversal is enabled. Owner-dispatched on
    ``device.driver``; return ``None`` when traversal is not supported (an
    owner that is not loaded gathers no candidates either).

    Host candidates are the node's own addresses (IPv4 and IPv6, not
    link-local, not on overlay devices, not inside ``device.subnet``) with
    ``device.listen_port``. Reflexive and relayed candidates are gathered by
    the engine (:mod:`overlayd.nat`) from the sockets
    :func:`overlayd_nat_socket` opens; a driver may add candidates it knows
    better (a port forwarded by the host's router, say).

    :param device: A WireGuard device.
    :returns: Candidate endpoints, best first.

    Idempotent: yes.
    Blocking: yes, bounded by the driver's timeout.
    Raising: :class:`~overlayd.errors.NatError`.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       Host candidates are expected from the driver that owns the device.
    """


@hookspec(firstresult=True)
def overlayd_nat_socket(device: Device, family: int, type: int, proto: int) -> socket.socket | None:
    """Open a socket in the network namespace where ``device``'s UDP port lives.

    NAT traversal sends STUN from the WireGuard port through raw sockets
    (``SOCK_RAW``/``IPPROTO_UDP``), relays through loopback endpoints that
    WireGuard sends to, and talks to TURN servers; all of these must live
    where the device's UDP socket lives. A driver that keeps devices in the
    daemon's own namespace returns ``socket.socket(family, type, proto)``.

    Owner-dispatched on ``device.driver``; when the owner returns ``None`` or
    is not loaded the engine opens a plain socket in its own namespace.

    :param device: A WireGuard device.
    :param family: ``AF_INET`` or ``AF_INET6``.
    :param type: ``SOCK_RAW`` or ``SOCK_DGRAM``.
    :param proto: ``IPPROTO_UDP`` for raw sockets, else 0.
    :returns: A new socket owned by the caller.

    Idempotent: each call opens a new socket.
    Blocking: briefly (entering a namespace).
    Raising: :class:`OSError` as ``socket.socket`` does (``EPERM`` without
    ``CAP_NET_RAW``); :class:`~overlayd.errors.NatError` when the namespace
    is gone.

    .. versionadded:: 0.2
    """


@hookspec(firstresult=True)
def overlayd_nat_set_endpoint(
    device: Device, public_key: str, endpoint: str, keepalive: int
) -> bool | None:
    """Point a peer at ``endpoint`` and start a fresh WireGuard handshake there now.

    NAT traversal calls this when it moves a peer to another path: the
    peer's session is reset (its other settings kept) and a handshake
    initiation goes out at once, so the engine can confirm the path by the
    new handshake (``last_handshake_unix_secs`` turns non-zero). The peer's
    persistent keepalive becomes ``keepalive`` seconds, short enough to keep
    NAT mappings open. The endpoint the orchestrator recorded is unchanged.

    Owner-dispatched on ``device.driver``: only ever called for this driver's
    own devices; returning ``None`` makes the engine raise
    :class:`~overlayd.errors.NoDriverError`.

    :param device: The WireGuard device.
    :param public_key: The peer (base64); it must exist on the device.
    :param endpoint: Numeric ``IP:port`` or ``[IPv6]:port``.
    :param keepalive: Persistent keepalive in seconds (at least 1).
    :returns: ``True`` once applied.

    Idempotent: no; every call resets the session and handshakes again.
    Blocking: yes (one or two device transactions).
    Raising: :class:`~overlayd.errors.PeerError` when the peer is unknown
    or the device rejects the change.

    .. versionadded:: 0.2
    """


# ---------------------------------------------------------------------------
# attach
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def overlayd_attach(request: AttachRequest) -> Attachment | None:
    """Connect a workload to its service segment and return the attachment.

    Owner-dispatched on ``request.segment.driver`` for handles attached to the
    segment itself (``linux_pid``, ``netns``, ``windows_container``); return
    ``None`` when ``request.handle.platform`` is a kind this driver does not
    attach. The engine has already leased ``request.address`` (and
    ``request.global_address``).

    A ``guest_managed`` handle does not touch the segment: it goes to every
    driver, and the one that handles guests answers whatever driver owns the
    segment. It generates the
    guest's keypair and returns it in ``attachment.guest``; the engine registers
    the guest as a peer of the node's device.

    A ``netns`` handle with a CNI identity names the workload's interface
    (``handle.container_ifname``, default ``eth0``). With
    ``request.default_route`` false the workload gets no default route; the
    cluster CIDR (``request.node.cluster_cidr``) is routed via the gateway
    instead. A driver that creates the workload's interface reports its name,
    MAC, MTU and the destinations routed via the gateway in
    ``attachment.ifname``, ``mac``, ``mtu`` and ``routes`` (the CNI plugin's
    result is built from them). With ``request.planned`` set (the driver
    answered ``overlayd_attach_plan``), the attachment returned must equal it.

    :param request: Handle, service, segment, addresses, gateway, DNS, MTU.
    :returns: The attachment; ``attachment.driver`` is this driver's name and
        ``attachment.interfaces`` lists every host object detach must remove.

    Idempotent: the engine never attaches a handle twice; a driver must still
    tolerate leftovers of an earlier crashed attempt with the same names.
    Blocking: yes (netlink, HCN).
    Raising: :class:`~overlayd.errors.AttachError` after removing anything
    half-created; the engine then releases the leases it took.

    .. versionadded:: 0.1
    .. versionchanged:: 0.1
       ``netns`` handles may name the interface; ``request.default_route``;
       ``attachment.ifname``, ``mac``, ``mtu`` and ``routes``.
    .. versionchanged:: 0.2
       ``request.planned``, from ``overlayd_attach_plan``.
    """


@hookspec(firstresult=True)
def overlayd_attach_plan(request: AttachRequest) -> Attachment | None:
    """Say, before touching the host, the attachment ``overlayd_attach`` will return.

    Optional. Owner-dispatched on ``request.segment.driver``, like
    ``overlayd_attach``; never called for ``guest_managed`` handles. A driver
    that answers lets the engine write the attachment's record to the state
    store while ``overlayd_attach`` plugs the workload in, instead of after
    it: an attach then costs the longer of the two, not their sum. The
    engine calls ``overlayd_attach`` with ``request.planned`` set to the
    answer, and the driver must make the host match it (a MAC it chose here
    is the one the interface gets). If ``overlayd_attach`` returns another
    attachment, the engine records that one as well (correct, one more
    write). If ``overlayd_attach`` fails, the engine removes the record
    again.

    A crash between the two writes can leave a record whose interfaces do
    not exist. The driver's ``overlayd_reconcile`` must then recreate them
    for a live workload, or report the workload gone, as it does for
    interfaces that vanished behind its back.

    :param request: As for ``overlayd_attach`` (``planned`` is ``None``).
    :returns: The attachment ``overlayd_attach(request)`` will return, apart
        from ``created_unix_secs``; ``None`` when the driver cannot tell up
        front (the engine then attaches first and writes the record after).

    Idempotent: yes; it reads, and changes nothing on the host.
    Blocking: briefly (a ``stat`` of the workload's namespace).
    Raising: an :class:`~overlayd.errors.AttachError` fails the attach
    before anything is written; return ``None`` rather than raise when
    unsure (``overlayd_attach`` then reports what is wrong).

    .. versionadded:: 0.2
    """


@hookspec(firstresult=True)
def overlayd_detach(attachment: Attachment) -> bool | None:
    """Remove everything the attach of ``attachment`` created on the host.

    Owner-dispatched on ``attachment.driver``: only ever called for this driver's
    own attachments; returning ``None`` makes the engine raise
    :class:`~overlayd.errors.NoDriverError`.

    :param attachment: The recorded attachment.
    :returns: ``True`` when host objects were removed, ``False`` when they were
        already gone (the workload or its namespace died first).

    Idempotent: yes; detaching twice, or after the workload is gone, succeeds.
    Blocking: yes; drivers may defer slow kernel work (e.g. batched link
    deletion) as long as the names are free for an immediate re-attach.
    Raising: :class:`~overlayd.errors.AttachError` only when an object exists
    and cannot be removed; the engine keeps the record so a retry can finish.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def overlayd_attachment_alive(attachment: Attachment) -> bool | None:
    """Tell whether the workload behind ``attachment`` still exists.

    Used by garbage collection and reconcile (a ``linux_pid`` whose process is
    gone, an HCN endpoint deleted behind our back). Owner-dispatched on
    ``attachment.driver``; an owner that is not loaded counts as ``True``.

    :param attachment: A recorded attachment.
    :returns: ``True``/``False``; ``None`` when the driver cannot tell (counts as ``True``).

    Idempotent: yes, read-only.
    Blocking: briefly.
    Raising: never; return ``True`` when unsure (GC must not release live addresses).

    .. versionadded:: 0.1
    """
