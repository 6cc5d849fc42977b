"""The wireguard driver's netlink calls in a named namespace: how long each takes.

Run as root: ``python bench/wg/netns_links.py [--rounds 50]``.

The wireguard driver acts in the namespace its ``netns`` option names. Each
of its link and route calls opens one ``IPRoute`` there; this times, as
medians and p90 over ``--rounds`` calls, in one throwaway namespace
``owgn-*`` holding a veth (the CI kernel has no WireGuard module, and a veth
takes the same link calls):

* opening and closing one ``IPRoute`` in the namespace, through pyroute2's
  forked helper (``IPRoute(netns=name)``) and through a thread that entered
  the namespace (:func:`overlayd_linux.netlink.iproute_in`), side by side;
* the driver's calls: ``PyRoute2Links.wait_link`` + ``configure`` (MTU, two
  addresses, up), ``PyRoute2HostNet.add_routes`` + ``delete_routes`` (one
  prefix) and ``PyRoute2HostNet.wireguard_links``.

Nothing outside the namespace is touched; it is deleted at the end, also on
failure.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from overlayd_linux.netlink import iproute_in
from overlayd_wireguard.hostnet import PyRoute2HostNet
from overlayd_wireguard.links import PyRoute2Links


def _timed(rounds: int, call: Callable[[], object]) -> tuple[float, float]:
    call()  # warm up (imports, first socket)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9) - 1]


def _forked(name: str) -> None:
    with IPRoute(netns=name) as ipr:
        ipr.link_lookup(ifname="lo")


def _pinned(name: str) -> None:
    with iproute_in(name) as ipr:
        ipr.link_lookup(ifname="lo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root: it creates a network namespace", file=sys.stderr)
        return 2
    name = f"owgn-{secrets.token_hex(3)}"
    pr_netns.create(name)
    try:
        with iproute_in(name) as ipr:
            ipr.link("add", ifname="owgb0", kind="veth", peer={"ifname": "owgb1"})
        links = PyRoute2Links()
        hostnet = PyRoute2HostNet()

        def configure() -> None:
            links.wait_link("owgb0", netns=name, timeout=2)
            links.configure(
                "owgb0", mtu=1420, addresses=["10.243.0.1/24", "fd00:243::1/64"], netns=name
            )

        def routes() -> None:
            hostnet.add_routes("owgb0", ["10.244.0.0/16"], netns=name)
            hostnet.delete_routes("owgb0", ["10.244.0.0/16"], netns=name)

        rows = [
            ("IPRoute(netns=name), forked helper", lambda: _forked(name)),
            ("iproute_in(name), pinned thread", lambda: _pinned(name)),
            ("links: wait_link + configure", configure),
            ("hostnet: add_routes + delete_routes", routes),
            ("hostnet: wireguard_links", lambda: hostnet.wireguard_links(netns=name)),
        ]
        print(f"{'call':40} {'median ms':>10} {'p90 ms':>10}   ({args.rounds} rounds)")
        for label, call in rows:
            median, p90 = _timed(args.rounds, call)
            print(f"{label:40} {median:10.2f} {p90:10.2f}")
    finally:
        pr_netns.remove(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
