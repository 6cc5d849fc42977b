"""``overlayd``: run the daemon (``serve``), list the installed drivers, run the demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import Final

from overlayd.errors import ConfigError
from overlayd.errors import OverlaydError

if TYPE_CHECKING:
    from overlayd.config import DaemonConfig

from overlayd.cli.common import EXIT_CONNECT
from overlayd.cli.common import EXIT_ERR
from overlayd.cli.common import EXIT_OK
from overlayd.cli.common import EXIT_USAGE
from overlayd.cli.common import err
from overlayd.cli.common import new_parser
from overlayd.cli.common import print_table
from overlayd.cli.observe import add_serve_flags
from overlayd.cli.observe import apply_serve_flags

__all__ = ["build_overlayd_parser", "event_loop_factory", "overlayd_main", "serve_config"]

_OVERLAYD_EXIT_HELP: Final = """\
exit codes (serve):
  0  stopped gracefully (SIGTERM, SIGINT or the shutdown op)
  1  the engine or a driver failed
  2  usage or configuration error
  3  another daemon is serving on the socket
"""


def build_overlayd_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "overlayd",
        "overlayd: the node's overlay network plane daemon (ZLayer-compatible IPC).",
        _OVERLAYD_EXIT_HELP,
    )
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
    serve.add_argument(
        "--event-loop",
        choices=["asyncio", "uvloop"],
        help="the daemon's event loop (uvloop: pip install 'overlayd[uvloop]')",
    )
    serve.add_argument("--no-dns", action="store_true", help="do not run the built-in DNS server")
    add_serve_flags(serve)  # --metrics

    drivers = sub.add_parser("drivers", help="list the installed drivers")
    drivers.add_argument("--json", action="store_true", help="print JSON")

    demo = sub.add_parser("demo", help="run the guided demo", add_help=False)
    demo.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _serve(args: argparse.Namespace) -> int:
    if sys.platform == "win32":
        err("overlayd: serving on Windows (named pipe) is not supported yet")
        return EXIT_USAGE
    else:
        from overlayd.server import SocketInUse
        from overlayd.server import run_daemon

        return _serve_posix(args, run_daemon, SocketInUse)


def serve_config(args: argparse.Namespace) -> DaemonConfig:
    """The daemon's configuration from ``serve``'s flags: the file, then the flags over it.

    :raises ConfigError: the file or a flag is invalid.
    """
    from overlayd.config import load_config

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
        event_loop=args.event_loop,
    )
    if args.no_dns:
        config = config.model_copy(update={"dns": config.dns.model_copy(update={"enabled": False})})
    return apply_serve_flags(args, config)


def _serve_posix(
    args: argparse.Namespace,
    run_daemon: Callable[[DaemonConfig], Coroutine[Any, Any, int]],
    SocketInUse: type[Exception],
) -> int:
    from overlayd.logging import configure_logging

    try:
        config = serve_config(args)
    except ConfigError as exc:
        err(f"overlayd: {exc}")
        return EXIT_USAGE
    configure_logging(config.log_format, config.log_level)
    try:
        loop_factory = event_loop_factory(config.event_loop)
    except ConfigError as exc:
        err(f"overlayd: {exc}")
        return EXIT_USAGE
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(run_daemon(config))
    except SocketInUse as exc:
        err(f"overlayd: {exc}")
        return EXIT_CONNECT
    except ConfigError as exc:
        err(f"overlayd: {exc}")
        return EXIT_USAGE
    except (OverlaydError, OSError) as exc:
        err(f"overlayd: cannot run: {exc}")
        return EXIT_ERR
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        # The daemon has stopped; a late SIGTERM/SIGINT must not turn a clean
        # exit into death by signal while the interpreter winds down.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory of ``event_loop`` (``None``: the standard library's loop).

    :raises ConfigError: uvloop was asked for and is not installed.
    """
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        raise ConfigError(
            "event_loop = uvloop needs uvloop, which is not installed "
            "(pip install 'overlayd[uvloop]'), or use event_loop = asyncio"
        ) from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


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
        print_table(
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
        err(
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
