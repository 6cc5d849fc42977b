"""The IPC floor: round trips over a length-prefixed echo server on a Unix socket.

The daemon can never answer faster than an echo server that speaks the same
framing, so this is the baseline the daemon's ``status`` round trip is compared
against (that comparison is added later). :func:`measure` only needs a socket
path and a frame body, so it works against the daemon too: pass the body of a
request frame and it measures request/response round trips.

Run ``python bench/ipc/echo_floor.py [--seconds 3] [--payload 64]``: it starts
the echo server in a child process and prints round trips/s, p50 and p99 for 1
and 8 concurrent clients. The clients run as asyncio tasks on one loop in this
process, each with its own connection and one request in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from overlayd.transport import open_unix
from overlayd.transport import read_frame
from overlayd.transport import write_frame


@dataclass(frozen=True)
class Result:
    """What one :func:`measure` run observed."""

    clients: int
    payload_bytes: int
    round_trips: int
    seconds: float
    p50_us: float
    p99_us: float

    @property
    def per_second(self) -> float:
        return self.round_trips / self.seconds


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while (body := await read_frame(reader)) is not None:
            await write_frame(writer, body)
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve_echo(path: str, ready: asyncio.Event | None = None) -> None:
    """Serve the echo protocol on ``path`` until cancelled."""
    server = await asyncio.start_unix_server(_echo, path)
    async with server:
        if ready is not None:
            ready.set()
        await server.serve_forever()


def _serve_echo_process(path: str) -> None:
    asyncio.run(serve_echo(path))


#: A fixed request body, or one per (client, round trip) index.
Payload = bytes | Callable[[int, int], bytes]


async def _client(
    path: str, payload: Payload, index: int, deadline: float, samples: list[float]
) -> None:
    reader, writer = await open_unix(path)
    clock = time.perf_counter
    n = 0
    try:
        while clock() < deadline:
            body = payload if isinstance(payload, bytes) else payload(index, n)
            n += 1
            start = clock()
            await write_frame(writer, body)
            reply = await read_frame(reader)
            if reply is None:
                raise ConnectionError(f"{path} closed the connection mid-benchmark")
            samples.append(clock() - start)
            if b'"result":"err"' in reply:
                raise RuntimeError(f"{body!r} was answered {reply!r}")
    finally:
        writer.close()


async def measure_async(
    connect_path: str, payload: Payload, clients: int, seconds: float
) -> Result:
    """Run ``clients`` concurrent connections for ``seconds``; see :func:`measure`."""
    samples: list[list[float]] = [[] for _ in range(clients)]
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(
        *(_client(connect_path, payload, i, deadline, s) for i, s in enumerate(samples))
    )
    elapsed = time.perf_counter() - start
    flat = sorted(x for s in samples for x in s)
    if len(flat) < 2:
        raise RuntimeError(f"only {len(flat)} round trips in {seconds}s; run longer")
    cuts = statistics.quantiles(flat, n=100, method="inclusive")
    return Result(
        clients=clients,
        payload_bytes=len(payload) if isinstance(payload, bytes) else 0,
        round_trips=len(flat),
        seconds=elapsed,
        p50_us=cuts[49] * 1e6,
        p99_us=cuts[98] * 1e6,
    )


def measure(connect_path: str, payload: Payload, clients: int, seconds: float) -> Result:
    """Round trips/s and latency percentiles of length-prefixed frames.

    :param connect_path: Unix socket of a server that answers each frame once.
    :param payload: The frame body sent (without the length prefix), or a
        function of (client index, round trip index) giving it; an ``err``
        answer stops the run.
    :param clients: Concurrent connections, each with one frame in flight.
    :param seconds: How long to run.
    """
    return asyncio.run(measure_async(connect_path, payload, clients, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--payload", type=int, default=64, help="body size in bytes")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    payload = b'{"frame":"request","id":1,"request":{"op":"status"}}'
    payload = (payload * (args.payload // len(payload) + 1))[: args.payload]
    with tempfile.TemporaryDirectory(prefix="overlayd-bench-") as tmp:
        path = os.path.join(tmp, "echo.sock")
        server = multiprocessing.Process(target=_serve_echo_process, args=(path,))
        server.start()
        try:
            for _ in range(200):
                if os.path.exists(path):
                    break
                time.sleep(0.01)
            else:
                raise RuntimeError("the echo server did not start")
            print(f"{'clients':>7} {'payload':>8} {'rt/s':>10} {'p50 µs':>9} {'p99 µs':>9}")
            for clients in args.clients:
                r = measure(path, payload, clients, args.seconds)
                print(
                    f"{r.clients:>7} {r.payload_bytes:>8} {r.per_second:>10.0f} "
                    f"{r.p50_us:>9.1f} {r.p99_us:>9.1f}"
                )
        finally:
            server.terminate()
            server.join()


if __name__ == "__main__":
    main()
