"""The daemon beside its floor: ``status`` round trips vs a length-prefixed echo server.

Run ``python bench/ipc/run.py [--seconds 3] [--clients 1 8]``. In one run it
starts the echo server (the floor: same framing, no work) and ``overlayd serve
--driver fake`` (with a global overlay and one service set up, so ``status``
has something to report) once per event loop (``asyncio``, and ``uvloop`` when
installed; ``--loop`` picks), then measures, for each client count, round
trips/s and p50/p99 latency of the same ``status`` request frame against each,
and prints each daemon's ratio to the floor. ``--attach`` also measures
``attach_container``/``detach_container`` pairs on the fake driver. Clients are
asyncio tasks on one loop in this process, each with its own connection and
one request in flight.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from echo_floor import Result
from echo_floor import _serve_echo_process
from echo_floor import measure

from overlayd.client import Client
from overlayd.testing.daemon import DaemonProcess
from overlayd.testing.daemon import setup_lone_node
from overlayd.testing.daemon import start_daemon

STATUS = b'{"frame":"request","id":1,"request":{"op":"status"}}'


def _wait_for(path: str, what: str) -> None:
    for _ in range(600):
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on {path}")


def start_bench_daemon(root: Path, loop: str) -> DaemonProcess:
    """``overlayd serve`` on the fake driver with ``loop``, overlay and service ``web`` set up."""
    daemon = start_daemon(root, args=("--event-loop", loop, "--log-level", "warning"))
    with Client(str(daemon.socket), timeout=10) as c:
        setup_lone_node(c, "bench", "10.200.1.0/24")
        c.setup_service_overlay("web", "shared")
    return daemon


def _row(name: str, r: Result) -> str:
    return f"{name:<16} {r.clients:>7} {r.per_second:>10.0f} {r.p50_us:>9.1f} {r.p99_us:>9.1f}"


def attach_detach(client: int, n: int) -> bytes:
    """Round trip ``n`` of ``client``: attach a fresh netns handle, then detach it."""
    handle = f'{{"platform":"netns","path":"/run/netns/bench-{client}-{n // 2}"}}'
    op = (
        '"op":"attach_container","service":"web","join_global":false,'
        if n % 2 == 0
        else '"op":"detach_container",'
    )
    return f'{{"frame":"request","id":{n + 1},"request":{{{op}"handle":{handle}}}}}'.encode()


def available_loops() -> list[str]:
    """The event loops the daemon can run here (uvloop when installed)."""
    loops = ["asyncio"]
    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass
    else:
        loops.append("uvloop")
    return loops


def run(
    seconds: float, clients: list[int], loops: list[str] | None = None, attach: bool = False
) -> list[dict[str, Any]]:
    """Measure the floor and a daemon per event loop; one dict per (client count, loop).

    ``status`` round trips against the echo floor; with ``attach``, also
    ``attach_container`` / ``detach_container`` pairs on the fake driver (ops/s
    and latency of each op).
    """
    loops = loops or available_loops()
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="overlayd-bench-", dir="/tmp") as tmp:
        echo_path = os.path.join(tmp, "echo.sock")
        echo = multiprocessing.Process(target=_serve_echo_process, args=(echo_path,))
        echo.start()
        daemons: dict[str, DaemonProcess] = {}
        try:
            for loop in loops:
                root = Path(tmp, loop)
                root.mkdir()
                daemons[loop] = start_bench_daemon(root, loop)
            _wait_for(echo_path, "the echo server")
            print(f"{'server':<16} {'clients':>7} {'rt/s':>10} {'p50 µs':>9} {'p99 µs':>9}")
            for n in clients:
                floor = measure(echo_path, STATUS, n, seconds)
                print(_row("echo", floor))
                for loop in loops:
                    daemon_path = str(daemons[loop].socket)
                    real = measure(daemon_path, STATUS, n, seconds)
                    ratio = real.per_second / floor.per_second
                    print(_row(f"overlayd {loop}", real) + f"   {ratio:.2f}x the floor")
                    row: dict[str, Any] = {
                        "clients": n,
                        "loop": loop,
                        "echo_rps": floor.per_second,
                        "daemon_rps": real.per_second,
                        "echo_p50_us": floor.p50_us,
                        "echo_p99_us": floor.p99_us,
                        "daemon_p50_us": real.p50_us,
                        "daemon_p99_us": real.p99_us,
                        "ratio": ratio,
                    }
                    if attach:
                        ops = measure(daemon_path, attach_detach, n, seconds)
                        print(_row("  attach/detach", ops))
                        row.update(
                            attach_ops=ops.per_second,
                            attach_p50_us=ops.p50_us,
                            attach_p99_us=ops.p99_us,
                        )
                    out.append(row)
        finally:
            for daemon in daemons.values():
                daemon.stop(30)
            echo.terminate()
            echo.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--loop",
        dest="loops",
        action="append",
        choices=["asyncio", "uvloop"],
        help="the daemon's event loop (repeatable; default: each one installed)",
    )
    parser.add_argument(
        "--attach",
        action="store_true",
        help="also measure attach_container/detach_container pairs (fake driver)",
    )
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    results = run(args.seconds, args.clients, args.loops, args.attach)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
