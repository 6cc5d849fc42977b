"""Cluster mode at scale: simulated nodes in a real etcd, one real watching daemon.

For each cluster size N (default 100, 1,000, 10,000) against a fresh prefix of
one real etcd started here (temporary directory, loopback):

1. N - 1 simulated nodes write their slice claims and node records (no
   WireGuard device; one lease for all of them, kept alive), from a pool of
   writer threads;
2. one real engine on the fake driver with a real :class:`ClusterAgent` starts
   and joins: **fresh-node convergence** is the time from its start until all
   N - 1 peers are programmed (target at 10,000: at most 10 s); the etcd
   requests it sent to get there are **requests per join**;
3. ``--joins`` more simulated nodes join one after another: **join
   propagation** is the time from the start of a node's record write to the
   peer hook call that programs it on the watcher (p50/p99; target p99 at
   1,000 nodes: at most 1 s); the agent's time to handle each event batch is
   the **cost of one change** (median), compared between the largest and the
   smallest N (target: at most 1.5x), also without the time spent in the
   driver's peer hook (the fake driver re-derives every peer's allowed IPs on
   each call; the wireguard driver sends only the changed peers);
4. nothing happens for ``--idle`` seconds: the watcher's requests in that time,
   per minute, are the **steady-state requests per node per minute**.

Run: ``python bench/cluster/run.py [--sizes 100,1000,10000] [--joins 200]``.
Needs the ``cluster`` extra, ``overlayd-fake`` and Debian's ``etcd-server``.
This is a benchmark: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from overlayd import keys as wgkeys
from overlayd.cluster.agent import ClusterAgent
from overlayd.cluster.config import ClusterSettings
from overlayd.cluster.dns import LocalNames
from overlayd.cluster.records import Keys
from overlayd.cluster.records import NodeRecord
from overlayd.cluster.records import claim_value
from overlayd.cluster.store import EtcdStore
from overlayd.config import DnsSettings
from overlayd.config import EngineConfig
from overlayd.config import EngineSettings
from overlayd.engine import Engine
from overlayd.progress import print_progress
from overlayd.testing.etcd import EtcdServer

CLUSTER = ipaddress.ip_network("10.0.0.0/8")
SLICE = 24
TTL = 15


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class SimulatedNodes:
    """Writes claims and records of simulated nodes (no data plane)."""

    def __init__(self, settings: ClusterSettings, workers: int = 16) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.stores = [EtcdStore(settings) for _ in range(workers)]
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.lease = self.stores[0].grant(TTL)
        self._stop = threading.Event()
        self._keeper = threading.Thread(target=self._keepalive, daemon=True)
        self._keeper.start()
        # Keys are made up front: generating 10,000 X25519 keys is not etcd's time.
        self._keys: list[str] = []

    def _keepalive(self) -> None:
        while not self._stop.wait(TTL / 3):
            self.stores[0].keepalive(self.lease)

    def make_keys(self, count: int) -> None:
        while len(self._keys) < count:
            self._keys.append(wgkeys.public_key(wgkeys.generate_private_key()))

    def record(self, index: int) -> tuple[str, NodeRecord]:
        net = ipaddress.ip_network((int(CLUSTER.network_address) + (index << 8), SLICE))
        name = f"sim-{index}"
        return name, NodeRecord(
            name=name,
            public_key=self._keys[index],
            endpoint=f"127.0.{index >> 8 & 255}.{index & 255 or 1}:51820",
            slices=(net,),  # type: ignore[arg-type]
            node_ip=next(net.hosts()),
        )

    def write(self, index: int, store: EtcdStore | None = None) -> str:
        store = store or self.stores[index % len(self.stores)]
        name, rec = self.record(index)
        store.put(self.keys.slice(rec.slices[0]), claim_value(name))
        store.put(self.keys.node(name), rec.to_json(), self.lease)
        return rec.public_key

    def write_many(self, indexes: range) -> None:
        list(self.pool.map(self.write, indexes))

    def close(self) -> None:
        self._stop.set()
        self.pool.shutdown()
        for store in self.stores:
            store.close()


async def one_size(url: str, size: int, joins: int, idle: float) -> dict[str, Any]:
    prefix = f"/bench{size}"
    settings = ClusterSettings(
        endpoints=[url],
        prefix=prefix,
        name="watcher",
        advertise="127.0.0.1",
        cluster_cidr=(CLUSTER,),  # type: ignore[arg-type]
        slice_prefix=SLICE,
        ttl=TTL,
    )
    sims = SimulatedNodes(settings)
    sims.make_keys(size + joins + 1)
    t = time.perf_counter()
    # index 0 is left for the watcher's own claim to find a free slice near it
    await asyncio.to_thread(sims.write_many, range(1, size))
    write_secs = time.perf_counter() - t

    from overlayd_fake.driver import FakeDriver

    local = LocalNames()
    engine = Engine(
        EngineConfig(
            drivers=[],
            dns=DnsSettings(enabled=False, listen_on_gateways=False),
            engine=EngineSettings(health_interval_secs=0, reconcile_interval_secs=0),
        ),
        drivers=[FakeDriver()],
        plugins=[local],
    )
    programmed: dict[str, float] = {}
    waiters: dict[str, asyncio.Future[float]] = {}
    loop = asyncio.get_running_loop()

    def before(name: str, impls: Any, kwargs: dict[str, Any]) -> None:
        if name != "overlayd_peer_apply":
            return
        now = time.perf_counter()
        for change in kwargs["changes"]:
            programmed[change.public_key] = now
            fut = waiters.get(change.public_key)
            if fut is not None:
                loop.call_soon_threadsafe(fut.set_result, now)

    hook_secs: list[float] = [0.0]
    started: dict[int, float] = {}

    def before_timed(name: str, impls: Any, kwargs: dict[str, Any]) -> None:
        if name == "overlayd_peer_apply":
            started[threading.get_ident()] = time.perf_counter()
        before(name, impls, kwargs)

    def after(outcome: Any, name: str, impls: Any, kwargs: dict[str, Any]) -> None:
        if name == "overlayd_peer_apply":
            hook_secs[0] += time.perf_counter() - started.pop(threading.get_ident())

    engine.pm.add_hookcall_monitoring(before_timed, after)
    await engine.start()
    agent = ClusterAgent(settings, engine, local)
    handle_times: list[float] = []
    original = agent._events

    own_times: list[float] = []

    async def timed(batch: Any) -> None:
        t0 = time.perf_counter()
        hooks0 = hook_secs[0]
        await original(batch)
        total = time.perf_counter() - t0
        handle_times.append(total)
        own_times.append(total - (hook_secs[0] - hooks0))

    agent._events = timed  # type: ignore[method-assign]

    def peer_count() -> int:
        g = engine.global_
        return len(engine.peers.get(g.device.name, {})) if g else 0

    t = time.perf_counter()
    await agent.start()
    progress = print_progress(f"{size} nodes: peers configured", size - 1, out=sys.stderr)
    while (seen := peer_count()) < size - 1:
        progress.step(seen - progress.count)
        await asyncio.sleep(0.01)
    converge = time.perf_counter() - t
    progress.step(size - 1 - progress.count)
    progress.done()
    join_requests = agent.store.requests

    latencies: list[float] = []
    for i in range(joins):
        index = size + i
        key = sims._keys[index]
        fut: asyncio.Future[float] = loop.create_future()
        waiters[key] = fut
        t0 = time.perf_counter()
        await asyncio.to_thread(sims.write, index, sims.stores[0])
        done = await asyncio.wait_for(fut, 10)
        latencies.append(done - t0)
    before_idle = agent.store.requests
    await asyncio.sleep(idle)
    idle_requests = agent.store.requests - before_idle

    await agent.stop()
    await engine.stop()
    await asyncio.to_thread(sims.stores[0].revoke, sims.lease)
    sims.close()
    return {
        "nodes": size,
        "write_secs": write_secs,
        "converge_secs": converge,
        "requests_per_join": join_requests,
        "join_p50_ms": 1000 * statistics.median(latencies),
        "join_p99_ms": 1000 * _percentile(latencies, 0.99),
        "change_ms": 1000 * statistics.median(handle_times) if handle_times else float("nan"),
        "change_without_driver_ms": 1000 * statistics.median(own_times)
        if own_times
        else float("nan"),
        "idle_requests_per_min": idle_requests * 60 / idle,
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    server = EtcdServer(root / "etcd")
    server.start()
    results = []
    try:
        for size in args.sizes:
            result = await one_size(server.url, size, args.joins, args.idle)
            print(json.dumps(result), flush=True)
            results.append(result)
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000, 10000]
    )
    parser.add_argument("--joins", type=int, default=200, help="timed joins per size")
    parser.add_argument("--idle", type=float, default=30.0, help="idle seconds per size")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print()
    print(
        f"{'nodes':>7} {'converge s':>10} {'req/join':>8} {'join p50 ms':>11} "
        f"{'join p99 ms':>11} {'change ms':>9} {'w/o drv ms':>10} {'idle req/min':>12}"
    )
    for r in results:
        print(
            f"{r['nodes']:>7} {r['converge_secs']:>10.2f} {r['requests_per_join']:>8} "
            f"{r['join_p50_ms']:>11.1f} {r['join_p99_ms']:>11.1f} {r['change_ms']:>9.2f} "
            f"{r['change_without_driver_ms']:>10.2f} "
            f"{r['idle_requests_per_min']:>12.1f}"
        )
    if len(results) > 1:
        for what, field in (
            ("", "change_ms"),
            (" without the driver's hook", "change_without_driver_ms"),
        ):
            ratio = results[-1][field] / results[0][field]
            print(
                f"cost of one change{what} at {results[-1]['nodes']} vs {results[0]['nodes']} "
                f"nodes: {ratio:.2f}x (target <= 1.5x)"
            )
    print("targets: join p99 <= 1000 ms at 1,000 nodes; convergence <= 10 s at 10,000 nodes")


if __name__ == "__main__":
    main()
