"""Command lines: ``overlayd`` (the daemon) and ``overlayctl`` (its client).

``overlayd serve`` runs the daemon; ``overlayctl`` talks to it over the socket
and prints aligned tables (``--json`` for scripts). Both are argparse programs
whose entry points return the process exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import Final
from typing import TextIO

from pydantic import ValidationError

from overlayd import __version__
from overlayd import cli_observe
from overlayd import protocol as p
from overlayd.client import Client
from overlayd.client import ConnectError
from overlayd.client import ConnectionLost
from overlayd.client import RemoteError
from overlayd.client import RequestTimeout
from overlayd.errors import ConfigError
from overlayd.errors import OverlaydError
from overlayd.transport import DEFAULT_SOCKET

if TYPE_CHECKING:
    from overlayd.config import DaemonConfig

__all__ = [
    "EXIT_CONNECT",
    "EXIT_ERR",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "build_overlayctl_parser",
    "build_overlayd_parser",
    "overlayctl_main",
    "overlayd_main",
]

EXIT_OK: Final = 0
#: overlayctl: the daemon answered ``err``; overlayd: it failed to start or run.
EXIT_ERR: Final = 1
#: Usage or configuration error (bad flags, bad TOML, invalid values).
EXIT_USAGE: Final = 2
#: overlayctl: cannot connect (or the connection broke); overlayd: the socket is in use.
EXIT_CONNECT: Final = 3
#: overlayctl: the daemon did not answer within --timeout.
EXIT_TIMEOUT: Final = 4

_SOCKET_ENV: Final = "OVERLAYD_SOCKET"

_OVERLAYCTL_EXIT_HELP: Final = """\
exit codes:
  0  success
  1  the daemon answered err (its message is printed on stderr)
  2  usage error: bad arguments or an invalid request
  3  cannot connect to the daemon, or the connection broke mid-call
  4  the daemon did not answer within --timeout

The socket defaults to $OVERLAYD_SOCKET, else /var/run/zlayer-overlayd.sock.
Handles: --pid N | --netns PATH | --container ID [--ip IP] | --guest ID;
gc --live takes pid:N, netns:PATH, container:ID, guest:ID or a JSON handle.
"""

_OVERLAYD_EXIT_HELP: Final = """\
exit codes (serve):
  0  stopped gracefully (SIGTERM, SIGINT or the shutdown op)
  1  the engine or a driver failed
  2  usage or configuration error
  3  another daemon is serving on the socket
"""


class _UsageError(Exception):
    """Bad command-line input discovered after argparse (exit 2)."""


def _err(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------------------
# overlayd
# ---------------------------------------------------------------------------


def build_overlayd_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overlayd",
        description="overlayd: the node's overlay network plane daemon (ZLayer-compatible IPC).",
        epilog=_OVERLAYD_EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"overlayd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the daemon",
        description="Run the daemon until SIGTERM/SIGINT or the shutdown op. "
        "Flags win over the configuration file.",
        epilog=_OVERLAYD_EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", type=Path, metavar="PATH", help="TOML configuration file")
    serve.add_argument("--socket", type=Path, metavar="PATH", help="Unix socket to serve on")
    serve.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="durable state directory (default /var/lib/overlayd)",
    )
    serve.add_argument(
        "--in-memory",
        action="store_const",
        const=True,
        default=None,
        help="keep the state in memory only, lost at exit (tests, demos)",
    )
    serve.add_argument(
        "--driver",
        action="append",
        metavar="NAME",
        dest="drivers",
        help="driver to load; repeat for an ordered list (replaces the file's list; "
        "default: the platform's, linux_bridge and wireguard on Linux; fake only if named)",
    )
    serve.add_argument("--socket-group", metavar="GROUP", help="group owning the socket")
    serve.add_argument(
        "--allow-uid",
        type=int,
        action="append",
        metavar="UID",
        dest="allowed_uids",
        help="uid allowed to connect besides root and the daemon's own (repeatable)",
    )
    serve.add_argument(
        "--allow-gid",
        type=int,
        action="append",
        metavar="GID",
        dest="allowed_gids",
        help="gid allowed to connect (repeatable)",
    )
    serve.add_argument("--log-format", choices=["text", "json"])
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--no-dns", action="store_true", help="do not run the built-in DNS server")
    cli_observe.add_serve_flags(serve)  # --metrics (overlayd.cli_observe)

    drivers = sub.add_parser("drivers", help="list the installed drivers")
    drivers.add_argument("--json", action="store_true", help="print JSON")

    demo = sub.add_parser("demo", help="run the guided demo", add_help=False)
    demo.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _serve(args: argparse.Namespace) -> int:
    if sys.platform == "win32":
        _err("overlayd: serving on Windows (named pipe) is not supported yet")
        return EXIT_USAGE
    else:
        from overlayd.server import SocketInUse
        from overlayd.server import run_daemon

        return _serve_posix(args, run_daemon, SocketInUse)


def _serve_posix(
    args: argparse.Namespace,
    run_daemon: Callable[[DaemonConfig], Coroutine[Any, Any, int]],
    SocketInUse: type[Exception],
) -> int:
    from overlayd.config import load_config
    from overlayd.logging import configure_logging

    try:
        config = load_config(
            args.config,
            socket=args.socket,
            data_dir=args.data_dir,
            in_memory=args.in_memory,
            drivers=args.drivers,
            socket_group=args.socket_group,
            allowed_uids=args.allowed_uids,
            allowed_gids=args.allowed_gids,
            log_format=args.log_format,
            log_level=args.log_level,
        )
    except ConfigError as exc:
        _err(f"overlayd: {exc}")
        return EXIT_USAGE
    if args.no_dns:
        config = config.model_copy(update={"dns": config.dns.model_copy(update={"enabled": False})})
    config = cli_observe.apply_serve_flags(args, config)  # --metrics
    configure_logging(config.log_format, config.log_level)
    try:
        return asyncio.run(run_daemon(config))
    except SocketInUse as exc:
        _err(f"overlayd: {exc}")
        return EXIT_CONNECT
    except ConfigError as exc:
        _err(f"overlayd: {exc}")
        return EXIT_USAGE
    except OverlaydError as exc:
        _err(f"overlayd: cannot run: {exc}")
        return EXIT_ERR
    except OSError as exc:
        _err(f"overlayd: cannot run: {exc}")
        return EXIT_ERR
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        # The daemon has stopped; a late SIGTERM/SIGINT must not turn a clean
        # exit into death by signal while the interpreter winds down.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _drivers(args: argparse.Namespace) -> int:
    import importlib.metadata

    from overlayd.plugins import DRIVER_NAMESPACE

    eps = sorted(importlib.metadata.entry_points(group=DRIVER_NAMESPACE), key=lambda ep: ep.name)
    rows = []
    for ep in eps:
        dist = ep.dist
        rows.append(
            {
                "name": ep.name,
                "target": ep.value,
                "distribution": dist.name if dist else "",
                "version": dist.version if dist else "",
            }
        )
    if args.json:
        print(json.dumps({"drivers": rows}, indent=2))
    else:
        _print_table(
            ["NAME", "DISTRIBUTION", "VERSION", "TARGET"],
            [[r["name"], r["distribution"], r["version"], r["target"]] for r in rows],
        )
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    import importlib

    try:
        # An optional distribution outside core (overlayd-demo), imported lazily.
        module = importlib.import_module("overlayd_demo.cli")
    except ModuleNotFoundError as exc:
        if exc.name not in ("overlayd_demo.cli", "overlayd_demo"):
            raise
        _err(
            "overlayd: the demo is not installed (pip install overlayd-demo, "
            "or pip install -e demo in a checkout)"
        )
        return EXIT_USAGE
    main: Callable[[list[str]], int | None] = module.main
    result = main(list(args.args))
    return int(result or 0)


def overlayd_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``overlayd``; returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["demo"]:
        # argparse.REMAINDER will not take options (``--keep``) as its first
        # item, so the demo's own parser gets everything after ``demo``.
        return _demo(argparse.Namespace(args=arguments[1:]))
    parser = build_overlayd_parser()
    args = parser.parse_args(arguments)
    if args.command == "serve":
        return _serve(args)
    if args.command == "drivers":
        return _drivers(args)
    if args.command == "demo":
        return _demo(args)
    parser.print_help(sys.stderr)
    return EXIT_USAGE


# ---------------------------------------------------------------------------
# overlayctl: output helpers
# ---------------------------------------------------------------------------


def _print_table(headers: list[str], rows: list[list[str]], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if not rows:
        print("(none)", file=out)
        return
    widths = [max(len(h), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    for row in rows:
        cells = (str(c).ljust(w) for c, w in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)


def _print_pairs(pairs: list[tuple[str, object]]) -> None:
    pairs = [(k, v) for k, v in pairs if v is not None]
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        print(f"{key + ':':<{width + 1}} {value}")


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _handle_label(handle: p.AnyHandle) -> str:
    if isinstance(handle, p.LinuxPidHandle):
        return f"pid:{handle.pid}"
    if isinstance(handle, p.WindowsContainerHandle):
        return f"container:{handle.container_id}"
    if isinstance(handle, p.GuestManagedHandle):
        return f"guest:{handle.id}"
    if handle.container_id is not None:
        ifname = handle.ifname or "eth0"
        return f"cni:{handle.network or '-'}/{handle.container_id}/{ifname}"
    return f"netns:{handle.path}"


def _ago(unix: int) -> str:
    if unix <= 0:
        return "never"
    import time

    secs = max(0, int(time.time()) - unix)
    if secs < 120:
        return f"{secs}s ago"
    if secs < 7200:
        return f"{secs // 60}m ago"
    return f"{secs // 3600}h ago"


# ---------------------------------------------------------------------------
# overlayctl: argument parsing
# ---------------------------------------------------------------------------


def _add_handle_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--pid", type=int, metavar="N", help="a Linux process (its netns)")
    group.add_argument("--netns", metavar="PATH", help="a network namespace file")
    group.add_argument("--container", metavar="ID", help="a Windows (HCS) container")
    group.add_argument("--guest", metavar="ID", help="a guest-managed VM")
    parser.add_argument("--ip", metavar="IP", help="requested IP (with --container)")


def _handle_from_args(args: argparse.Namespace) -> p.AnyHandle:
    if args.ip is not None and args.container is None:
        raise _UsageError("--ip only goes with --container")
    if args.pid is not None:
        return p.LinuxPidHandle(pid=args.pid)
    if args.netns is not None:
        return p.NetnsHandle(path=args.netns)
    if args.container is not None:
        return p.WindowsContainerHandle(container_id=args.container, ip=args.ip)
    return p.GuestManagedHandle(id=args.guest)


def _parse_handle_spec(spec: str) -> p.AnyHandle:
    """``pid:N``, ``netns:PATH``, ``container:ID``, ``guest:ID`` or a JSON handle object."""
    if spec.lstrip().startswith("{"):
        try:
            data = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise _UsageError(f"handle {spec!r} is not valid JSON: {exc}") from None
        frame = {"op": "detach_container", "handle": data}
        request = _decode_request(frame)
        assert isinstance(request, p.DetachContainerRequest)
        return request.handle
    kind, sep, value = spec.partition(":")
    if not sep or not value:
        raise _UsageError(
            f"handle {spec!r} is not KIND:VALUE (pid:N, netns:PATH, container:ID, guest:ID)"
        )
    if kind == "pid":
        if not (value.isascii() and value.isdigit()):
            raise _UsageError(f"handle {spec!r}: the pid must be a positive integer")
        return p.LinuxPidHandle(pid=int(value))
    if kind == "netns":
        return p.NetnsHandle(path=value)
    if kind == "container":
        return p.WindowsContainerHandle(container_id=value)
    if kind == "guest":
        return p.GuestManagedHandle(id=value)
    raise _UsageError(f"handle kind {kind!r} is not pid, netns, container or guest")


def _decode_request(data: object) -> p.AnyRequest:
    """A request object (or a whole request frame) as typed by the protocol."""
    if isinstance(data, dict) and data.get("frame") == "request":
        frame_data = dict(data)
        frame_data.setdefault("id", 1)
    else:
        frame_data = {"frame": "request", "id": 1, "request": data}
    try:
        frame = p.decode_frame(json.dumps(frame_data).encode())
    except p.ProtocolError as exc:
        raise _UsageError(f"invalid request: {exc}") from None
    if not isinstance(frame, p.RequestFrame):
        raise _UsageError("invalid request: not a request frame")
    return frame.request


def build_overlayctl_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overlayctl",
        description="Control a running overlayd over its socket.",
        epilog=_OVERLAYCTL_EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"overlayctl {__version__}")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=os.environ.get(_SOCKET_ENV) or DEFAULT_SOCKET,
        help="daemon socket (default: $OVERLAYD_SOCKET or %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="seconds to wait per call"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("status", help="node overlay status")

    attach = sub.add_parser("attach", help="attach a workload to a service overlay")
    _add_handle_flags(attach)
    attach.add_argument("--service", required=True, help="service overlay to join")
    attach.add_argument("--join-global", action="store_true", help="also join the node slice")
    attach.add_argument("--dns-server", metavar="IP")
    attach.add_argument("--dns-domain", metavar="DOMAIN")

    detach = sub.add_parser("detach", help="detach a workload")
    _add_handle_flags(detach)

    peers = sub.add_parser("peers", help="list or change WireGuard peers")
    peers_sub = peers.add_subparsers(dest="peers_command", metavar="ACTION")
    peers_sub.add_parser("list", help="list the global device's peers (the default)")
    add = peers_sub.add_parser("add", help="add or update a peer")
    add.add_argument("public_key")
    add.add_argument("--endpoint", default="", help="host:port (empty: unknown/roaming)")
    add.add_argument(
        "--allowed-ips", required=True, help="comma-separated CIDRs, e.g. 10.200.1.0/24"
    )
    add.add_argument("--keepalive", type=int, default=0, metavar="SECS")
    add.add_argument("--service", help="a dedicated service device instead of the global one")
    remove = peers_sub.add_parser("remove", help="remove a peer")
    remove.add_argument("public_key")
    remove.add_argument("--service")
    for name, verb in (("allow", "add an allowed CIDR to"), ("disallow", "remove a CIDR from")):
        edit = peers_sub.add_parser(name, help=f"{verb} a peer")
        edit.add_argument("public_key")
        edit.add_argument("cidr")
        edit.add_argument("--service")

    dns = sub.add_parser("dns", help="register or unregister overlay DNS names")
    dns_sub = dns.add_subparsers(dest="dns_command", metavar="ACTION", required=True)
    reg = dns_sub.add_parser("register", help="answer NAME with IP")
    reg.add_argument("name")
    reg.add_argument("ip")
    unreg = dns_sub.add_parser("unregister", help="remove NAME's registered addresses")
    unreg.add_argument("name")

    ports = sub.add_parser("ports", help="map or unmap a node port to a container (NAT)")
    ports_sub = ports.add_subparsers(dest="ports_command", metavar="ACTION", required=True)
    for action, verb in (("map", "forward"), ("unmap", "stop forwarding")):
        port = ports_sub.add_parser(action, help=f"{verb} HOST_PORT to CONTAINER_IP:PORT")
        port.add_argument("host_port", type=int)
        port.add_argument("container", help="CONTAINER_IP:PORT ([v6]:port for IPv6)")
        port.add_argument("--protocol", choices=["tcp", "udp"], default="tcp")
        port.add_argument("--host-ip", metavar="IP", help="only on this node address")

    sub.add_parser("drivers", help="daemon version, protocol and loaded drivers (hello)")

    state = sub.add_parser("state", help="attachments and address leases")
    state.add_argument("--service", help="only this service's attachments")
    state.add_argument("--pool", help="only leases of this pool (node, service:<name>, ...)")

    gc = sub.add_parser("gc", help="detach every attachment whose handle is not live")
    gc.add_argument(
        "--live",
        nargs="*",
        required=True,
        metavar="HANDLE",
        help="handles still alive (pid:N, netns:PATH, container:ID, guest:ID); "
        "an empty list collects everything",
    )
    gc.add_argument("--dry-run", action="store_true", help="only report")

    sub.add_parser("reconcile", help="re-ensure recorded state against the host now")
    sub.add_parser("cluster", help="cluster mode: the nodes this node sees through etcd")
    sub.add_parser("nat-tick", help="refresh NAT traversal now")
    sub.add_parser("shutdown", help="stop the daemon gracefully (the data plane stays up)")
    cli_observe.add_overlayctl_commands(sub)  # events, topology (overlayd.cli_observe)

    call = sub.add_parser(
        "call",
        help="send any request as JSON and print the response JSON",
        description='Send one request, e.g. \'{"op":"allocate_ip","service":"web",'
        '"join_global":false}\'; a whole request frame is accepted too.',
    )
    call.add_argument("request", help="the request object as JSON")
    return parser


# ---------------------------------------------------------------------------
# overlayctl: commands
# ---------------------------------------------------------------------------


def _cmd_status(c: Client, args: argparse.Namespace) -> int:
    st = c.status()
    if args.json:
        _print_json(st.to_wire())
        return EXIT_OK
    _print_pairs(
        [
            ("interface", st.interface or "(no global overlay)"),
            ("node ip", st.node_ip),
            ("public key", st.public_key),
            ("overlay cidr", st.overlay_cidr),
            ("slice cidr", st.slice_cidr),
            ("peers", st.peer_count),
            ("services", st.service_count),
        ]
    )
    if st.peers:
        print()
        _peer_table(st)
    if st.dedicated_services:
        print()
        _print_table(
            ["SERVICE", "INTERFACE", "PORT", "OVERLAY IP", "SUBNET", "PEERS", "PUBLIC KEY"],
            [
                [
                    d.service,
                    d.interface,
                    str(d.listen_port),
                    d.overlay_ip,
                    d.subnet,
                    str(d.peer_count),
                    d.public_key,
                ]
                for d in st.dedicated_services
            ],
        )
    if st.nat is not None:
        from overlayd.nat.report import render_nat

        print()
        print("\n".join(render_nat(st.nat)))
    return EXIT_OK


def _peer_table(st: p.StatusResponse) -> None:
    _print_table(
        ["PUBLIC KEY", "ENDPOINT", "ALLOWED IPS", "HANDSHAKE"],
        [
            [
                peer.public_key,
                peer.endpoint or "-",
                peer.allowed_ips or "-",
                _ago(peer.last_handshake_unix_secs),
            ]
            for peer in st.peers
        ],
    )


def _ok(args: argparse.Namespace, text: str) -> int:
    if args.json:
        _print_json({"result": "ok"})
    else:
        print(text)
    return EXIT_OK


def _cmd_attach(c: Client, args: argparse.Namespace) -> int:
    handle = _handle_from_args(args)
    response = c.attach_container(
        handle,
        args.service,
        join_global=args.join_global,
        dns_server=args.dns_server,
        dns_domain=args.dns_domain,
    )
    if args.json:
        _print_json(response.to_wire())
    elif isinstance(response, p.AttachedResponse):
        _print_pairs(
            [
                ("handle", _handle_label(handle)),
                ("service", args.service),
                ("ip", response.ip),
                ("namespace guid", response.namespace_guid),
            ]
        )
    else:
        _print_pairs(
            [
                ("handle", _handle_label(handle)),
                ("overlay ip", f"{response.overlay_ip}/{response.prefix_len}"),
                ("public key", response.public_key),
                ("private key", response.private_key),
                ("listen port", response.listen_port),
                ("dns server", response.dns_server),
                ("dns domain", response.dns_domain),
            ]
        )
        print()
        _print_table(
            ["PEER PUBLIC KEY", "ENDPOINT", "ALLOWED IPS", "KEEPALIVE"],
            [
                [s.public_key, s.endpoint or "-", s.allowed_ips, str(s.persistent_keepalive_secs)]
                for s in response.peers
            ],
        )
    return EXIT_OK


def _cmd_detach(c: Client, args: argparse.Namespace) -> int:
    handle = _handle_from_args(args)
    c.detach_container(handle)
    return _ok(args, f"detached {_handle_label(handle)}")


def _cmd_peers(c: Client, args: argparse.Namespace) -> int:
    action = args.peers_command or "list"
    if action == "list":
        st = c.status()
        if args.json:
            _print_json({"peers": [peer.to_wire() for peer in st.peers]})
        else:
            _peer_table(st)
        return EXIT_OK
    if action == "add":
        c.add_peer(
            args.public_key,
            args.endpoint,
            args.allowed_ips,
            args.keepalive,
            service=args.service,
        )
        return _ok(args, f"peer {args.public_key} set")
    if action == "remove":
        c.remove_peer(args.public_key, service=args.service)
        return _ok(args, f"peer {args.public_key} removed")
    if action == "allow":
        c.add_allowed_ip(args.public_key, args.cidr, service=args.service)
        return _ok(args, f"{args.cidr} allowed for {args.public_key}")
    c.remove_allowed_ip(args.public_key, args.cidr, service=args.service)
    return _ok(args, f"{args.cidr} no longer allowed for {args.public_key}")


def _cmd_dns(c: Client, args: argparse.Namespace) -> int:
    if args.dns_command == "register":
        c.register_dns(args.name, args.ip)
        return _ok(args, f"{args.name} -> {args.ip}")
    c.unregister_dns(args.name)
    return _ok(args, f"{args.name} unregistered")


def _cmd_ports(c: Client, args: argparse.Namespace) -> int:
    ip, sep, port = args.container.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        _err(f"overlayctl: {args.container!r} is not CONTAINER_IP:PORT")
        return EXIT_USAGE
    ip = ip.strip("[]")
    call = c.map_port if args.ports_command == "map" else c.unmap_port
    call(args.protocol, args.host_port, ip, int(port), host_ip=args.host_ip)
    arrow = "->" if args.ports_command == "map" else "-/->"
    return _ok(args, f"{args.protocol}/{args.host_port} {arrow} {ip}:{port}")


def _cmd_drivers(c: Client, args: argparse.Namespace) -> int:
    hello = c.hello("overlayctl")
    if args.json:
        _print_json(hello.to_wire())
        return EXIT_OK
    _print_pairs(
        [
            ("server version", hello.server_version),
            ("protocol version", hello.protocol_version),
            ("ops", len(hello.ops)),
        ]
    )
    print()
    _print_table(
        ["DRIVER", "API", "PLATFORMS", "CAPABILITIES"],
        [
            [d.name, str(d.api), ",".join(d.platforms) or "any", ",".join(d.capabilities)]
            for d in hello.drivers
        ],
    )
    return EXIT_OK


def _cmd_state(c: Client, args: argparse.Namespace) -> int:
    attachments = c.list_attachments(args.service)
    leases = c.list_leases(args.pool)
    if args.json:
        _print_json(
            {
                "attachments": [a.to_wire() for a in attachments],
                "leases": [lease.to_wire() for lease in leases],
            }
        )
        return EXIT_OK
    print("attachments:")
    _print_table(
        ["HANDLE", "SERVICE", "IP", "GLOBAL IP", "DRIVER", "INTERFACES"],
        [
            [
                _handle_label(a.handle),
                a.service,
                a.ip,
                a.global_ip or "-",
                a.driver,
                ",".join(a.interfaces) or "-",
            ]
            for a in attachments
        ],
    )
    print()
    print("leases:")
    _print_table(
        ["IP", "POOL", "OWNER"],
        [[lease.ip, lease.pool, lease.owner] for lease in leases],
    )
    return EXIT_OK


def _cmd_gc(c: Client, args: argparse.Namespace) -> int:
    live = [_parse_handle_spec(spec) for spec in args.live]
    report = c.gc(live, dry_run=args.dry_run)
    if args.json:
        _print_json(report.to_wire())
        return EXIT_OK
    verb = "would release" if args.dry_run else "released"
    print(f"{verb} {len(report.released)} attachment(s); {report.kept} kept")
    for handle in report.released:
        print(f"  {_handle_label(handle)}")
    return EXIT_OK


def _cmd_reconcile(c: Client, args: argparse.Namespace) -> int:
    report = c.reconcile()
    if args.json:
        _print_json(report.to_wire())
        return EXIT_OK
    _print_pairs(
        [
            ("adopted", report.adopted),
            ("recreated", report.recreated),
            ("removed", report.removed),
            ("released", report.released),
            ("errors", len(report.errors)),
        ]
    )
    for error in report.errors:
        print(f"  {error}")
    return EXIT_OK


def _cmd_cluster(c: Client, args: argparse.Namespace) -> int:
    from overlayd.cluster.view import print_cluster

    resp = c.cluster_status()
    if args.json:
        _print_json(resp.to_wire())
    else:
        print_cluster(resp)
    return EXIT_OK


def _cmd_nat_tick(c: Client, args: argparse.Namespace) -> int:
    c.nat_tick()
    return _ok(args, "NAT refreshed")


def _cmd_shutdown(c: Client, args: argparse.Namespace) -> int:
    c.shutdown()
    return _ok(args, "overlayd is shutting down")


def _cmd_call(c: Client, args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.request)
    except json.JSONDecodeError as exc:
        raise _UsageError(f"the request is not valid JSON: {exc}") from None
    request = _decode_request(data)
    try:
        response = c.call(request)
    except RemoteError as exc:
        _print_json(p.ErrResponse(message=exc.message).to_wire())
        _err(f"overlayctl: {request.op}: {exc.message}")
        return EXIT_ERR
    _print_json(response.to_wire())
    return EXIT_OK


_COMMANDS: Final[dict[str, Callable[[Client, argparse.Namespace], int]]] = {
    "status": _cmd_status,
    "attach": _cmd_attach,
    "detach": _cmd_detach,
    "peers": _cmd_peers,
    "dns": _cmd_dns,
    "ports": _cmd_ports,
    "drivers": _cmd_drivers,
    "state": _cmd_state,
    "gc": _cmd_gc,
    "reconcile": _cmd_reconcile,
    "cluster": _cmd_cluster,
    "nat-tick": _cmd_nat_tick,
    "shutdown": _cmd_shutdown,
    "call": _cmd_call,
    **cli_observe.OVERLAYCTL_COMMANDS,  # events, topology
}


def _describe_validation(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    loc = ".".join(str(x) for x in first["loc"])
    ctx = first.get("ctx") or {}
    message = str(ctx["error"]) if "error" in ctx else first["msg"]
    return f"{loc}: {message}" if loc else message


def overlayctl_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``overlayctl``; returns the exit code (see ``--help``)."""
    parser = build_overlayctl_parser()
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    command = _COMMANDS[args.command]
    try:
        client = Client(args.socket, timeout=args.timeout, connect_attempts=3)
    except OverlaydError as exc:
        _err(f"overlayctl: {exc}")
        return EXIT_CONNECT
    try:
        return command(client, args)
    except _UsageError as exc:
        _err(f"overlayctl: {exc}")
        return EXIT_USAGE
    except ValidationError as exc:
        _err(f"overlayctl: invalid argument: {_describe_validation(exc)}")
        return EXIT_USAGE
    except p.ProtocolError as exc:
        _err(f"overlayctl: invalid request: {exc}")
        return EXIT_USAGE
    except RemoteError as exc:
        _err(f"overlayctl: {args.command}: {exc.message}")
        return EXIT_ERR
    except RequestTimeout as exc:
        _err(f"overlayctl: {exc}")
        return EXIT_TIMEOUT
    except (ConnectError, ConnectionLost) as exc:
        _err(f"overlayctl: {exc}")
        return EXIT_CONNECT
    except OverlaydError as exc:
        _err(f"overlayctl: {exc}")
        return EXIT_ERR
    finally:
        client.close()
