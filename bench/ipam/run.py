"""IPAM benchmark: overlayd's allocator + durable commit vs CNI host-local, side by side.

Measures, in one run:

* allocate + commit (SQLite, synchronous=FULL) p50/p99 with 100 and with 60,000
  leases already in one pool — the cost must stay flat;
* the time to load 65,536 leases at start (store load + pool rebuild);
* the same allocation workload on CNI's ``host-local`` IPAM plugin (Debian
  ``containernetworking-plugins``), one exec per ADD as a container runtime does.

Run: ``python bench/ipam/run.py [--samples N]``. Prints a table.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from overlayd.engine import gc_paused
from overlayd.engine import leases_from_records
from overlayd.ipam import PoolAllocator
from overlayd.model import Pool
from overlayd.state import SqliteStore

HOST_LOCAL = Path("/usr/lib/cni/host-local")
CIDR = ipaddress.ip_network("10.64.0.0/15")  # 131,070 usable: room for 65,536 + samples


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def overlayd_allocate(prefill: int, samples: int) -> tuple[float, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ipam-"))
    try:
        store = SqliteStore(tmp / "state.db")
        pool = Pool(name="service:bench", cidr=CIDR, reserved=(CIDR.network_address + 1,))
        alloc = PoolAllocator(pool)
        batch: dict[tuple[str, str], object] = {}
        for i in range(prefill):
            lease = alloc.allocate(f"handle:prefill-{i}")
            batch[("lease", f"{lease.pool}|{lease.ip}")] = lease.model_dump(mode="json")
        if batch:
            store.commit(batch)
        times = []
        for i in range(samples):
            t0 = time.perf_counter()
            lease = alloc.allocate(f"handle:sample-{i}")
            store.commit({("lease", f"{lease.pool}|{lease.ip}"): lease.model_dump(mode="json")})
            times.append(time.perf_counter() - t0)
        store.close()
        return pct(times, 0.5) * 1e3, pct(times, 0.99) * 1e3
    finally:
        shutil.rmtree(tmp)


def overlayd_load(n: int) -> tuple[float, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ipam-"))
    try:
        store = SqliteStore(tmp / "state.db")
        pool = Pool(name="service:bench", cidr=CIDR)
        alloc = PoolAllocator(pool)
        store.commit(
            {
                ("lease", f"p|{lease.ip}"): lease.model_dump(mode="json")
                for lease in (alloc.allocate(f"o{i}") for i in range(n))
            }
        )
        store.close()
        # The same steps as Engine._load: store read, one batch validation,
        # pool rebuild, with the cyclic GC paused.
        t0 = time.perf_counter()
        with gc_paused():
            store = SqliteStore(tmp / "state.db")
            data = store.load()
            t1 = time.perf_counter()
            leases = leases_from_records(data["lease"].values())
            PoolAllocator(pool, leases)
        t2 = time.perf_counter()
        store.close()
        return (t1 - t0) * 1e3, (t2 - t0) * 1e3
    finally:
        shutil.rmtree(tmp)


def host_local(prefill: int, samples: int) -> tuple[float, float] | None:
    if not HOST_LOCAL.exists():
        return None
    tmp = Path(tempfile.mkdtemp(prefix="bench-hostlocal-"))
    try:
        data_dir = tmp / "data"
        net_dir = data_dir / "benchnet"
        net_dir.mkdir(parents=True)
        # Prefill the way host-local stores leases: one file per address.
        base = int(CIDR.network_address) + 2
        for i in range(prefill):
            (net_dir / str(ipaddress.ip_address(base + i))).write_text(f"prefill{i}\neth0")
        (net_dir / "last_reserved_ip.0").write_text(
            str(ipaddress.ip_address(base + prefill - 1)) if prefill else ""
        )
        conf = {
            "cniVersion": "1.0.0",
            "name": "benchnet",
            "type": "host-local",
            "ranges": [[{"subnet": str(CIDR)}]],
            "dataDir": str(data_dir),
        }
        body = json.dumps({**conf, "ipam": conf}).encode()
        times = []
        for i in range(samples):
            env = {
                "CNI_COMMAND": "ADD",
                "CNI_CONTAINERID": f"bench{i}",
                "CNI_NETNS": "/proc/self/ns/net",
                "CNI_IFNAME": "eth0",
                "CNI_PATH": str(HOST_LOCAL.parent),
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            }
            t0 = time.perf_counter()
            out = subprocess.run([str(HOST_LOCAL)], input=body, env=env, capture_output=True)
            times.append(time.perf_counter() - t0)
            if out.returncode != 0:
                print(
                    "host-local failed:", out.stdout.decode(), out.stderr.decode(), file=sys.stderr
                )
                return None
        return pct(times, 0.5) * 1e3, pct(times, 0.99) * 1e3
    finally:
        shutil.rmtree(tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--big", type=int, default=60_000)
    args = parser.parse_args()
    rows = []
    for prefill in (100, args.big):
        o50, o99 = overlayd_allocate(prefill, args.samples)
        hl = host_local(prefill, min(args.samples, 200))
        rows.append((prefill, o50, o99, hl))
    print(
        f"{'leases in pool':>15} | {'overlayd p50':>12} {'p99':>8} | "
        f"{'host-local p50':>14} {'p99':>8} | {'ratio p50':>9}"
    )
    for prefill, o50, o99, hl in rows:
        if hl is None:
            print(f"{prefill:>15} | {o50:>10.3f}ms {o99:>6.3f}ms | {'not installed':>24} |")
        else:
            print(
                f"{prefill:>15} | {o50:>10.3f}ms {o99:>6.3f}ms | {hl[0]:>12.3f}ms "
                f"{hl[1]:>6.3f}ms | {o50 / hl[0]:>8.3f}x"
            )
    flat = rows[1][1] / rows[0][1]
    print(f"overlayd p50 at {args.big} leases / at 100 leases: {flat:.2f}x (flat = ~1)")
    read_ms, total_ms = overlayd_load(65_536)
    print(
        f"load 65,536 leases at start: store read {read_ms:.0f} ms, "
        f"read + validate + pool rebuild {total_ms:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
