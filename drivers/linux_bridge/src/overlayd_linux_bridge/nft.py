"""NAT through nftables, in overlayd's own table ``inet overlayd``; an MLD filter
in ``bridge overlayd``. No other table is touched.

The table holds a fixed set of chains whose rules never change; everything
that varies is an element of a named set or map, so adding or removing a
subnet or a port mapping is one element update in one transaction, and the
cost of an attach does not grow with the number of containers.

::

    table inet overlayd
      set masq4/masq6      overlay subnets masqueraded when leaving the node
      set exempt4/exempt6  destinations never masqueraded (the cluster CIDR)
      map pm4/pm6          proto . host_port : container_ip . container_port
      map pm4a/pm6a        host_ip . proto . host_port : container_ip . container_port
      chain portmap        DNAT lookups (host-IP-specific first, then any local IP)
      chain prerouting     nat hook prerouting, jumps to portmap
      chain output         nat hook output (host-originated), jumps to portmap
      chain postrouting    hairpin masquerade + subnet masquerade

Port mappings on any host address match ``fib daddr type local``. Reaching a
mapping from the host through ``127.0.0.1`` additionally needs the
``route_localnet`` sysctl, which this module does not set.

A host firewall reload (``nft flush ruleset``, firewalld restart) wipes the
table; :meth:`Nftables.apply_table` rebuilds it from the desired state in one
atomic transaction (``add table`` + ``delete table`` + definition).

The MLD filter (:func:`mld_filter_ruleset`) is a second table of overlayd's,
in the ``bridge`` family::

    table bridge overlayd
      chain prerouting     drops MLD reports and dones that arrive on a
                           bridge port in overlayd's port link group

Every IPv6 address a container gets makes its kernel send MLD reports for the
address's solicited-node group. overlayd's bridges do no multicast snooping,
so the reports served nobody, and the bridge flooded each one into every
other container's namespace: on an IPv6 cluster the attach cost grew with
the number of containers (docs/design-notes.rst). Only ports of bridges
without snooping (those overlayd creates) join the group: a snooping bridge
(one overlayd adopted) needs its ports' reports once a querier is on the
segment, or it sends IPv6 multicast, neighbour solicitations included, to
router ports only.

Backends. :class:`LibNftables` calls ``libnftables.so.1`` through ctypes
(in-process, no fork); :class:`NftCli` runs ``nft -f -`` and is the fallback
when the library is missing. Both accept the namespace to act in: libnftables
opens its netlink socket in the calling thread's namespace, so the library
backend owns one worker thread that ``setns``'s into the namespace once and
runs every command; the CLI backend runs ``nsenter --net=<path> nft``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from ipaddress import IPv4Address
from ipaddress import IPv4Network
from ipaddress import IPv6Address
from ipaddress import IPv6Network
from ipaddress import ip_address
from ipaddress import ip_network
from typing import Any
from typing import Final
from typing import Literal
from typing import Protocol

from overlayd.errors import NatError
from overlayd.errors import NotSupported
from overlayd_linux.netns import setns_current_thread

__all__ = [
    "PORT_GROUP",
    "TABLE",
    "LibNftables",
    "NatState",
    "NftBackend",
    "NftCli",
    "NftCommandError",
    "Nftables",
    "PortMapping",
    "default_backend",
    "mld_filter_ruleset",
]

#: The name of overlayd's tables (``inet overlayd`` for NAT, ``bridge overlayd``
#: for the MLD filter); no other table is touched.
TABLE: Final = "overlayd"
_FAMILY: Final = "inet"
_MLD_FAMILY: Final = "bridge"
#: Link group of the host ends of bridge ports overlayd creates ("ovlp" in
#: ASCII); the MLD filter matches on it.
PORT_GROUP: Final = 0x6F766C70

Proto = Literal["tcp", "udp", "sctp"]
IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address

# enum nft_ctx_output_flags in <nftables/libnftables.h>.
_NFT_CTX_OUTPUT_JSON: Final = 1 << 4
_NFT_CTX_DEFAULT: Final = 0


class NftCommandError(NatError):
    """nft rejected a command; ``message`` is nft's own error text."""

    def __init__(self, message: str, *, nft_message: str) -> None:
        self.nft_message = nft_message
        super().__init__(message)

    @property
    def missing(self) -> bool:
        """The command referred to an element, set or table that does not exist."""
        # ENOENT from the kernel, or nft's own check for interval sets.
        text = self.nft_message
        return "No such file or directory" in text or "does not exist" in text


class NftBackend(Protocol):
    """Runs nft command text (``nft -f`` syntax) in one transaction."""

    name: str

    def run(self, commands: str, *, json_output: bool = False) -> str:
        """Run ``commands``; return nft's output. Raise :class:`NftCommandError`."""
        ...

    def close(self) -> None:
        """Release the backend's resources."""
        ...


def _load_libnftables() -> ctypes.CDLL:
    """The library by its soname; ``find_library`` (which runs ``ldconfig``) only if that fails."""
    try:
        return ctypes.CDLL("libnftables.so.1", use_errno=True)
    except OSError:
        path = ctypes.util.find_library("nftables")
        if path is None:
            raise
        return ctypes.CDLL(path, use_errno=True)


class LibNftables:
    """In-process backend: ``libnftables.so.1`` through ctypes."""

    name = "libnftables"

    def __init__(self, netns_path: str | None = None) -> None:
        try:
            lib = _load_libnftables()
        except OSError as exc:
            raise NotSupported(
                "libnftables is not installed (Debian package libnftables1); "
                "install it or use the nft command-line backend."
            ) from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib = lib
        self._netns_fd: int | None = None
        if netns_path is not None:
            self._netns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        # One worker thread owns the context: the context is not thread safe
        # and its netlink socket lives in the namespace of the creating thread.
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]] | None] = queue.Queue()
        ready: queue.Queue[BaseException | None] = queue.Queue()
        self._ctx: int | None = None
        self._thread = threading.Thread(
            target=self._worker, args=(ready,), name="overlayd-nft", daemon=True
        )
        self._thread.start()
        failure = ready.get()
        if failure is not None:
            raise NatError(f"Could not start the libnftables worker: {failure}.") from failure

    def _worker(self, ready: queue.Queue[BaseException | None]) -> None:
        try:
            # Enter the namespace (if any) before the context opens its socket.
            if self._netns_fd is not None:
                setns_current_thread(self._netns_fd)
            ctx = self._lib.nft_ctx_new(_NFT_CTX_DEFAULT)
            if not ctx:
                raise OSError(ctypes.get_errno(), "nft_ctx_new returned NULL")
            self._lib.nft_ctx_buffer_output(ctx)
            self._lib.nft_ctx_buffer_error(ctx)
            self._ctx = ctx
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor
            ready.put(exc)
            return
        ready.put(None)
        while True:
            job = self._jobs.get()
            if job is None:
                break
            func, reply = job
            try:
                reply.put((True, func()))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                reply.put((False, exc))
        self._lib.nft_ctx_free(ctx)
        self._ctx = None

    def _call(self, func: Callable[[], Any]) -> Any:
        reply: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._jobs.put((func, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value

    def run(self, commands: str, *, json_output: bool = False) -> str:
        def job() -> str:
            lib, ctx = self._lib, self._ctx
            flags = lib.nft_ctx_output_get_flags(ctx)
            want = flags | _NFT_CTX_OUTPUT_JSON if json_output else flags & ~_NFT_CTX_OUTPUT_JSON
            if want != flags:
                lib.nft_ctx_output_set_flags(ctx, want)
            rc = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
            out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
            if rc != 0:
                raise NftCommandError(
                    f"nftables refused the update of table {_FAMILY} {TABLE}: "
                    f"{err.strip() or 'no error text'}",
                    nft_message=err,
                )
            return out

        result: str = self._call(job)
        return result

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        if self._netns_fd is not None:
            os.close(self._netns_fd)
            self._netns_fd = None


class NftCli:
    """Fallback backend: the ``nft`` binary fed on stdin (``nft -f -``)."""

    name = "nft-cli"

    def __init__(self, netns_path: str | None = None, nft: str | None = None) -> None:
        binary = nft or shutil.which("nft")
        if binary is None:
            raise NotSupported(
                "Neither libnftables nor the nft binary is installed; install the "
                "Debian package nftables to get NAT."
            )
        self._argv = [binary]
        if netns_path is not None:
            nsenter = shutil.which("nsenter")
            if nsenter is None:
                raise NotSupported("nsenter (util-linux) is needed to run nft in a netns.")
            self._argv = [nsenter, f"--net={netns_path}", binary]

    def run(self, commands: str, *, json_output: bool = False) -> str:
        if json_output:
            # `nft -j -f -` expects JSON input and prints nothing for a text
            # `list` command; JSON listings are single commands passed as argv.
            argv = [*self._argv, "-j", *commands.split()]
            stdin = None
        else:
            argv = [*self._argv, "-f", "-"]
            stdin = commands
        try:
            proc = subprocess.run(  # noqa: S603 - fixed argv built here
                argv, input=stdin, capture_output=True, text=True, check=False
            )
        except OSError as exc:
            raise NatError(f"Could not run {argv[0]}: {exc}.") from exc
        if proc.returncode != 0:
            raise NftCommandError(
                f"nftables refused the update of table {_FAMILY} {TABLE}: "
                f"{proc.stderr.strip() or 'no error text'}",
                nft_message=proc.stderr,
            )
        return proc.stdout

    def close(self) -> None:
        """Nothing to release."""


def default_backend(netns_path: str | None = None) -> NftBackend:
    """libnftables when it can be loaded, else the ``nft`` binary."""
    try:
        return LibNftables(netns_path)
    except NotSupported:
        return NftCli(netns_path)


@dataclass(frozen=True, order=True)
class PortMapping:
    """One published port: ``host_ip:host_port/proto`` to the container."""

    #: ``tcp``, ``udp`` or ``sctp``.
    proto: Proto
    #: Port on the host.
    host_port: int
    #: Address of the container (its family selects IPv4 or IPv6 NAT).
    container_ip: IPAddress
    #: Port inside the container.
    container_port: int
    #: Only traffic to this host address; ``None``: any local address.
    host_ip: IPAddress | None = None

    def __post_init__(self) -> None:
        if self.proto not in ("tcp", "udp", "sctp"):
            raise NatError(f"Unsupported protocol {self.proto!r}; use tcp, udp or sctp.")
        for port in (self.host_port, self.container_port):
            if not 1 <= port <= 65535:
                raise NatError(f"Port {port} is out of range 1-65535.")
        if self.host_ip is not None and self.host_ip.version != self.container_ip.version:
            raise NatError(
                f"Host address {self.host_ip} and container address "
                f"{self.container_ip} are of different IP versions."
            )

    @property
    def map_name(self) -> str:
        """The nft map holding this mapping."""
        v = self.container_ip.version
        return f"pm{v}a" if self.host_ip is not None else f"pm{v}"

    def key(self) -> str:
        """The map key in nft syntax."""
        key = f"{self.proto} . {self.host_port}"
        return f"{self.host_ip} . {key}" if self.host_ip is not None else key

    def element(self) -> str:
        """The map element (key : value) in nft syntax."""
        return f"{self.key()} : {self.container_ip} . {self.container_port}"


@dataclass(frozen=True)
class NatState:
    """Everything the table must contain: what :meth:`Nftables.apply_table` builds."""

    #: Overlay subnets to masquerade when leaving the node.
    masquerade: frozenset[IPNetwork] = field(default_factory=frozenset)
    #: Destinations never masqueraded (the cluster CIDR).
    exempt: frozenset[IPNetwork] = field(default_factory=frozenset)
    #: Published ports.
    port_mappings: frozenset[PortMapping] = field(default_factory=frozenset)


#: Set and map declarations: name -> nft type.
_SETS: Final = {
    "masq4": "ipv4_addr",
    "masq6": "ipv6_addr",
    "exempt4": "ipv4_addr",
    "exempt6": "ipv6_addr",
}
_MAPS: Final = {
    "pm4": "inet_proto . inet_service : ipv4_addr . inet_service",
    "pm4a": "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service",
    "pm6": "inet_proto . inet_service : ipv6_addr . inet_service",
    "pm6a": "ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service",
}
_CHAINS: Final = """\
  chain portmap {
    dnat ip to ip daddr . meta l4proto . th dport map @pm4a
    fib daddr type local dnat ip to meta l4proto . th dport map @pm4
    dnat ip6 to ip6 daddr . meta l4proto . th dport map @pm6a
    fib daddr type local dnat ip6 to meta l4proto . th dport map @pm6
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    jump portmap
  }
  chain output {
    type nat hook output priority -100; policy accept;
    jump portmap
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat ip saddr @masq4 ip daddr @masq4 masquerade
    ct status dnat ip6 saddr @masq6 ip6 daddr @masq6 masquerade
    ip saddr @masq4 ip daddr != @masq4 ip daddr != @exempt4 masquerade
    ip6 saddr @masq6 ip6 daddr != @masq6 ip6 daddr != @exempt6 masquerade
  }
"""


def _ruleset(state: NatState) -> str:
    """The whole table as one nft transaction (replaces any previous table)."""
    elements: dict[str, list[str]] = {name: [] for name in (*_SETS, *_MAPS)}
    for net in state.masquerade:
        elements[f"masq{net.version}"].append(str(net))
    for net in state.exempt:
        elements[f"exempt{net.version}"].append(str(net))
    for pm in state.port_mappings:
        elements[pm.map_name].append(pm.element())

    def body(name: str) -> str:
        values = sorted(elements[name])
        return f" elements = {{ {', '.join(values)} }};" if values else ""

    t = f"{_FAMILY} {TABLE}"
    lines = [f"add table {t}", f"delete table {t}", f"table {t} {{"]
    lines += [
        f"  set {name} {{ type {typ}; flags interval;{body(name)} }}" for name, typ in _SETS.items()
    ]
    lines += [f"  map {name} {{ type {typ};{body(name)} }}" for name, typ in _MAPS.items()]
    return "\n".join(lines) + "\n" + _CHAINS + "}\n"


def mld_filter_ruleset(port_group: int) -> str:
    """Commands (re)creating table ``bridge overlayd``, atomically.

    Its one rule drops MLD reports and dones arriving on a bridge port in link
    group ``port_group`` (the host ends overlayd creates).
    """
    t = f"{_MLD_FAMILY} {TABLE}"
    return (
        f"add table {t}\n"
        f"delete table {t}\n"
        f"table {t} {{\n"
        "  chain prerouting {\n"
        "    type filter hook prerouting priority -200; policy accept;\n"
        f"    meta iifgroup {port_group:#x} icmpv6 type "
        "{ mld-listener-report, mld-listener-done, mld2-listener-report } counter drop\n"
        "  }\n"
        "}\n"
    )


def _parse_net(elem: Any) -> IPNetwork:
    if isinstance(elem, str):
        return ip_network(elem)
    if isinstance(elem, dict) and "prefix" in elem:
        return ip_network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
    raise NatError(f"Unexpected set element {elem!r} in table {_FAMILY} {TABLE}.")


class Nftables:
    """overlayd's NAT table, on top of a backend (default: libnftables)."""

    def __init__(self, backend: NftBackend | None = None) -> None:
        self.backend = backend if backend is not None else default_backend()

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()

    # -- whole table -------------------------------------------------------------

    def apply_table(self, state: NatState) -> None:
        """Make the table exactly ``state``, atomically (start, firewall reload)."""
        self.backend.run(_ruleset(state))

    def apply_mld_filter(self, port_group: int) -> None:
        """(Re)create table ``bridge overlayd`` (:func:`mld_filter_ruleset`)."""
        self.backend.run(mld_filter_ruleset(port_group))

    def delete_table(self) -> bool:
        """Remove the table; ``False`` when it did not exist."""
        return self._on_table(f"delete table {_FAMILY} {TABLE}\n")

    def table_exists(self) -> bool:
        """Whether the table is present (it vanishes on a host firewall reload)."""
        return self._exists(_FAMILY)

    def mld_filter_exists(self) -> bool:
        """Whether table ``bridge overlayd`` is present (a firewall reload removes it too)."""
        return self._exists(_MLD_FAMILY)

    def _exists(self, family: str) -> bool:
        return self._on_table(f"list table {family} {TABLE}\n", json_output=True)

    def _on_table(self, command: str, *, json_output: bool = False) -> bool:
        """Run ``command`` on a table; ``False`` when nft says the table does not exist."""
        try:
            self.backend.run(command, json_output=json_output)
        except NftCommandError as exc:
            if exc.missing:
                return False
            raise
        return True

    def list_elements(self) -> NatState:
        """Read back the sets and maps (the table must exist)."""
        out = self.backend.run(f"list table {_FAMILY} {TABLE}\n", json_output=True)
        masq: set[IPNetwork] = set()
        exempt: set[IPNetwork] = set()
        mappings: set[PortMapping] = set()
        for obj in json.loads(out).get("nftables", []):
            if "set" in obj:
                s = obj["set"]
                target = masq if s["name"].startswith("masq") else exempt
                target.update(_parse_net(e) for e in s.get("elem", []))
            elif "map" in obj:
                m = obj["map"]
                for key, value in m.get("elem", []):
                    parts = list(key["concat"])
                    host_ip = ip_address(parts.pop(0)) if len(parts) == 3 else None
                    proto, host_port = parts
                    cip, cport = value["concat"]
                    mappings.add(
                        PortMapping(
                            proto=proto,
                            host_port=int(host_port),
                            container_ip=ip_address(cip),
                            container_port=int(cport),
                            host_ip=host_ip,
                        )
                    )
        return NatState(frozenset(masq), frozenset(exempt), frozenset(mappings))

    # -- elements ----------------------------------------------------------------

    def update_sets(self, *, remove: NatState | None = None, add: NatState | None = None) -> None:
        """Delete then add masquerade/exempt elements in one transaction.

        One transaction lets a subnet be replaced by one that overlaps it
        (interval sets refuse overlapping elements), e.g. a service subnet
        giving way to the node slice that contains it. Port mappings in the
        arguments are ignored; use the port-mapping methods.
        """
        lines: list[str] = []
        for verb, state in (("delete", remove), ("add", add)):
            if state is None:
                continue
            for prefix, nets in (("masq", state.masquerade), ("exempt", state.exempt)):
                for net in sorted(nets, key=lambda n: (n.version, n)):
                    lines.append(
                        f"{verb} element {_FAMILY} {TABLE} {prefix}{net.version} {{ {net} }}"
                    )
        if lines:
            self.backend.run("\n".join(lines) + "\n")

    def _update(self, verb: str, name: str, element: str) -> bool:
        try:
            self.backend.run(f"{verb} element {_FAMILY} {TABLE} {name} {{ {element} }}\n")
        except NftCommandError as exc:
            if verb == "delete" and exc.missing:
                return False
            raise
        return True

    def add_masquerade(self, subnet: IPNetwork) -> None:
        """Masquerade ``subnet`` when it leaves the node (idempotent)."""
        self._update("add", f"masq{subnet.version}", str(subnet))

    def remove_masquerade(self, subnet: IPNetwork) -> bool:
        """Stop masquerading ``subnet``; ``False`` when it was not there."""
        return self._update("delete", f"masq{subnet.version}", str(subnet))

    def add_exempt(self, cidr: IPNetwork) -> None:
        """Never masquerade traffic to ``cidr`` (the cluster CIDR; idempotent)."""
        self._update("add", f"exempt{cidr.version}", str(cidr))

    def remove_exempt(self, cidr: IPNetwork) -> bool:
        """Remove an exemption; ``False`` when it was not there."""
        return self._update("delete", f"exempt{cidr.version}", str(cidr))

    def add_port_mapping(
        self,
        proto: Proto,
        host_port: int,
        container_ip: IPAddress,
        container_port: int,
        host_ip: IPAddress | None = None,
    ) -> PortMapping:
        """Publish a port (DNAT + hairpin); idempotent for the same target.

        Raises :class:`NftCommandError` when the host port is already mapped to
        another target.
        """
        pm = PortMapping(proto, host_port, container_ip, container_port, host_ip)
        self._update("add", pm.map_name, pm.element())
        return pm

    def remove_port_mapping(
        self,
        proto: Proto,
        host_port: int,
        container_ip: IPAddress,
        host_ip: IPAddress | None = None,
    ) -> bool:
        """Unpublish a port; ``False`` when it was not mapped."""
        v = container_ip.version
        name = f"pm{v}a" if host_ip is not None else f"pm{v}"
        key = f"{proto} . {host_port}"
        if host_ip is not None:
            key = f"{host_ip} . {key}"
        return self._update("delete", name, key)
