"""The observability parts of the command line.

``overlayctl events`` (follow the daemon's events), ``overlayctl topology``
(the mesh as Graphviz DOT, SVG or PNG) and ``overlayd serve --metrics``.
:mod:`overlayd.cli.overlayctl` registers the first two with
:func:`add_overlayctl_commands` and :data:`OVERLAYCTL_COMMANDS`;
:mod:`overlayd.cli.overlayd` the flag with :func:`add_serve_flags` and
:func:`apply_serve_flags`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Final

from overlayd import protocol as p
from overlayd.observe import event_line
from overlayd.topology import FORMATS
from overlayd.topology import build_mesh
from overlayd.topology import render
from overlayd.topology import to_dot

if TYPE_CHECKING:
    from overlayd.client import Client
    from overlayd.config import DaemonConfig

__all__ = [
    "EXIT_INTERRUPTED",
    "OVERLAYCTL_COMMANDS",
    "add_overlayctl_commands",
    "add_serve_flags",
    "apply_serve_flags",
]

#: ``overlayctl events`` stopped by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED: Final = 130


def add_serve_flags(serve: argparse.ArgumentParser) -> None:
    """``overlayd serve`` flags of this module."""
    serve.add_argument(
        "--metrics",
        metavar="ADDR",
        help="serve Prometheus metrics on ADDR (host:port, e.g. 127.0.0.1:9464); "
        "sets [metrics] listen",
    )


def apply_serve_flags(args: argparse.Namespace, config: DaemonConfig) -> DaemonConfig:
    """``config`` with the flags of :func:`add_serve_flags` applied (flags win)."""
    if args.metrics is None:
        return config
    metrics = config.metrics.model_copy(update={"listen": args.metrics})
    return config.model_copy(update={"metrics": metrics})


def add_overlayctl_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``events`` and ``topology`` to overlayctl's subcommands."""
    events = sub.add_parser(
        "events",
        help="follow the daemon's events until Ctrl-C",
        description="Print the daemon's events as they happen, one per line "
        "(--json: one JSON object per line), until Ctrl-C (exit 130).",
    )
    events.add_argument(
        "--kind",
        action="append",
        dest="kinds",
        choices=p.EVENT_KINDS,
        metavar="KIND",
        help=f"only events of KIND (repeatable; default every kind: {', '.join(p.EVENT_KINDS)})",
    )
    events.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON lines"
    )
    topology = sub.add_parser(
        "topology",
        help="the mesh as a Graphviz picture (DOT, SVG, PNG)",
        description="Draw the nodes, their peers and each link's handshake age and "
        "traffic from the status of this daemon and of every --node daemon.",
    )
    topology.add_argument(
        "--node",
        action="append",
        dest="nodes",
        default=[],
        metavar="SOCKET",
        help="also ask the daemon on SOCKET (repeatable), e.g. the other nodes of a demo",
    )
    topology.add_argument(
        "--format",
        choices=FORMATS,
        default="dot",
        help="dot (text, the default), or svg/png rendered by Graphviz's dot",
    )
    topology.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write to FILE instead of stdout"
    )


def _cmd_events(c: Client, args: argparse.Namespace) -> int:
    try:
        with c.subscribe(args.kinds) as stream:
            for event in stream:
                if args.json:
                    text = json.dumps(event.to_wire(), separators=(",", ":"))
                else:
                    text = event_line(event)
                print(text, flush=True)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


def _cmd_topology(c: Client, args: argparse.Namespace) -> int:
    from overlayd.client import Client as SyncClient

    statuses = [c.status()]
    for socket_path in args.nodes:
        other = SyncClient(socket_path, timeout=args.timeout, connect_attempts=3)
        try:
            statuses.append(other.status())
        finally:
            other.close()
    data = render(to_dot(build_mesh(statuses)), args.format)
    if args.output is not None:
        args.output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


OVERLAYCTL_COMMANDS: Final[dict[str, Callable[[Client, argparse.Namespace], int]]] = {
    "events": _cmd_events,
    "topology": _cmd_topology,
}
