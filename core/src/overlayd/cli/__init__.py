"""Command lines: ``overlayd`` (the daemon) and ``overlayctl`` (its client).

``overlayd serve`` runs the daemon; ``overlayctl`` talks to it over the socket
and prints aligned tables (``--json`` for scripts). Both are argparse programs
whose entry points return the process exit code.

The package: :mod:`~overlayd.cli.overlayd` (the daemon's command line),
:mod:`~overlayd.cli.overlayctl` (the client's), :mod:`~overlayd.cli.common`
(exit codes and output helpers both use). The console scripts point here
(``overlayd.cli:overlayd_main``, ``overlayd.cli:overlayctl_main``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from overlayd import lazy_attributes
from overlayd.cli.common import EXIT_CONNECT
from overlayd.cli.common import EXIT_ERR
from overlayd.cli.common import EXIT_OK
from overlayd.cli.common import EXIT_TIMEOUT
from overlayd.cli.common import EXIT_USAGE

if TYPE_CHECKING:
    from overlayd.cli.overlayctl import build_overlayctl_parser
    from overlayd.cli.overlayctl import overlayctl_main
    from overlayd.cli.overlayd import build_overlayd_parser
    from overlayd.cli.overlayd import overlayd_main

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

# Each command line is imported when it is asked for: the daemon's start does
# not load overlayctl and the client it is built on (about 50 ms of a start).
_LAZY = {
    "build_overlayctl_parser": "overlayd.cli.overlayctl",
    "overlayctl_main": "overlayd.cli.overlayctl",
    "build_overlayd_parser": "overlayd.cli.overlayd",
    "overlayd_main": "overlayd.cli.overlayd",
}


__getattr__ = lazy_attributes(__name__, _LAZY, globals())
