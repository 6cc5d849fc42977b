"""Soak: N clients of mixed operations against ``overlayd serve --driver fake`` for a while.

Run ``python bench/soak/run.py --clients 16 --seconds 1800 --warmup 120``
(``nice`` it on a shared machine). It starts the daemon on a temporary data
directory, sets up a global overlay, shared and dedicated services, then runs
``--clients`` asyncio clients, each on its own connection, each doing a
weighted mix of operations on its own handles, peers, names and ports (attach
and detach, allocate and release, peers, batches, DNS, ports, listings,
status, hello, dry-run gc, nat_tick, and now and then a reconcile). Every
operation the mix sends is valid, so any ``err`` is counted as an error.

It prints, at the end:

* errors per op (with the first message of each);
* calls, p50 and p99 latency per op;
* the daemon's RSS at start (after set-up), after the warm-up, every
  ``--sample`` seconds, and at the end, with the growth after warm-up.

This is a soak, not a timed test: it runs nowhere in CI (``bench/soak``'s
smoke test runs it for a few seconds when asked: ``pytest bench/soak``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from overlayd.client import AsyncClient
from overlayd.client import RemoteError
from overlayd.protocol import LinuxPidHandle
from overlayd.protocol import PeerChange
from overlayd.testing.daemon import start_daemon

CLUSTER = "10.200.0.0/16"
SLICE = "10.200.0.0/20"
SERVICES = ("web", "api")  # shared
DEDICATED = "db"


@dataclass
class Stats:
    """Latencies and errors per op, for all clients."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    first_error: dict[str, str] = field(default_factory=dict)

    async def timed(self, op: str, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await call
        except (RemoteError, OSError, TimeoutError) as exc:
            self.errors[op] += 1
            self.first_error.setdefault(op, f"{type(exc).__name__}: {exc}")
            return None
        finally:
            self.latencies[op].append(time.perf_counter() - started)


def _key(client: int, index: int) -> str:
    return base64.b64encode(bytes([client + 1, index + 1]) * 16).decode()


class Worker:
    """One client: its own connection, handles, peers, names and ports."""

    def __init__(self, number: int, sock: str, stats: Stats, seed: int) -> None:
        self.n = number
        self.client = AsyncClient(sock, timeout=30)
        self.stats = stats
        self.rng = random.Random(seed)
        self.pids = [100_000 + number * 100 + i for i in range(8)]
        self.attached: dict[int, str] = {}
        self.manual: list[str] = []
        self.peers: set[str] = set()
        # Allowed IPs of this client's peers: outside the node slice, one /24 each.
        self.peer_nets = [f"10.{210 + number % 40}.{i}.0/24" for i in range(8)]
        self.names: set[str] = set()
        self.ports: set[int] = set()

    def mix(self) -> list[tuple[int, Callable[[], Awaitable[None]]]]:
        return [
            (8, self.attach),
            (8, self.detach),
            (4, self.allocate_release),
            (6, self.peer),
            (3, self.batch),
            (4, self.dns),
            (3, self.port),
            (10, self.status),
            (6, self.hello),
            (3, self.listings),
            (2, self.gc),
            (2, self.nat_tick),
        ]

    async def run(self, until: float) -> None:
        mix = self.mix()
        weights = [w for w, _ in mix]
        calls = [c for _, c in mix]
        try:
            while time.monotonic() < until:
                await self.rng.choices(calls, weights)[0]()
        finally:
            await self.client.close()

    async def attach(self) -> None:
        pid = self.rng.choice(self.pids)
        service = self.rng.choice(SERVICES)
        if pid in self.attached:
            service = self.attached[pid]  # attach is idempotent per handle
        result = await self.stats.timed(
            "attach_container",
            self.client.attach_container(
                LinuxPidHandle(pid=pid), service, join_global=pid % 2 == 0
            ),
        )
        if result is not None:
            self.attached[pid] = service

    async def detach(self) -> None:
        pid = self.rng.choice(self.pids)
        await self.stats.timed(
            "detach_container", self.client.detach_container(LinuxPidHandle(pid=pid))
        )
        self.attached.pop(pid, None)

    async def allocate_release(self) -> None:
        if self.manual and self.rng.random() < 0.5:
            await self.stats.timed("release_ip", self.client.release_ip(self.manual.pop()))
            return
        ip = await self.stats.timed("allocate_ip", self.client.allocate_ip(SERVICES[0]))
        if ip is not None:
            self.manual.append(ip)

    async def peer(self) -> None:
        index = self.rng.randrange(len(self.peer_nets))
        key = _key(self.n, index)
        if key in self.peers and self.rng.random() < 0.4:
            await self.stats.timed("remove_peer", self.client.remove_peer(key))
            self.peers.discard(key)
            return
        endpoint = f"192.0.2.{index + 1}:{51820 + self.n}"
        await self.stats.timed(
            "add_peer", self.client.add_peer(key, endpoint, self.peer_nets[index], 25)
        )
        self.peers.add(key)

    async def batch(self) -> None:
        changes = [
            PeerChange(
                public_key=_key(self.n, 20 + i),
                endpoint=f"198.51.100.{i + 1}:51820",
                allowed_ips=f"10.{250 - self.n % 40}.{i}.0/24",
                remove=self.rng.random() < 0.3 or None,
            )
            for i in range(4)
        ]
        await self.stats.timed("apply_peers", self.client.apply_peers(changes, service=DEDICATED))

    async def dns(self) -> None:
        name = f"c{self.n}-{self.rng.randrange(4)}"
        if name in self.names:
            await self.stats.timed("unregister_dns", self.client.unregister_dns(name))
            self.names.discard(name)
        else:
            ip = f"10.200.4.{self.n + 1}"
            await self.stats.timed("register_dns", self.client.register_dns(name, ip))
            self.names.add(name)

    async def port(self) -> None:
        port = 20_000 + self.n * 10 + self.rng.randrange(4)
        target = f"10.200.4.{self.n + 1}"
        if port in self.ports:
            await self.stats.timed("unmap_port", self.client.unmap_port("tcp", port, target, 80))
            self.ports.discard(port)
        else:
            await self.stats.timed("map_port", self.client.map_port("tcp", port, target, 80))
            self.ports.add(port)

    async def status(self) -> None:
        await self.stats.timed("status", self.client.status())

    async def hello(self) -> None:
        await self.stats.timed("hello", self.client.hello("soak"))

    async def listings(self) -> None:
        if self.rng.random() < 0.5:
            await self.stats.timed("list_attachments", self.client.list_attachments())
        else:
            await self.stats.timed("list_leases", self.client.list_leases())

    async def gc(self) -> None:
        live = [LinuxPidHandle(pid=pid) for pid in self.pids]
        await self.stats.timed("gc", self.client.gc(live, dry_run=True))

    async def nat_tick(self) -> None:
        await self.stats.timed("nat_tick", self.client.nat_tick())


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def _setup(sock: str) -> None:
    client = AsyncClient(sock, timeout=30)
    try:
        await client.setup_global_overlay(
            deployment="soak",
            instance_id="n1",
            cluster_cidr=CLUSTER,
            slice_cidr=SLICE,
            wg_port=51820,
            nat_enabled=True,
        )
        for service in SERVICES:
            await client.setup_service_overlay(service, "shared")
        await client.setup_service_overlay(DEDICATED, "dedicated")
    finally:
        await client.close()


async def soak(
    sock: str, pid: int, clients: int, seconds: float, warmup: float, sample: float
) -> dict[str, Any]:
    await _setup(sock)
    stats = Stats()
    rss: list[tuple[float, int]] = [(0.0, _rss(pid))]
    started = time.monotonic()
    until = started + seconds
    workers = [Worker(i, sock, stats, seed=i) for i in range(clients)]
    tasks = [asyncio.create_task(w.run(until)) for w in workers]
    warm_rss = 0
    next_sample = started + sample
    while not all(t.done() for t in tasks):
        await asyncio.sleep(min(1.0, max(0.0, until - time.monotonic())) or 0.1)
        now = time.monotonic()
        if not warm_rss and now - started >= warmup:
            warm_rss = _rss(pid)
            rss.append((now - started, warm_rss))
        elif now >= next_sample:
            rss.append((now - started, _rss(pid)))
            next_sample = now + sample
    await asyncio.gather(*tasks)
    rss.append((time.monotonic() - started, _rss(pid)))
    after = [r for t, r in rss if t >= warmup] or [rss[-1][1]]
    return {
        "stats": stats,
        "rss": rss,
        "warm_rss": warm_rss or rss[-1][1],
        "growth_after_warmup": rss[-1][1] - (warm_rss or rss[-1][1]),
        "spread_after_warmup": max(after) - min(after),
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(result: dict[str, Any], seconds: float, clients: int) -> dict[str, Any]:
    stats: Stats = result["stats"]
    total = sum(len(v) for v in stats.latencies.values())
    errors = sum(stats.errors.values())
    print(f"soak: {clients} clients, {seconds:.0f} s, {total} calls ({total / seconds:.0f}/s)")
    print(f"{'op':<18} {'calls':>8} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8}")
    rows = {}
    for op in sorted(stats.latencies):
        lat = stats.latencies[op]
        p50, p99 = _percentile(lat, 0.50) * 1e3, _percentile(lat, 0.99) * 1e3
        rows[op] = {"calls": len(lat), "errors": stats.errors[op], "p50_ms": p50, "p99_ms": p99}
        print(f"{op:<18} {len(lat):>8} {stats.errors[op]:>7} {p50:>8.2f} {p99:>8.2f}")
    for op, message in stats.first_error.items():
        print(f"first error of {op}: {message}")
    print("RSS of the daemon:")
    for t, value in result["rss"]:
        print(f"  {t:>8.0f} s  {value / 2**20:8.1f} MiB")
    growth = result["growth_after_warmup"] / 2**20
    spread = result["spread_after_warmup"] / 2**20
    print(
        f"RSS start {result['rss'][0][1] / 2**20:.1f} MiB, after warm-up "
        f"{result['warm_rss'] / 2**20:.1f} MiB, end {result['rss'][-1][1] / 2**20:.1f} MiB: "
        f"{growth:+.1f} MiB after warm-up (spread {spread:.1f} MiB); {errors} error(s)"
    )
    return {
        "calls": total,
        "errors": errors,
        "ops": rows,
        "rss_start": result["rss"][0][1],
        "rss_warm": result["warm_rss"],
        "rss_end": result["rss"][-1][1],
        "rss_growth_after_warmup": result["growth_after_warmup"],
        "rss_spread_after_warmup": result["spread_after_warmup"],
    }


#: The fake driver, no DNS; peer health checks at their default interval.
SOAK_CONFIG = '[drivers]\nenabled = ["fake"]\n[dns]\nenabled = false\n'


def run(clients: int, seconds: float, warmup: float, sample: float) -> dict[str, Any]:
    """Start a daemon, soak it, stop it; returns (and prints) the figures."""
    with tempfile.TemporaryDirectory(prefix="overlayd-soak-", dir="/tmp") as root:
        daemon = start_daemon(Path(root), SOAK_CONFIG, args=("--log-level", "warning"))
        try:
            result = asyncio.run(
                soak(str(daemon.socket), daemon.proc.pid, clients, seconds, warmup, sample)
            )
        finally:
            code = daemon.stop(60)
        figures = report(result, seconds, clients)
        figures["exit_code"] = code
        log = Path(root, "daemon.log").read_text(errors="replace")
        figures["tracebacks"] = log.count("Traceback")
        if figures["tracebacks"]:
            print(log[-3000:])
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between RSS samples")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    figures = run(args.clients, args.seconds, args.warmup, args.sample)
    if args.json:
        print(json.dumps(figures, indent=2))
    sys.exit(1 if figures["errors"] or figures["exit_code"] or figures["tracebacks"] else 0)


if __name__ == "__main__":
    main()
