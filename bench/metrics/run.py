"""Attach latency during an attach storm, with and without a Prometheus scraper.

Run (no root needed; the fake driver, a real daemon over IPC)::

    python bench/metrics/run.py --attaches 2000 --rounds 4

One ``overlayd serve`` on the fake driver with ``[metrics] listen`` on a free
loopback port. Each round attaches ``--attaches`` workloads one after another
(``linux_pid`` handles), then detaches them, in two phases: ``quiet`` (no
scraper) and ``scraped`` (a thread scrapes ``/metrics`` in a loop, as fast as
the daemon answers: far more often than any Prometheus would). The phases
alternate round by round, the order flipping each round, so drift of the
machine's speed falls on both alike. Prints attach latency p50/p99 per phase
(milliseconds, every round's samples together), the difference, and how many
scrapes ran and how long one took (p50).

What it shows: a scrape takes no engine lock, so it never waits for an
attach nor holds one up; what it costs an attach is CPU (the daemon's scrape
thread competes with the event loop for the interpreter), visible as the
p99 difference.
"""

from __future__ import annotations

import argparse
import re
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
from overlayd.protocol import LinuxPidHandle
from overlayd.testing.daemon import DaemonProcess
from overlayd.testing.daemon import start_daemon

CONFIG = (
    '[drivers]\nenabled = ["fake"]\n[dns]\nenabled = false\n'
    "[engine]\nhealth_interval_secs = 0\n"
    '[metrics]\nlisten = "127.0.0.1:0"\n'
)


@dataclass
class Phase:
    attach_ms: list[float] = field(default_factory=list)
    scrapes: int = 0
    scrape_ms: list[float] = field(default_factory=list)


def metrics_url(daemon: DaemonProcess, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"serving metrics on (http://\S+/metrics)", daemon.log_text())
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise RuntimeError(f"the daemon logged no metrics URL:\n{daemon.log_text()}")


def _scrape_loop(url: str, stop: threading.Event, phase: Phase) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback URL
            resp.read()
        phase.scrape_ms.append((time.perf_counter() - start) * 1000.0)
        phase.scrapes += 1


def _storm(c: Client, attaches: int, base: int, phase: Phase) -> None:
    handles = [LinuxPidHandle(pid=base + i) for i in range(attaches)]
    for handle in handles:
        start = time.perf_counter()
        c.attach_container(handle, "web")
        phase.attach_ms.append((time.perf_counter() - start) * 1000.0)
    for handle in handles:
        c.detach_container(handle)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(attaches: int = 2000, rounds: int = 4) -> dict[str, Any]:
    """Run the benchmark; print and return the figures."""
    root = Path(tempfile.mkdtemp(prefix="obm-", dir="/tmp"))
    daemon = start_daemon(root, CONFIG)
    phases = {"quiet": Phase(), "scraped": Phase()}
    try:
        url = metrics_url(daemon)
        with Client(str(daemon.socket), timeout=30) as c:
            c.set_local_node_id(1)
            c.setup_global_overlay(
                deployment="bench",
                instance_id="n1",
                cluster_cidr="10.90.0.0/16",
                wg_port=51820,
                nat_enabled=False,
            )
            c.setup_service_overlay("web")
            base = 10_000
            for r in range(rounds):
                order = ("quiet", "scraped") if r % 2 == 0 else ("scraped", "quiet")
                for name in order:
                    phase = phases[name]
                    stop = threading.Event()
                    scraper = None
                    if name == "scraped":
                        scraper = threading.Thread(
                            target=_scrape_loop, args=(url, stop, phase), daemon=True
                        )
                        scraper.start()
                    try:
                        _storm(c, attaches, base, phase)
                    finally:
                        stop.set()
                        if scraper is not None:
                            scraper.join(30)
                    base += attaches
                    print(f"round {r + 1}/{rounds} {name}: {attaches} attaches", flush=True)
    finally:
        code = daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    figures: dict[str, Any] = {"exit_code": code, "attaches": attaches, "rounds": rounds}
    for name, phase in phases.items():
        figures[name] = {
            "p50_ms": statistics.median(phase.attach_ms),
            "p99_ms": _pct(phase.attach_ms, 0.99),
            "samples": len(phase.attach_ms),
            "scrapes": phase.scrapes,
            "scrape_p50_ms": statistics.median(phase.scrape_ms) if phase.scrape_ms else None,
        }
    q, s = figures["quiet"], figures["scraped"]
    print(f"{'phase':<8} {'attaches':>8} {'p50 ms':>8} {'p99 ms':>8} {'scrapes':>8}")
    for name in ("quiet", "scraped"):
        f = figures[name]
        print(
            f"{name:<8} {f['samples']:>8} {f['p50_ms']:>8.3f} {f['p99_ms']:>8.3f} {f['scrapes']:>8}"
        )
    print(
        f"scraping adds {s['p50_ms'] - q['p50_ms']:+.3f} ms at p50, "
        f"{s['p99_ms'] - q['p99_ms']:+.3f} ms at p99; "
        f"one scrape took {s['scrape_p50_ms'] or 0:.2f} ms (p50)"
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--attaches", type=int, default=2000, help="attaches per phase and round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (each runs both phases)")
    args = parser.parse_args(argv)
    figures = run(args.attaches, args.rounds)
    return 0 if figures["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
