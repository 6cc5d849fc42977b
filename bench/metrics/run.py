"""Attach latency during an attach storm, with and without a Prometheus scraper.

Run (no root needed; the fake driver, a real daemon over IPC)::

    python bench/metrics/run.py --attaches 1000 --rounds 4

One ``overlayd serve`` on the fake driver with ``[metrics] listen`` on a free
loopback port. Each round attaches ``--attaches`` workloads one after another
(``linux_pid`` handles, so the daemon holds up to that many attachments while
it is scraped), then detaches them, once per phase:

``quiet``
   nobody scrapes;
``scraped``
   a thread scrapes ``/metrics`` every ``--interval`` seconds (default 1, 15
   times Prometheus's default rate);
``flood``
   a thread scrapes back to back, as fast as the daemon answers (the worst
   case; no Prometheus does this).

The phases run in a rotating order, round by round, so drift of the
machine's speed falls on all alike. For each phase it prints attach latency
p50, p99 and max (milliseconds, every round together) and, for the scraped
phases, the same over only the attaches that overlapped a scrape (started
before a scrape ended and ended after it started): the direct answer to "how
much does a scrape delay an attach". It also prints the scrapes' count and
p50 duration. A progress line per phase shows the storm advancing (rewritten
in place on a terminal, plain lines otherwise).

What to expect: a scrape takes no engine lock, so an attach never waits for
one; what a scrape costs an overlapping attach is CPU time (the daemon's
scrape thread and its event loop share the interpreter), a few milliseconds
with a thousand attachments.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from overlayd.client import Client
from overlayd.progress import print_progress
from overlayd.protocol import LinuxPidHandle
from overlayd.testing.daemon import setup_node
from overlayd.testing.daemon import start_daemon

CONFIG = (
    '[drivers]\nenabled = ["fake"]\n[dns]\nenabled = false\n'
    "[engine]\nhealth_interval_secs = 0\n"
    '[metrics]\nlisten = "127.0.0.1:0"\n'
)
PHASES = ("quiet", "scraped", "flood")


@dataclass
class Phase:
    #: (start, end) of each attach, perf_counter seconds
    attaches: list[tuple[float, float]] = field(default_factory=list)
    #: (start, end) of each scrape
    scrapes: list[tuple[float, float]] = field(default_factory=list)


def _scrape_loop(url: str, interval: float, stop: threading.Event, phase: Phase) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback URL
            resp.read()
        phase.scrapes.append((start, time.perf_counter()))
        if interval > 0:
            stop.wait(interval)


def _storm(c: Client, name: str, attaches: int, base: int, phase: Phase) -> None:
    handles = [LinuxPidHandle(pid=base + i) for i in range(attaches)]
    progress = print_progress(f"{name}: attaches", attaches)
    for handle in handles:
        start = time.perf_counter()
        c.attach_container(handle, "web")
        phase.attaches.append((start, time.perf_counter()))
        progress.step()
    progress.done()
    for handle in handles:
        c.detach_container(handle)


def _overlapping(phase: Phase) -> list[float]:
    """Latencies (ms) of the attaches that overlapped a scrape."""
    out: list[float] = []
    scrapes = sorted(phase.scrapes)
    i = 0
    for start, end in phase.attaches:
        while i < len(scrapes) and scrapes[i][1] < start:
            i += 1
        if i < len(scrapes) and scrapes[i][0] <= end:
            out.append((end - start) * 1000.0)
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "n": len(values),
        "p50_ms": statistics.median(values),
        "p99_ms": _pct(values, 0.99),
        "max_ms": max(values),
    }


def run(attaches: int = 1000, rounds: int = 3, interval: float = 1.0) -> dict[str, Any]:
    """Run the benchmark; print and return the figures."""
    root = Path(tempfile.mkdtemp(prefix="obm-", dir="/tmp"))
    daemon = start_daemon(root, CONFIG)
    phases = {name: Phase() for name in PHASES}
    try:
        url = daemon.metrics_url()
        with Client(str(daemon.socket), timeout=30) as c:
            setup_node(c, 1, deployment="bench", cluster_cidr="10.90.0.0/16")
            base = 10_000
            for r in range(rounds):
                order = PHASES[r % 3 :] + PHASES[: r % 3]
                for name in order:
                    phase = phases[name]
                    stop = threading.Event()
                    scraper = None
                    if name != "quiet":
                        every = interval if name == "scraped" else 0.0
                        scraper = threading.Thread(
                            target=_scrape_loop, args=(url, every, stop, phase), daemon=True
                        )
                        scraper.start()
                    try:
                        _storm(c, f"round {r + 1}/{rounds} {name}", attaches, base, phase)
                    finally:
                        stop.set()
                        if scraper is not None:
                            scraper.join(30)
                    base += attaches
    finally:
        code = daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    figures: dict[str, Any] = {"exit_code": code, "attaches": attaches, "rounds": rounds}
    for name, phase in phases.items():
        scrape_ms = [(e - s) * 1000.0 for s, e in phase.scrapes]
        figures[name] = {
            "all": _stats([(e - s) * 1000.0 for s, e in phase.attaches]),
            "overlapping": _stats(_overlapping(phase)),
            "scrapes": len(phase.scrapes),
            "scrape_p50_ms": statistics.median(scrape_ms) if scrape_ms else None,
        }
    _print(figures)
    return figures


def _print(figures: dict[str, Any]) -> None:
    print(
        f"{'phase':<8} {'attaches':<12} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'scrapes':>8} {'scrape p50':>10}"
    )
    for name in PHASES:
        f = figures[name]
        for which in ("all", "overlapping"):
            s = f[which]
            if s is None:
                continue
            scrape = f"{f['scrape_p50_ms']:.2f}" if f["scrape_p50_ms"] is not None else "-"
            print(
                f"{name:<8} {which:<12} {s['n']:>6} {s['p50_ms']:>8.3f} {s['p99_ms']:>8.3f} "
                f"{s['max_ms']:>8.3f} {f['scrapes']:>8} {scrape:>10}"
            )
    quiet = figures["quiet"]["all"]
    for name in ("scraped", "flood"):
        over = figures[name]["overlapping"]
        if over is not None:
            d50 = over["p50_ms"] - quiet["p50_ms"]
            d99 = over["p99_ms"] - quiet["p99_ms"]
            print(
                f"{name}: an attach overlapping a scrape took {d50:+.3f} ms at p50 "
                f"and {d99:+.3f} ms at p99 against quiet"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--attaches", type=int, default=1000, help="attaches per phase and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each runs every phase)")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between scrapes in 'scraped'"
    )
    args = parser.parse_args(argv)
    figures = run(args.attaches, args.rounds, args.interval)
    return 0 if figures["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
