"""What both command lines share: exit codes, usage errors and output helpers.

Tables are aligned columns (``(none)`` when empty); ``--json`` output is
indented JSON of the protocol's wire form.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any
from typing import Final
from typing import Protocol
from typing import TextIO
from typing import TypeVar

from overlayd import __version__
from overlayd import protocol as p

EXIT_OK: Final = 0
#: overlayctl: the daemon answered ``err``; overlayd: it failed to start or run.
EXIT_ERR: Final = 1
#: Usage or configuration error (bad flags, bad TOML, invalid values).
EXIT_USAGE: Final = 2
#: overlayctl: cannot connect (or the connection broke); overlayd: the socket is in use.
EXIT_CONNECT: Final = 3
#: overlayctl: the daemon did not answer within --timeout.
EXIT_TIMEOUT: Final = 4


class UsageError(Exception):
    """Bad command-line input discovered after argparse (exit 2)."""


def err(message: str) -> None:
    print(message, file=sys.stderr)


def print_table(headers: list[str], rows: list[list[str]], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if not rows:
        print("(none)", file=out)
        return
    widths = [max(len(h), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    for row in rows:
        cells = (str(c).ljust(w) for c, w in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)


def print_pairs(pairs: list[tuple[str, object]]) -> None:
    pairs = [(k, v) for k, v in pairs if v is not None]
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        print(f"{key + ':':<{width + 1}} {value}")


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def handle_label(handle: p.AnyHandle) -> str:
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


def ago(unix: int) -> str:
    if unix <= 0:
        return "never"
    import time

    secs = max(0, int(time.time()) - unix)
    if secs < 120:
        return f"{secs}s ago"
    if secs < 7200:
        return f"{secs // 60}m ago"
    return f"{secs // 3600}h ago"


def ok(args: argparse.Namespace, text: str) -> int:
    if args.json:
        print_json({"result": "ok"})
    else:
        print(text)
    return EXIT_OK


class _WireModel(Protocol):
    """A protocol model (its wire form is what ``--json`` prints)."""

    def to_wire(self) -> dict[str, Any]: ...


_M = TypeVar("_M", bound=_WireModel)


def new_parser(prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A program's parser: ``--version``, and ``epilog`` (its exit codes) kept as written."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    return parser


def show(args: argparse.Namespace, response: _M, render: Callable[[_M], None]) -> int:
    """Print ``response`` as JSON with ``--json``, else ``render(response)``; exit 0."""
    if args.json:
        print_json(response.to_wire())
    else:
        render(response)
    return EXIT_OK
