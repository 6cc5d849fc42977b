"""Footprint: RSS and start-up of a daemon holding a large node's state (issue 20).

Run ``python bench/footprint/run.py [--attachments 10000 --peers 10000
--names 100000]`` (``nice`` it on a shared machine). It starts ``overlayd
serve --driver fake`` on a temporary data directory, with its built-in DNS
server listening on a loopback port (the fake driver's gateways are not
addresses of this host, so the gateway listeners are turned off), sets up a
global overlay and one shared service, and fills the state through the real
IPC socket:

* ``--attachments`` workloads (``attach_container`` with ``linux_pid``
  handles: the fake driver keeps them in memory and never looks at
  ``/proc``), ``--window`` requests in flight on one connection;
* ``--peers`` peers in ``apply_peers`` batches of ``--batch``, one /32 each;
* ``--names`` DNS names with ``register_dns``, ``--window`` in flight.

It reads the daemon's ``VmRSS``/``VmHWM`` (``/proc/<pid>/status``), stops it
with SIGTERM, starts it again on the same data directory and measures the
start-up (spawn until the first ``status`` is answered and decoded by the
client; also when the answer arrived, before the client decodes its 10,000
peers, and the daemon's CPU time until then) and the RSS after it; then checks
that the restarted daemon holds every attachment (``list_attachments``), every
peer (``status``) and answers a sample of the names over DNS.

Beside it, where it can be measured honestly, a peer system: Nebula
(``/usr/bin/nebula``) given ``--peers`` hosts in its ``static_host_map``, its
RSS once it has loaded its configuration (Nebula has no attachments nor a
zone of DNS names of that size, so only the peer column compares).

To time start-ups alone, fill once with ``--keep DIR``, then restart the
daemon on that state as often as needed with ``--restart DIR [--repeat N]``
(each restart is timed, measured and checked like the one after the fill;
``--names`` gives the number of names to sample, as at the fill).

This is a benchmark, not a test: ``pytest bench/footprint`` runs it small.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from overlayd.client import AsyncClient
from overlayd.client import Client
from overlayd.progress import print_progress
from overlayd.protocol import LinuxPidHandle
from overlayd.protocol import PeerChange
from overlayd.protocol import RequestFrame
from overlayd.protocol import ResponseFrame
from overlayd.protocol import StatusRequest
from overlayd.protocol import decode_frame
from overlayd.protocol import encode_frame
from overlayd.testing.daemon import serve_command

CLUSTER = "10.0.0.0/8"
SLICE = "10.1.0.0/16"  # the node: its address, the node pool and the service subnets
PEER_NET = ipaddress.ip_network("10.64.0.0/10")  # peers' /32s, outside the slice
SERVICE = "web"
DEPLOYMENT = "fp"
RSS_TARGET = 300 * 2**20
STARTUP_TARGET = 2.0


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds the process has used (less noisy than wall time)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _key(i: int, salt: bytes = b"peer") -> str:
    return base64.b64encode(hashlib.sha256(salt + i.to_bytes(4, "big")).digest()).decode()


#: Where the daemon keeps its compiled bytecode (``--bytecode cached``), or
#: None to leave the environment as it is (``--bytecode as-is``).
BYTECODE_CACHE: list[str | None] = [None]


def _daemon_env() -> dict[str, str] | None:
    """The daemon's environment: bytecode cached like an installed package's, if asked.

    pip compiles an installed package's modules when it installs it; an
    editable checkout under ``PYTHONDONTWRITEBYTECODE`` (this development
    environment sets it) recompiles overlayd's sources at every start
    instead, about 0.15-0.2 s of it here. ``--bytecode cached`` lets the
    daemon write and read bytecode under a cache of the bench's own
    (``PYTHONPYCACHEPREFIX``), so the fill's start compiles and the timed
    restarts load, as an installed daemon does.
    """
    cache = BYTECODE_CACHE[0]
    if cache is None:
        return None
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    return env


def spawn(root: str) -> subprocess.Popen[bytes]:
    """``overlayd serve --driver fake`` on ``root``'s socket, data dir and config."""
    return subprocess.Popen(
        serve_command(
            "--driver",
            "fake",
            "--config",
            os.path.join(root, "overlayd.toml"),
            "--socket",
            os.path.join(root, "s.sock"),
            "--data-dir",
            os.path.join(root, "data"),
            "--log-level",
            "warning",
        ),
        stdout=open(os.path.join(root, "daemon.log"), "ab"),
        stderr=subprocess.STDOUT,
        env=_daemon_env(),
    )


def wait_first_status(
    proc: subprocess.Popen[bytes], root: str, limit: float = 120.0
) -> tuple[Any, float]:
    """Poll until the daemon answers ``status``; returns that answer and when it arrived.

    The request goes over a plain socket so that the arrival of the answer
    (``time.monotonic()`` once its frame is read) is told apart from the
    client's decoding of it (a pydantic model per peer, about 0.1 s for
    10,000 peers, done by the caller's clock after that).
    """
    sock = os.path.join(root, "s.sock")
    request = encode_frame(RequestFrame(id=1, request=StatusRequest()))
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if os.path.exists(sock):
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(limit)
                    s.connect(sock)
                    s.sendall(request)
                    body = _read_exactly(s, int.from_bytes(_read_exactly(s, 4), "little"))
                    arrived = time.monotonic()
            except OSError:
                pass
            else:
                frame = decode_frame(body)
                assert isinstance(frame, ResponseFrame), frame
                return frame.response, arrived
        time.sleep(0.005)
    raise RuntimeError(f"overlayd did not start: {Path(root, 'daemon.log').read_text()[-3000:]}")


def _read_exactly(s: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("overlayd closed the connection")
        data += chunk
    return bytes(data)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(120)


async def _windowed(
    calls: Iterable[Callable[[], Awaitable[Any]]], total: int, what: str, window: int
) -> float:
    """Run the calls with at most ``window`` in flight; returns the seconds taken."""
    progress = print_progress(what, total, out=sys.stderr)
    started = time.perf_counter()
    it = iter(calls)
    pending: set[asyncio.Task[Any]] = set()
    for call in it:
        pending.add(asyncio.ensure_future(call()))
        if len(pending) >= window:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            progress.step(len(done))
    if pending:
        done, _ = await asyncio.wait(pending)
        for task in done:
            task.result()
        progress.step(len(done))
    progress.done()
    return time.perf_counter() - started


async def fill(
    sock: str, attachments: int, peers: int, names: int, window: int, batch: int
) -> dict[str, Any]:
    """Set up the overlay and fill the state; returns the fill rates."""
    client = AsyncClient(sock, timeout=300)
    try:
        await client.setup_global_overlay(
            deployment=DEPLOYMENT,
            instance_id="n1",
            cluster_cidr=CLUSTER,
            slice_cidr=SLICE,
            wg_port=51820,
            nat_enabled=False,
        )
        await client.setup_service_overlay(SERVICE, "shared")
        ips: list[str] = []

        def attach(i: int) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                r = await client.attach_container(LinuxPidHandle(pid=100_000 + i), SERVICE)
                ips.append(str(getattr(r, "ip", "")))

            return call

        t_att = await _windowed(
            (attach(i) for i in range(attachments)), attachments, "attach_container", window
        )

        def peer_batch(start: int) -> Callable[[], Awaitable[None]]:
            changes = [
                PeerChange(
                    public_key=_key(i),
                    endpoint=f"192.0.2.{i % 250 + 1}:{40000 + i % 20000}",
                    allowed_ips=f"{PEER_NET[i + 1]}/32",
                    persistent_keepalive_secs=25,
                )
                for i in range(start, min(start + batch, peers))
            ]
            return lambda: client.apply_peers(changes)

        t_peer = await _windowed(
            (peer_batch(s) for s in range(0, peers, batch)),
            -(-peers // batch),
            f"apply_peers (batches of {batch})",
            4,
        )
        slice_net = ipaddress.ip_network(SLICE)

        def name(i: int) -> Callable[[], Awaitable[None]]:
            ip = ips[i % len(ips)] if ips else str(slice_net[i % 60000 + 2])
            return lambda: client.register_dns(f"n{i}.svc", ip)

        t_dns = await _windowed((name(i) for i in range(names)), names, "register_dns", window)
    finally:
        await client.close()
    return {
        "fill_attach_per_s": attachments / t_att if t_att else 0.0,
        "fill_peers_per_s": peers / t_peer if t_peer else 0.0,
        "fill_names_per_s": names / t_dns if t_dns else 0.0,
        "fill_seconds": t_att + t_peer + t_dns,
    }


def dns_sample(port: int, names: int, sample: int = 50) -> int:
    """How many of ``sample`` registered names the DNS server answers with an address."""
    import dns.message
    import dns.query
    import dns.rdatatype

    if not names:
        return 0
    step = max(1, names // sample)
    found = 0
    checked = 0
    for i in range(0, names, step):
        q = dns.message.make_query(f"n{i}.svc.{DEPLOYMENT}.local.", dns.rdatatype.A)
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=5)
        found += any(rr.rdtype == dns.rdatatype.A for rr in r.answer)
        checked += 1
    return found if found == checked else found - checked  # negative: some missing


def verify(sock: str) -> dict[str, int]:
    with Client(sock, timeout=300) as c:
        status = c.status()
        atts = c.list_attachments()
    return {"attachments_after": len(atts), "peers_after": status.peer_count}


def nebula_rss(peers: int, root: str) -> int | None:
    """RSS of Nebula holding ``peers`` static hosts, or ``None`` when it cannot run here.

    Nebula needs a CA-signed certificate and a tun device; it is started with
    ``tun.disabled`` (a user-space node, no privileges) on loopback, each peer
    an overlay address in ``static_host_map`` pointing at an unused loopback
    port. The RSS is read once it has loaded the map (1 s after start).
    """
    nebula = shutil.which("nebula")
    cert = shutil.which("nebula-cert")
    if nebula is None or cert is None or not peers:
        return None
    d = Path(root, "nebula")
    d.mkdir()
    try:
        subprocess.run(
            [cert, "ca", "-name", "bench", "-out-crt", "ca.crt", "-out-key", "ca.key"],
            cwd=d,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [cert, "sign", "-name", "n1", "-ip", "10.128.0.1/9", "-ca-crt", "ca.crt",
             "-ca-key", "ca.key", "-out-crt", "n1.crt", "-out-key", "n1.key"],
            cwd=d,
            check=True,
            capture_output=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    net = ipaddress.ip_network("10.128.0.0/9")
    lines = [
        "pki:",
        f"  ca: {d}/ca.crt",
        f"  cert: {d}/n1.crt",
        f"  key: {d}/n1.key",
        "static_host_map:",
    ]
    lines += [f'  "{net[i + 2]}": ["127.0.0.1:{20000 + i % 40000}"]' for i in range(peers)]
    lines += [
        "lighthouse:",
        "  am_lighthouse: false",
        "listen:",
        "  host: 127.0.0.1",
        "  port: 0",
        "tun:",
        "  disabled: true",
        "logging:",
        "  level: warning",
        "firewall:",
        "  outbound: [{port: any, proto: any, host: any}]",
        "  inbound: [{port: any, proto: any, host: any}]",
    ]
    config = d / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    with open(d / "nebula.log", "wb") as log:
        proc = subprocess.Popen([nebula, "-config", str(config)], stdout=log, stderr=log)
    try:
        time.sleep(1.0 + peers / 20000)
        if proc.poll() is not None:
            return None
        return _status_kib(proc.pid)["VmRSS"]
    finally:
        proc.terminate()
        proc.wait(30)


def run(
    attachments: int = 10_000,
    peers: int = 10_000,
    names: int = 100_000,
    *,
    window: int = 64,
    batch: int = 500,
    nebula: bool = True,
    keep: str | None = None,
) -> dict[str, Any]:
    """Fill, measure, restart, measure; returns (and prints) the figures.

    ``keep``: an empty directory to work in and leave behind (to profile the
    daemon on that state: ``overlayd serve --config <keep>/overlayd.toml ...``).
    """
    with contextlib.ExitStack() as stack:
        if keep is None:
            root = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="overlayd-footprint-", dir="/tmp")
            )
        else:
            root = keep
            os.makedirs(root, exist_ok=True)
        port = _free_port()
        Path(root, "overlayd.toml").write_text(
            "[drivers.fake]\n"
            f'state_file = "{root}/fake-host.json"\n'
            "[ipam]\n"
            "service_prefix_v4 = 18\n"  # one service of 16,381 addresses
            "[dns]\n"
            f'listen = ["127.0.0.1:{port}"]\n'
            "listen_on_gateways = false\n"
            "forward = false\n"
        )
        sock = os.path.join(root, "s.sock")
        proc = spawn(root)
        figures: dict[str, Any] = {}
        try:
            spawned = time.monotonic()
            wait_first_status(proc, root)
            figures["startup_empty_s"] = time.monotonic() - spawned
            figures["rss_empty"] = _status_kib(proc.pid)["VmRSS"]
            figures.update(asyncio.run(fill(sock, attachments, peers, names, window, batch)))
            mem = _status_kib(proc.pid)
            figures["rss_filled"] = mem["VmRSS"]
            figures["hwm_filled"] = mem["VmHWM"]
        finally:
            figures["exit_code"] = stop(proc)
        figures["pace_s"] = machine_pace()
        figures.update(restart_once(root, sock, port, names))
        log = Path(root, "daemon.log").read_text(errors="replace")
        figures["tracebacks"] = log.count("Traceback")
        if figures["tracebacks"]:
            print(log[-3000:])
        figures["nebula_rss"] = nebula_rss(peers, root) if nebula else None
    figures.update(attachments=attachments, peers=peers, names=names)
    report(figures)
    return figures


def restart_once(root: str, sock: str, port: int, names: int) -> dict[str, Any]:
    """Start the daemon on ``root``'s state, time its first answer, measure, check, stop."""
    figures: dict[str, Any] = {}
    proc = spawn(root)
    try:
        spawned = time.monotonic()
        _, arrived = wait_first_status(proc, root)
        figures["startup_s"] = time.monotonic() - spawned
        figures["startup_answer_s"] = arrived - spawned
        figures["startup_cpu_s"] = _cpu_s(proc.pid)
        mem = _status_kib(proc.pid)
        figures["rss_restarted"] = mem["VmRSS"]
        figures["hwm_restarted"] = mem["VmHWM"]
        figures.update(verify(sock))
        figures["dns_sample"] = dns_sample(port, names)
    finally:
        figures["exit_code_restarted"] = stop(proc)
    return figures


def machine_pace(rounds: int = 5) -> float:
    """Seconds (the least of ``rounds``) this machine takes for a fixed Python workload.

    The development VM's speed drifts: the same daemon restarts in 1.7-1.8 s
    in a quick sitting and 2.2-2.9 s in a slow one, its CPU time moving with
    it. The workload is shaped like a start-up (one ``json.loads`` of 100,000
    stored records, a dict keyed by their lower-case names, 20,000 addresses
    parsed), so a start-up figure can be read against the pace of the
    sitting it was measured in. It is printed beside the figures, not part
    of them.
    """
    doc = json.dumps(
        [
            [f"Name-{i}.svc", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "m"]
            for i in range(100_000)
        ]
    )
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        rows = json.loads(doc)
        index = {(name.lower(), ip): source for name, ip, source in rows}
        parsed = [ipaddress.ip_address(ip) for _, ip, _ in rows[:20_000]]
        best = min(best, time.perf_counter() - started)
        del rows, index, parsed
    return best


def restart(root: str, names: int, repeat: int = 1) -> list[dict[str, Any]]:
    """Start the daemon on the state a ``keep`` run left in ``root``, ``repeat`` times.

    Each start is timed (spawn to the first ``status`` answered), its RSS read
    and its state checked (attachments, peers, a sample of the names); returns
    and prints one line of figures per start.
    """
    match = re.search(r'listen = \["127\.0\.0\.1:(\d+)"\]', Path(root, "overlayd.toml").read_text())
    if match is None:
        raise SystemExit(f"{root} holds no footprint state (run with --keep {root} first)")
    port = int(match.group(1))
    sock = os.path.join(root, "s.sock")
    pace = machine_pace()
    print(f"machine pace: {pace * 1000:.0f} ms for the reference workload (machine_pace)")
    runs = []
    for i in range(repeat):
        log = Path(root, "daemon.log")
        logged = log.stat().st_size if log.exists() else 0
        figures = restart_once(root, sock, port, names)
        with open(log, "rb") as f:
            f.seek(logged)
            figures["tracebacks"] = f.read().count(b"Traceback")
        print(
            f"restart {i + 1}: start-up {figures['startup_s']:.2f} s "
            f"({figures['startup_cpu_s']:.2f} s CPU, answer on the wire "
            f"{figures['startup_answer_s']:.2f} s), "
            f"RSS {_mib(figures['rss_restarted'])}, VmHWM {_mib(figures['hwm_restarted'])}, "
            f"{figures['attachments_after']} attachments, {figures['peers_after']} peers, "
            f"DNS sample {figures['dns_sample']}, tracebacks {figures['tracebacks']}"
        )
        figures["pace_s"] = pace
        runs.append(figures)
    return runs


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f} MiB"


def report(f: dict[str, Any]) -> None:
    print(
        f"footprint: {f['attachments']} attachments, {f['peers']} peers, "
        f"{f['names']} DNS names (fake driver)"
    )
    print(
        f"fill: {f['fill_attach_per_s']:.0f} attaches/s, {f['fill_peers_per_s']:.0f} peers/s, "
        f"{f['fill_names_per_s']:.0f} names/s ({f['fill_seconds']:.1f} s)"
    )
    neb = f["nebula_rss"]
    rows = [
        ("RSS, empty (after start)", _mib(f["rss_empty"]), "", "-"),
        ("RSS, filled", _mib(f["rss_filled"]), "< 300 MiB", _mib(neb)),
        ("VmHWM, filled", _mib(f["hwm_filled"]), "", "-"),
        ("start-up with the state", f"{f['startup_s']:.2f} s", "< 2 s", "-"),
        ("  its CPU time", f"{f['startup_cpu_s']:.2f} s", "", "-"),
        ("  answer on the wire", f"{f['startup_answer_s']:.2f} s", "", "-"),
        ("RSS after restart", _mib(f["rss_restarted"]), "< 300 MiB", "-"),
        ("VmHWM after restart", _mib(f["hwm_restarted"]), "", "-"),
        ("start-up, empty", f"{f['startup_empty_s']:.2f} s", "", "-"),
        ("machine pace (reference)", f"{f['pace_s'] * 1000:.0f} ms", "", "-"),
    ]
    print(f"{'figure':<26} {'overlayd':>12} {'target':>10} {'nebula':>12}")
    for row in rows:
        print(f"{row[0]:<26} {row[1]:>12} {row[2]:>10} {row[3]:>12}")
    if neb is not None:
        print(
            f"nebula: {f['peers']} hosts in static_host_map, tun disabled, RSS 1 s after "
            "start; it holds no attachments nor DNS names, so only the peers compare"
        )
    else:
        print("nebula: not measured (not installed, or it did not start)")
    print(
        f"after restart: {f['attachments_after']}/{f['attachments']} attachments, "
        f"{f['peers_after']}/{f['peers']} peers, DNS sample answered: {f['dns_sample']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attachments", type=int, default=10_000)
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=64, help="requests in flight")
    parser.add_argument("--batch", type=int, default=500, help="peers per apply_peers")
    parser.add_argument("--no-nebula", action="store_true", help="skip the Nebula column")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and leave the state there")
    parser.add_argument(
        "--restart", metavar="DIR", help="only restart on the state a --keep run left in DIR"
    )
    parser.add_argument("--repeat", type=int, default=1, help="restarts with --restart")
    parser.add_argument(
        "--bytecode",
        choices=["cached", "as-is"],
        default="cached",
        help="cached: the daemon's bytecode is kept between starts, as an installed "
        "package's is (default); as-is: the environment decides (PYTHONDONTWRITEBYTECODE)",
    )
    args = parser.parse_args()
    if args.bytecode == "cached":
        BYTECODE_CACHE[0] = os.path.join(
            tempfile.gettempdir(), f"overlayd-footprint-pycache-{os.getuid()}"
        )
    print(
        f"# daemon bytecode: {args.bytecode}"
        + (f" ({BYTECODE_CACHE[0]})" if BYTECODE_CACHE[0] else ""),
        file=sys.stderr,
    )
    if args.restart:
        runs = restart(args.restart, args.names, args.repeat)
        if args.json:
            print(json.dumps(runs, indent=2))
        sys.exit(0 if all(r["dns_sample"] >= 0 and not r["tracebacks"] for r in runs) else 1)
    figures = run(
        args.attachments,
        args.peers,
        args.names,
        window=args.window,
        batch=args.batch,
        nebula=not args.no_nebula,
        keep=args.keep,
    )
    if args.json:
        print(json.dumps(figures, indent=2))
    ok = (
        figures["attachments_after"] == args.attachments
        and figures["peers_after"] == args.peers
        and figures["dns_sample"] >= 0
        and not figures["tracebacks"]
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
