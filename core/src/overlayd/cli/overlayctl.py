"""``overlayctl``: talk to a running daemon over its socket.

Each command is one function ``_cmd_<name>(client, args) -> exit code`` in
:data:`_COMMANDS`; it calls the blocking :class:`~overlayd.client.Client` and
prints a table, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from collections.abc import Sequence
from functools import partial
from typing import Final

from pydantic import ValidationError

from overlayd import protocol as p
from overlayd.cli.common import EXIT_CONNECT
from overlayd.cli.common import EXIT_ERR
from overlayd.cli.common import EXIT_OK
from overlayd.cli.common import EXIT_TIMEOUT
from overlayd.cli.common import EXIT_USAGE
from overlayd.cli.common import UsageError
from overlayd.cli.common import ago
from overlayd.cli.common import err
from overlayd.cli.common import handle_label
from overlayd.cli.common import new_parser
from overlayd.cli.common import ok
from overlayd.cli.common import print_json
from overlayd.cli.common import print_pairs
from overlayd.cli.common import print_table
from overlayd.cli.common import show
from overlayd.cli.observe import OVERLAYCTL_COMMANDS as OBSERVE_COMMANDS
from overlayd.cli.observe import add_overlayctl_commands
from overlayd.client import Client
from overlayd.client import ConnectError
from overlayd.client import ConnectionLost
from overlayd.client import RemoteError
from overlayd.client import RequestTimeout
from overlayd.errors import OverlaydError
from overlayd.transport import DEFAULT_SOCKET

__all__ = ["build_overlayctl_parser", "overlayctl_main"]

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
        raise UsageError("--ip only goes with --container")
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
            raise UsageError(f"handle {spec!r} is not valid JSON: {exc}") from None
        frame = {"op": "detach_container", "handle": data}
        request = _decode_request(frame)
        assert isinstance(request, p.DetachContainerRequest)
        return request.handle
    kind, sep, value = spec.partition(":")
    if not sep or not value:
        raise UsageError(
            f"handle {spec!r} is not KIND:VALUE (pid:N, netns:PATH, container:ID, guest:ID)"
        )
    if kind == "pid":
        if not (value.isascii() and value.isdigit()):
            raise UsageError(f"handle {spec!r}: the pid must be a positive integer")
        return p.LinuxPidHandle(pid=int(value))
    if kind == "netns":
        return p.NetnsHandle(path=value)
    if kind == "container":
        return p.WindowsContainerHandle(container_id=value)
    if kind == "guest":
        return p.GuestManagedHandle(id=value)
    raise UsageError(f"handle kind {kind!r} is not pid, netns, container or guest")


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
        raise UsageError(f"invalid request: {exc}") from None
    if not isinstance(frame, p.RequestFrame):
        raise UsageError("invalid request: not a request frame")
    return frame.request


def build_overlayctl_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "overlayctl", "Control a running overlayd over its socket.", _OVERLAYCTL_EXIT_HELP
    )
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
    add_overlayctl_commands(sub)  # events, topology (overlayd.cli.observe)

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
    return show(args, c.status(), _print_status)


def _print_status(st: p.StatusResponse) -> None:
    print_pairs(
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
        print_table(
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


def _peer_table(st: p.StatusResponse) -> None:
    print_table(
        ["PUBLIC KEY", "ENDPOINT", "ALLOWED IPS", "HANDSHAKE"],
        [
            [
                peer.public_key,
                peer.endpoint or "-",
                peer.allowed_ips or "-",
                ago(peer.last_handshake_unix_secs),
            ]
            for peer in st.peers
        ],
    )


def _cmd_attach(c: Client, args: argparse.Namespace) -> int:
    handle = _handle_from_args(args)
    response = c.attach_container(
        handle,
        args.service,
        join_global=args.join_global,
        dns_server=args.dns_server,
        dns_domain=args.dns_domain,
    )
    return show(args, response, partial(_print_attached, handle_label(handle), args.service))


def _print_attached(
    label: str, service: str, response: p.AttachedResponse | p.GuestConfigResponse
) -> None:
    if isinstance(response, p.AttachedResponse):
        print_pairs(
            [
                ("handle", label),
                ("service", service),
                ("ip", response.ip),
                ("namespace guid", response.namespace_guid),
            ]
        )
        return
    print_pairs(
        [
            ("handle", label),
            ("overlay ip", f"{response.overlay_ip}/{response.prefix_len}"),
            ("public key", response.public_key),
            ("private key", response.private_key),
            ("listen port", response.listen_port),
            ("dns server", response.dns_server),
            ("dns domain", response.dns_domain),
        ]
    )
    print()
    print_table(
        ["PEER PUBLIC KEY", "ENDPOINT", "ALLOWED IPS", "KEEPALIVE"],
        [
            [s.public_key, s.endpoint or "-", s.allowed_ips, str(s.persistent_keepalive_secs)]
            for s in response.peers
        ],
    )


def _cmd_detach(c: Client, args: argparse.Namespace) -> int:
    handle = _handle_from_args(args)
    c.detach_container(handle)
    return ok(args, f"detached {handle_label(handle)}")


def _cmd_peers(c: Client, args: argparse.Namespace) -> int:
    action = args.peers_command or "list"
    if action == "list":
        st = c.status()
        if args.json:
            print_json({"peers": [peer.to_wire() for peer in st.peers]})
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
        return ok(args, f"peer {args.public_key} set")
    if action == "remove":
        c.remove_peer(args.public_key, service=args.service)
        return ok(args, f"peer {args.public_key} removed")
    if action == "allow":
        c.add_allowed_ip(args.public_key, args.cidr, service=args.service)
        return ok(args, f"{args.cidr} allowed for {args.public_key}")
    c.remove_allowed_ip(args.public_key, args.cidr, service=args.service)
    return ok(args, f"{args.cidr} no longer allowed for {args.public_key}")


def _cmd_dns(c: Client, args: argparse.Namespace) -> int:
    if args.dns_command == "register":
        c.register_dns(args.name, args.ip)
        return ok(args, f"{args.name} -> {args.ip}")
    c.unregister_dns(args.name)
    return ok(args, f"{args.name} unregistered")


def _cmd_ports(c: Client, args: argparse.Namespace) -> int:
    ip, sep, port = args.container.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        err(f"overlayctl: {args.container!r} is not CONTAINER_IP:PORT")
        return EXIT_USAGE
    ip = ip.strip("[]")
    call = c.map_port if args.ports_command == "map" else c.unmap_port
    call(args.protocol, args.host_port, ip, int(port), host_ip=args.host_ip)
    arrow = "->" if args.ports_command == "map" else "-/->"
    return ok(args, f"{args.protocol}/{args.host_port} {arrow} {ip}:{port}")


def _cmd_drivers(c: Client, args: argparse.Namespace) -> int:
    return show(args, c.hello("overlayctl"), _print_hello)


def _print_hello(hello: p.HelloResponse) -> None:
    print_pairs(
        [
            ("server version", hello.server_version),
            ("protocol version", hello.protocol_version),
            ("ops", len(hello.ops)),
        ]
    )
    print()
    print_table(
        ["DRIVER", "API", "PLATFORMS", "CAPABILITIES"],
        [
            [d.name, str(d.api), ",".join(d.platforms) or "any", ",".join(d.capabilities)]
            for d in hello.drivers
        ],
    )


def _cmd_state(c: Client, args: argparse.Namespace) -> int:
    attachments = c.list_attachments(args.service)
    leases = c.list_leases(args.pool)
    if args.json:
        print_json(
            {
                "attachments": [a.to_wire() for a in attachments],
                "leases": [lease.to_wire() for lease in leases],
            }
        )
        return EXIT_OK
    print("attachments:")
    print_table(
        ["HANDLE", "SERVICE", "IP", "GLOBAL IP", "DRIVER", "INTERFACES"],
        [
            [
                handle_label(a.handle),
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
    print_table(
        ["IP", "POOL", "OWNER"],
        [[lease.ip, lease.pool, lease.owner] for lease in leases],
    )
    return EXIT_OK


def _cmd_gc(c: Client, args: argparse.Namespace) -> int:
    live = [_parse_handle_spec(spec) for spec in args.live]
    report = c.gc(live, dry_run=args.dry_run)
    return show(args, report, partial(_print_gc, args.dry_run))


def _print_gc(dry_run: bool, report: p.GcReportResponse) -> None:
    verb = "would release" if dry_run else "released"
    print(f"{verb} {len(report.released)} attachment(s); {report.kept} kept")
    for handle in report.released:
        print(f"  {handle_label(handle)}")


def _cmd_reconcile(c: Client, args: argparse.Namespace) -> int:
    return show(args, c.reconcile(), _print_reconcile)


def _print_reconcile(report: p.ReconcileReportResponse) -> None:
    print_pairs(
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


def _cmd_cluster(c: Client, args: argparse.Namespace) -> int:
    from overlayd.cluster.view import print_cluster

    return show(args, c.cluster_status(), print_cluster)


def _cmd_nat_tick(c: Client, args: argparse.Namespace) -> int:
    c.nat_tick()
    return ok(args, "NAT refreshed")


def _cmd_shutdown(c: Client, args: argparse.Namespace) -> int:
    c.shutdown()
    return ok(args, "overlayd is shutting down")


def _cmd_call(c: Client, args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.request)
    except json.JSONDecodeError as exc:
        raise UsageError(f"the request is not valid JSON: {exc}") from None
    request = _decode_request(data)
    try:
        response = c.call(request)
    except RemoteError as exc:
        print_json(p.ErrResponse(message=exc.message).to_wire())
        err(f"overlayctl: {request.op}: {exc.message}")
        return EXIT_ERR
    print_json(response.to_wire())
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
    **OBSERVE_COMMANDS,  # events, topology
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
        err(f"overlayctl: {exc}")
        return EXIT_CONNECT
    try:
        return command(client, args)
    except ValidationError as exc:
        err(f"overlayctl: invalid argument: {_describe_validation(exc)}")
        return EXIT_USAGE
    except p.ProtocolError as exc:
        err(f"overlayctl: invalid request: {exc}")
        return EXIT_USAGE
    except RemoteError as exc:
        err(f"overlayctl: {args.command}: {exc.message}")
        return EXIT_ERR
    except (UsageError, OverlaydError) as exc:
        err(f"overlayctl: {exc}")
        return _exit_code(exc)
    finally:
        client.close()


def _exit_code(exc: UsageError | OverlaydError) -> int:
    """The exit code for an error whose message is printed as it is."""
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, RequestTimeout):
        return EXIT_TIMEOUT
    if isinstance(exc, ConnectError | ConnectionLost):
        return EXIT_CONNECT
    return EXIT_ERR
