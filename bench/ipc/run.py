"""The daemon beside its floor: ``status`` round trips vs a length-prefixed echo server.

Run ``python bench/ipc/run.py [--seconds 3] [--clients 1 8]``. In one run it
starts the echo server (the floor: same framing, no work) and ``overlayd serve
--driver fake`` (with a global overlay and one service set up, so ``status``
has something to report), then measures, for each client count, round trips/s
and p50/p99 latency of the same ``status`` request frame against both, and
prints the daemon/floor ratio. Clients are asyncio tasks on one loop in this
process, each with its own connection and one request in flight.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from echo_floor import Result
from echo_floor import _serve_echo_process
from echo_floor import measure

from overlayd.client import Client

STATUS = b'{"frame":"request","id":1,"request":{"op":"status"}}'


def _wait_for(path: str, what: str) -> None:
    for _ in range(600):
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on {path}")


def start_daemon(root: str, *extra: str) -> subprocess.Popen[bytes]:
    """``overlayd serve --driver fake`` on ``root/overlayd.sock`` with warnings-only logs."""
    sock = os.path.join(root, "overlayd.sock")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "overlayd",
            "serve",
            "--driver",
            "fake",
            "--socket",
            sock,
            "--data-dir",
            os.path.join(root, "data"),
            "--no-dns",
            "--log-level",
            "warning",
            *extra,
        ]
    )
    _wait_for(sock, "overlayd")
    with Client(sock, timeout=10) as c:
        c.setup_global_overlay(
            deployment="bench",
            instance_id="n1",
            cluster_cidr="10.200.0.0/16",
            slice_cidr="10.200.1.0/24",
            wg_port=51820,
            nat_enabled=False,
        )
        c.setup_service_overlay("web", "shared")
    return proc


def _row(name: str, r: Result) -> str:
    return f"{name:<7} {r.clients:>7} {r.per_second:>10.0f} {r.p50_us:>9.1f} {r.p99_us:>9.1f}"


def run(seconds: float, clients: list[int]) -> list[dict[str, float]]:
    """Measure both servers; returns one dict per client count (also printed)."""
    out: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="overlayd-bench-", dir="/tmp") as tmp:
        echo_path = os.path.join(tmp, "echo.sock")
        echo = multiprocessing.Process(target=_serve_echo_process, args=(echo_path,))
        echo.start()
        daemon = start_daemon(tmp)
        try:
            _wait_for(echo_path, "the echo server")
            daemon_path = os.path.join(tmp, "overlayd.sock")
            print(f"{'server':<7} {'clients':>7} {'rt/s':>10} {'p50 µs':>9} {'p99 µs':>9}")
            for n in clients:
                floor = measure(echo_path, STATUS, n, seconds)
                real = measure(daemon_path, STATUS, n, seconds)
                print(_row("echo", floor))
                print(_row("overlayd", real))
                ratio = real.per_second / floor.per_second
                print(f"{'':<7} {n:>7} daemon/floor throughput ratio {ratio:.2f}")
                out.append(
                    {
                        "clients": n,
                        "echo_rps": floor.per_second,
                        "daemon_rps": real.per_second,
                        "echo_p50_us": floor.p50_us,
                        "echo_p99_us": floor.p99_us,
                        "daemon_p50_us": real.p50_us,
                        "daemon_p99_us": real.p99_us,
                        "ratio": ratio,
                    }
                )
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
            echo.terminate()
            echo.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    results = run(args.seconds, args.clients)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
