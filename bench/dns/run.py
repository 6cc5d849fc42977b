"""DNS benchmark: overlayd's server against dnsmasq and aardvark-dns, on loopback only.

For each table size (1,000 and 100,000 names) every installed server is started
on a loopback port with the same names, then measured with

* a Python closed-loop generator (64 queries in flight): queries/s, hits and misses;
* a Python open-loop generator at a fixed 2,000 qps: p50 / p99 latency and losses;
* ``dnsperf`` when installed: max queries/s and average latency.

A peer that is not installed is skipped with a note. All traffic goes to
127.0.0.1; misses are names inside the served zone (NXDOMAIN), never forwarded.
aardvark-dns forwards every name it does not hold to the host's resolvers, so
its misses are not measured (they would leave the machine).

Run: ``python bench/dns/run.py [--sizes 1000 100000] [--seconds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dns.message

ZONE = "overlay.local"
AARDVARK = "/usr/lib/podman/aardvark-dns"
HERE = Path(__file__).resolve().parent


def ip_of(i: int) -> str:
    return f"10.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        port = int(u.getsockname()[1])
    return port


@dataclass
class Peer:
    name: str
    port: int
    #: Query name for index i (hit) or a missing name (miss).
    qname: Callable[[int], str]
    misses: bool = True


def _wait_ready(port: int, qname: str, deadline: float = 60.0) -> None:
    q = dns.message.make_query(qname, "A").to_wire()
    end = time.monotonic() + deadline
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < end:
            s.sendto(q, ("127.0.0.1", port))
            try:
                if s.recv(4096):
                    return
            except TimeoutError:
                continue
    raise RuntimeError(f"server on port {port} did not answer within {deadline}s")


@contextmanager
def process(cmd: list[str], port: int, probe: str) -> Iterator[None]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        _wait_ready(port, probe)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def start_overlayd(n: int, tmp: Path) -> Iterator[Peer]:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(port), str(n)]
    with process(cmd, port, f"svc0.{ZONE}."):
        yield Peer("overlayd", port, lambda i: f"svc{i}.{ZONE}.")


@contextmanager
def start_dnsmasq(n: int, tmp: Path) -> Iterator[Peer | str]:
    exe = shutil.which("dnsmasq")
    if exe is None:
        yield "dnsmasq not installed (apt-get install dnsmasq-base)"
        return
    hosts = tmp / "dnsmasq.hosts"
    hosts.write_text("".join(f"{ip_of(i)} svc{i}.{ZONE}\n" for i in range(n)))
    port = free_port()
    cmd = [
        exe, "--keep-in-foreground", f"--port={port}", "--listen-address=127.0.0.1",
        "--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
        f"--local=/{ZONE}/", "--pid-file=", "--user=root", "--local-ttl=5",
    ]  # fmt: skip
    with process(cmd, port, f"svc0.{ZONE}."):
        yield Peer("dnsmasq", port, lambda i: f"svc{i}.{ZONE}.")


@contextmanager
def start_aardvark(n: int, tmp: Path) -> Iterator[Peer | str]:
    if not os.access(AARDVARK, os.X_OK):
        yield "aardvark-dns not installed (apt-get install aardvark-dns)"
        return
    conf = tmp / "aardvark"
    conf.mkdir()
    lines = ["127.0.0.1"] + [f"c{i:012x} {ip_of(i)}  svc{i}" for i in range(n)]
    (conf / "bench").write_text("\n".join(lines) + "\n")
    port = free_port()
    cmd = [AARDVARK, "--config", str(conf), "-p", str(port), "run"]
    with process(cmd, port, "svc0."):
        yield Peer("aardvark-dns", port, lambda i: f"svc{i}.", misses=False)


# -- load generators ----------------------------------------------------------------


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.sent: dict[int, float] = {}
        self.latencies: list[float] = []
        self.event = asyncio.Event()

    def datagram_received(self, data: bytes, addr: object) -> None:
        qid = struct.unpack_from("!H", data)[0]
        t0 = self.sent.pop(qid, None)
        if t0 is not None:
            self.latencies.append(time.perf_counter() - t0)
            self.event.set()


def _queries(peer: Peer, n: int, miss: bool, count: int = 4096) -> list[bytes]:
    rng = random.Random(7)
    out = []
    for _ in range(count):
        i = rng.randrange(n)
        name = peer.qname(i) if not miss else f"nx{i}.{ZONE}."
        out.append(dns.message.make_query(name, "A").to_wire()[2:])
    return out


async def closed_loop(peer: Peer, n: int, miss: bool, seconds: float) -> float:
    """Queries/s with 64 in flight (lost queries are re-sent after 1 s)."""
    loop = asyncio.get_running_loop()
    proto = _Client()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: proto, remote_addr=("127.0.0.1", peer.port)
    )
    bodies = _queries(peer, n, miss)
    qid = 0
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            now = time.perf_counter()
            for k, t0 in list(proto.sent.items()):
                if now - t0 > 1.0:
                    del proto.sent[k]
            while len(proto.sent) < 64:
                qid = (qid + 1) & 0xFFFF
                proto.sent[qid] = time.perf_counter()
                transport.sendto(struct.pack("!H", qid) + bodies[qid % len(bodies)])
            proto.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proto.event.wait(), 1.0)
        return len(proto.latencies) / seconds
    finally:
        transport.close()


async def open_loop(
    peer: Peer, n: int, miss: bool, seconds: float, rate: int
) -> tuple[float, float, int]:
    """p50 / p99 latency (ms) and lost queries at a fixed ``rate``."""
    loop = asyncio.get_running_loop()
    proto = _Client()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: proto, remote_addr=("127.0.0.1", peer.port)
    )
    bodies = _queries(peer, n, miss)
    total = int(seconds * rate)
    start = time.perf_counter()
    try:
        for k in range(total):
            due = start + k / rate
            delay = due - time.perf_counter()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            qid = k & 0xFFFF
            proto.sent[qid] = time.perf_counter()
            transport.sendto(struct.pack("!H", qid) + bodies[k % len(bodies)])
        await asyncio.sleep(1.0)
    finally:
        transport.close()
    lat = sorted(proto.latencies)
    if not lat:
        return float("nan"), float("nan"), total
    p50 = lat[len(lat) // 2] * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    return p50, p99, total - len(lat)


def run_dnsperf(peer: Peer, n: int, seconds: float, tmp: Path) -> str:
    exe = shutil.which("dnsperf")
    if exe is None:
        return "n/a (apt-get install dnsperf)"
    rng = random.Random(11)
    data = tmp / f"dnsperf-{peer.name}.txt"
    data.write_text("".join(f"{peer.qname(rng.randrange(n))} A\n" for _ in range(20000)))
    out = subprocess.run(
        [exe, "-s", "127.0.0.1", "-p", str(peer.port), "-d", str(data),
         "-l", str(seconds), "-c", "4", "-T", "1", "-q", "100"],
        capture_output=True, text=True, timeout=seconds + 30, check=False,
    )  # fmt: skip
    qps = re.search(r"Queries per second:\s+([\d.]+)", out.stdout)
    avg = re.search(r"Average Latency \(s\):\s+([\d.]+)", out.stdout)
    lost = re.search(r"Queries lost:\s+(\d+)", out.stdout)
    if not qps or not avg:
        return f"dnsperf failed: {out.stderr.strip()[:80]}"
    return (
        f"{float(qps.group(1)):.0f} q/s, avg {float(avg.group(1)) * 1000:.2f} ms, "
        f"lost {lost.group(1) if lost else '?'}"
    )


# -- driver -------------------------------------------------------------------------


def bench_peer(peer: Peer, n: int, seconds: float, rate: int, tmp: Path) -> list[str]:
    hit_qps = asyncio.run(closed_loop(peer, n, False, seconds))
    miss_qps = asyncio.run(closed_loop(peer, n, True, seconds)) if peer.misses else None
    p50, p99, lost = asyncio.run(open_loop(peer, n, False, seconds, rate))
    mp = asyncio.run(open_loop(peer, n, True, seconds, rate)) if peer.misses else None
    return [
        peer.name,
        f"{n:,}",
        f"{hit_qps:,.0f}",
        f"{miss_qps:,.0f}" if miss_qps is not None else "skipped*",
        f"{p50:.2f} / {p99:.2f} ({lost} lost)",
        f"{mp[0]:.2f} / {mp[1]:.2f} ({mp[2]} lost)" if mp else "skipped*",
        run_dnsperf(peer, n, seconds, tmp),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--serve", nargs=2, type=int, metavar=("PORT", "NAMES"))
    args = ap.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    header = [
        "server", "names", "hit q/s", "miss q/s",
        f"hit p50/p99 ms @{args.rate}", f"miss p50/p99 ms @{args.rate}", "dnsperf (hits)",
    ]  # fmt: skip
    rows: list[list[str]] = []
    notes: list[str] = []
    for n in args.sizes:
        for starter in (start_overlayd, start_dnsmasq, start_aardvark):
            with tempfile.TemporaryDirectory() as d, starter(n, Path(d)) as peer:
                if isinstance(peer, str):
                    if peer not in notes:
                        notes.append(peer)
                    continue
                print(f"... {peer.name} with {n:,} names", file=sys.stderr)
                rows.append(bench_peer(peer, n, args.seconds, args.rate, Path(d)))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print("\n* aardvark-dns forwards unknown names to the host resolvers; not measured.")
    for note in notes:
        print(f"skipped: {note}")


def serve(port: int, n: int) -> None:
    sys.path.insert(0, str(HERE.parents[1] / "core" / "src"))
    from overlayd.dns import DnsConfig
    from overlayd.dns import DnsServer

    async def run() -> None:
        server = DnsServer(DnsConfig(listen=[f"127.0.0.1:{port}"], upstreams=[], forward=False))
        server.replace_all({f"svc{i}": [ip_of(i)] for i in range(n)})
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
