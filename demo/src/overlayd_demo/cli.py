"""The ``overlayd demo`` command: its arguments, and which demo runs.

``overlayd demo`` (core's CLI) imports this distribution lazily and hands it
the arguments after ``demo``: :func:`main`. As root with the Linux drivers
installed it runs :class:`overlayd_demo.real.RealDemo`; otherwise (or with
``--fake``) :func:`overlayd_demo.fake.fake_demo`; ``--cluster`` runs
:mod:`overlayd_demo.cluster`; ``--cleanup`` runs :func:`overlayd_demo.cleanup.cleanup`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from overlayd.errors import OverlaydError
from overlayd_demo.common import DemoFailed
from overlayd_demo.common import interruptible
from overlayd_demo.common import say
from overlayd_demo.fake import fake_demo

__all__ = ["build_parser", "main", "missing_prerequisites"]


def missing_prerequisites() -> list[str]:
    """What the real demo needs that this host lacks, each with how to get it."""
    if sys.platform != "linux":
        return ["Linux (the real demo uses network namespaces)"]
    else:  # one branch per platform keeps mypy --platform win32 quiet
        missing: list[str] = []
        if os.geteuid() != 0:
            missing.append("root privileges (run it with sudo)")
        for module, dist in (
            (
                "overlayd_linux_bridge",
                "the linux_bridge driver (pip install -e drivers/linux_bridge)",
            ),
            ("overlayd_wireguard", "the wireguard driver (pip install -e drivers/wireguard)"),
            ("overlayd_linux", "overlayd's Linux mechanism (pip install -e drivers/linux_common)"),
            ("pyroute2", "pyroute2 (pip install pyroute2)"),
        ):
            if importlib.util.find_spec(module) is None:
                missing.append(dist)
        if shutil.which("wireguard-go") is None:
            missing.append("wireguard-go (apt-get install wireguard-go)")
        if shutil.which("sleep") is None:
            missing.append("sleep (apt-get install coreutils)")
        if not Path("/dev/net/tun").exists():
            missing.append("/dev/net/tun (modprobe tun; in a container: --device /dev/net/tun)")
        if not Path("/proc/self/ns/net").exists():
            missing.append("network namespaces (a kernel with CONFIG_NET_NS)")
        return missing


def build_parser() -> argparse.ArgumentParser:
    """The ``overlayd demo`` command line (``overlayd demo --help``)."""
    parser = argparse.ArgumentParser(
        prog="overlayd demo",
        description="Two nodes, an encrypted overlay, containers resolving and pinging each "
        "other. As root it builds everything for real in network namespaces and removes it "
        "afterwards; without root it runs the same scenario on the fake driver.",
        epilog="exit codes: 0 success; 1 a step failed or the ping got no reply; "
        "2 usage error; 130 interrupted (everything was torn down).",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the nodes, daemons and containers running for exploration with overlayctl",
    )
    parser.add_argument(
        "--fake", action="store_true", help="run on the fake driver (no root, no packets)"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="three nodes that form the mesh themselves through a real etcd (cluster mode)",
    )
    parser.add_argument(
        "--cleanup",
        metavar="PREFIX",
        help="remove what a --keep run left (the ovd-demo-xxxx prefix it printed) and exit",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cluster:  # cluster mode's demo lives in its own module
        if args.keep or args.cleanup:
            parser.error("--cluster takes only --fake")
        if sys.platform == "win32":
            say("overlayd demo --cluster is not supported on Windows")
            return 2
        else:
            from overlayd_demo.cluster import main as cluster_demo

            return cluster_demo(fake=args.fake)
    if args.cleanup:
        if args.keep or args.fake:
            parser.error("--cleanup goes alone")
        if (missing := missing_prerequisites()) and "root privileges (run it with sudo)" in missing:
            say("cleaning up needs root privileges (run it with sudo)")
            return 1
        from overlayd_demo.cleanup import cleanup

        try:
            cleanup(args.cleanup)
        except DemoFailed as exc:
            say(str(exc))
            return 2
        return 0
    missing = [] if args.fake else missing_prerequisites()
    if args.fake or missing:
        if missing:
            say("the real demo needs what this host lacks:", step=True)
            for item in missing:
                say(f"- {item}")
            if args.keep:
                say("(--keep has no effect on the fake driver)")
        return fake_demo()
    from overlayd_demo.real import RealDemo  # Linux only

    demo = RealDemo(keep=args.keep)
    code = 1
    with interruptible(demo.teardown):
        try:
            code = demo.run()
        except KeyboardInterrupt:
            say("interrupted", step=True)
            demo.keep = False
            code = 130
        except (OverlaydError, OSError) as exc:
            say(f"the demo failed: {exc}", step=True)
            demo.print_logs()
            demo.keep = False
            code = 1
    return code
