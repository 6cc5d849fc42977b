"""NAT traversal: overlayd against Nebula 1.6 in the same topology, in one run.

Not a test: it prints figures side by side. Run as root on Debian with
``coturn``, ``wireguard-go``, ``nebula`` and ``iperf3`` installed::

    sudo .venv/bin/python bench/nat/run.py [--cases eim/eim,eim/sym,sym/sym] [--seconds 5]
        [--forwarders python,native] [--one-allocation] [--no-upgrade] [--nebula-relay-only]

The topology is the lab of ``tests/e2e/test_nat_traversal.py`` (a "public"
switch with coturn, two NAT routers, a node and a container behind each),
built fresh for every case and removed afterwards. For each NAT case:

* overlayd (``linux_bridge`` + ``wireguard``, wireguard-go, TURN on coturn):
  time from the moment both nodes are told about each other (``add_peer`` and
  ``nat_peer_candidates``; daemons already running, as they are in
  production) to the first container-to-container ping, and the path chosen;
* Nebula with a lighthouse on the switch (relays off; skipped with
  ``--nebula-relay-only``, since behind a symmetric NAT it waits 30 s for no
  path), then with the lighthouse as relay: time from starting both hosts'
  ``nebula`` (lighthouse already running) to the first ping over the Nebula
  addresses;
* throughput (iperf3, one TCP stream) over the path each found;
* overlayd only: a relayed peer whose direct path becomes possible (router B
  switches from symmetric to endpoint-independent mapping): seconds until it
  is direct, with no traffic on the tunnel.

A relayed overlayd path says how it relays (the daemons' logs): ``both``
(each node sends through its own allocation) or ``owner a``/``owner b`` (one
allocation, that node's, relays the pair). Both nodes have a TURN server, so
a relayed pair relays ``both`` unless that fails; ``--one-allocation`` adds,
per case and forwarder, a run in which only node a has one (``owner a``).
Throughput is given per direction, a->b and b->a.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from overlayd.testing.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


lab_mod = load_script(ROOT / "tests" / "e2e" / "test_nat_traversal.py", "nat_lab")
run = lab_mod.run

NEBULA_NET = "192.168.100.0/24"
LIGHTHOUSE_IP = "192.168.100.1"


def first_ping(ns: str, ip: str, limit: float, start: float) -> float | None:
    """Seconds from ``start`` (monotonic) to the first answered ping, or None."""
    while time.monotonic() - start < limit:
        res = run("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "0.2", ip, check=False)
        if res.returncode == 0:
            return time.monotonic() - start
    return None


def iperf_both(client_ns: str, server_ns: str, ip: str, seconds: float) -> dict[str, Any]:
    """Gbit/s a->b and b->a (``-R``), one TCP stream each."""
    return {
        "a_to_b": iperf(client_ns, server_ns, ip, seconds),
        "b_to_a": iperf(client_ns, server_ns, ip, seconds, reverse=True),
    }


def rcvbuf_errors(ns: str) -> int:
    """UDP datagrams the kernel of ``ns`` dropped at a full socket buffer (the relay's)."""
    res = run("ip", "netns", "exec", ns, "nstat", "-az", "UdpRcvbufErrors", check=False)
    fields = res.stdout.split()
    return int(fields[fields.index("UdpRcvbufErrors") + 1]) if "UdpRcvbufErrors" in fields else 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(
    client_ns: str, server_ns: str, ip: str, seconds: float, relay_ns: str, pids: list[int]
) -> dict[str, Any]:
    """:func:`iperf_both`, and per direction the relay host's drops and the CPU of ``pids``."""
    out: dict[str, Any] = {"gbit_s": {}, "relay_drops": {}, "cpu_s": {}}
    for key, reverse in (("a_to_b", False), ("b_to_a", True)):
        drops, cpu = rcvbuf_errors(relay_ns), [cpu_seconds(p) for p in pids]
        out["gbit_s"][key] = iperf(client_ns, server_ns, ip, seconds, reverse=reverse)
        out["relay_drops"][key] = rcvbuf_errors(relay_ns) - drops
        out["cpu_s"][key] = [round(cpu_seconds(p) - c, 2) for p, c in zip(pids, cpu, strict=True)]
    return out


def iperf(
    client_ns: str, server_ns: str, ip: str, seconds: float, *, reverse: bool = False
) -> float | None:
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", "5211"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        res = subprocess.run(
            ["ip", "netns", "exec", client_ns, "iperf3", "-c", ip, "-p", "5211",
             "-t", str(seconds), "-J", *(["-R"] if reverse else [])],
            capture_output=True, text=True, timeout=seconds + 30, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            return None
        data = json.loads(res.stdout)
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.kill()
        server.wait(5)


# -- overlayd ------------------------------------------------------------------


def relay_mode(a: Any, b: Any) -> str | None:
    """How the pair relays, from the daemons' logs: ``both``, ``owner a`` or ``owner b``.

    An overlayd from before both relay does not log it and always relays
    through the smaller key's allocation.
    """
    mode_a, mode_b = a.relay_mode(), b.relay_mode()  # each reads its daemon's log
    if mode_a is None and mode_b is None:
        return "owner a" if a.public_key < b.public_key else "owner b"
    if mode_a == mode_b == "both":
        return "both"
    if {mode_a, mode_b} == {"own", "theirs"}:
        return "owner a" if mode_a == "own" else "owner b"
    return f"{mode_a}/{mode_b}"  # not agreed


def overlayd_case(
    nat_a: str, nat_b: str, seconds: float, forwarder: str = "auto", *, turn_b: bool = True
) -> dict[str, Any]:
    """``turn_b`` False: only node a has a TURN server (it relays the pair alone)."""
    lab = lab_mod.Lab()
    try:
        a, b = lab.start_pair(nat_a, nat_b, turn_b=turn_b, forwarder=forwarder)
        t0 = time.monotonic()
        lab.introduce(a, b)
        lab.start_exchange(a, b)
        took = first_ping(a.container_ns, b.container_ip, 15.0, t0)
        time.sleep(0.5)
        path = a.path_of(b)
        mode = relay_mode(a, b) if path == "relayed" else None
        pids = [n.proc.pid for n in (a, b) if n.proc is not None]
        result = measured(a.container_ns, b.container_ns, b.container_ip, seconds, lab.pub, pids)
        return {"first_ping_s": took, "path": path, "forwarder": forwarder, "mode": mode,
                **result}  # fmt: skip
    finally:
        lab.close()


def overlayd_upgrade(seconds_limit: float = 30.0) -> dict[str, Any]:
    """Relayed (EIM/sym), then router B becomes endpoint-independent: time until direct."""
    lab = lab_mod.Lab()
    try:
        a, b = lab.start_pair("eim", "sym", forwarder="auto")
        lab.introduce(a, b)
        lab.start_exchange(a, b)
        lab_mod.wait_until(lambda: a.path_of(b) == "relayed", 15, "a relayed path")
        lab.change_router("b", lab_mod.router_rules("eim"))
        start = time.monotonic()
        with contextlib.suppress(AssertionError):
            lab_mod.wait_until(
                lambda: a.path_of(b) == "direct" and b.path_of(a) == "direct",
                seconds_limit,
                "direct",
                0.2,
            )
            return {"to_direct_s": time.monotonic() - start, "refresh_s": lab_mod.REFRESH}
        return {"to_direct_s": None, "refresh_s": lab_mod.REFRESH}
    finally:
        lab.close()


# -- Nebula --------------------------------------------------------------------


def _nebula_config(
    path: Path, cert: str, *, lighthouse: bool, relays: bool, listen_port: int
) -> None:
    d = path.parent
    lines = [
        f"pki:\n  ca: {d / 'ca.crt'}\n  cert: {d / (cert + '.crt')}\n  key: {d / (cert + '.key')}",
        f'static_host_map:\n  "{LIGHTHOUSE_IP}": ["10.240.0.1:4242"]',
        "lighthouse:",
        f"  am_lighthouse: {'true' if lighthouse else 'false'}",
        "  interval: 10",
    ]
    if not lighthouse:
        lines.append(f'  hosts: ["{LIGHTHOUSE_IP}"]')
    lines += [
        f"listen:\n  host: 0.0.0.0\n  port: {listen_port}",
        "punchy:\n  punch: true\n  respond: true",
        "relay:",
        f"  am_relay: {'true' if lighthouse and relays else 'false'}",
        f"  use_relays: {'true' if relays else 'false'}",
    ]
    if relays and not lighthouse:
        lines.append(f'  relays: ["{LIGHTHOUSE_IP}"]')
    lines += [
        "tun:\n  dev: nebula1\n  mtu: 1300",
        "logging:\n  level: warning",
        "firewall:\n  outbound:\n    - port: any\n      proto: any\n      host: any\n"
        "  inbound:\n    - port: any\n      proto: any\n      host: any",
    ]
    path.write_text("\n".join(lines) + "\n")


def nebula_case(nat_a: str, nat_b: str, relays: bool, seconds: float) -> dict[str, Any]:
    lab = lab_mod.Lab()
    work = Path(tempfile.mkdtemp(prefix="onebula", dir="/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        a, b = lab.build(nat_a, nat_b)
        run("nebula-cert", "ca", "-name", "bench", "-out-crt", str(work / "ca.crt"),
            "-out-key", str(work / "ca.key"))  # fmt: skip
        for name, ip in (("lh", "192.168.100.1"), ("a", "192.168.100.2"), ("b", "192.168.100.3")):
            crt, key = str(work / f"{name}.crt"), str(work / f"{name}.key")
            run("nebula-cert", "sign", "-ca-crt", str(work / "ca.crt"), "-ca-key",
                str(work / "ca.key"), "-name", name, "-ip", f"{ip}/24",
                "-out-crt", crt, "-out-key", key)  # fmt: skip
        _nebula_config(work / "lh.yml", "lh", lighthouse=True, relays=relays, listen_port=4242)
        for name in ("a", "b"):
            _nebula_config(work / f"{name}.yml", name, lighthouse=False, relays=relays,
                           listen_port=4242)  # fmt: skip
        procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", lab.pub, "nebula", "-config", str(work / "lh.yml")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        time.sleep(1.0)
        t0 = time.monotonic()
        for node, name in ((a, "a"), (b, "b")):
            procs.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        node.ns,
                        "nebula",
                        "-config",
                        str(work / f"{name}.yml"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        took = first_ping(a.ns, "192.168.100.3", 30.0, t0)
        if took is None:
            return {"first_ping_s": None, "gbit_s": None}
        pids = [p.pid for p in procs]
        return {
            "first_ping_s": took,
            **measured(a.ns, b.ns, "192.168.100.3", seconds, lab.pub, pids),
        }
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)
        lab.close()
        shutil.rmtree(work, ignore_errors=True)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "none"
    if isinstance(value, dict):
        return "/".join(_fmt(v) for v in value.values())
    if isinstance(value, float):
        return f"{value:.3f}{unit}"
    return str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cases", default="eim/eim,eim/sym,sym/sym")
    parser.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration")
    parser.add_argument("--no-nebula", action="store_true")
    parser.add_argument(
        "--nebula-relay-only",
        action="store_true",
        help="run Nebula with its relay only (without, symmetric NATs wait 30 s for no path)",
    )
    parser.add_argument(
        "--forwarders",
        default="auto",
        help="comma-separated relay_forwarder values, each run as its own overlayd case "
        "(e.g. python,native to compare them in one run)",
    )
    parser.add_argument(
        "--one-allocation",
        action="store_true",
        help="also run each overlayd case with a TURN server on node a only (single owner)",
    )
    parser.add_argument("--no-upgrade", action="store_true", help="skip the relayed -> direct case")
    args = parser.parse_args()
    for tool in ("turnserver", "wireguard-go", "iperf3"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    nebula = not args.no_nebula and shutil.which("nebula") is not None
    rows = []
    forwarders = args.forwarders.split(",")
    for case in args.cases.split(","):
        nat_a, nat_b = case.split("/")
        runs = [(f, True) for f in forwarders]
        if args.one_allocation:
            runs += [(f, False) for f in forwarders]
        row: dict[str, Any] = {
            "case": case,
            "overlayd": [
                overlayd_case(nat_a, nat_b, args.seconds, f, turn_b=turn_b) for f, turn_b in runs
            ],
        }
        if nebula:
            row["nebula"] = (
                {"first_ping_s": None, "gbit_s": None, "skipped": True}
                if args.nebula_relay_only
                else nebula_case(nat_a, nat_b, False, args.seconds)
            )
            row["nebula_relay"] = nebula_case(nat_a, nat_b, True, args.seconds)
        rows.append(row)
        print(json.dumps(row), flush=True)
    upgrade = None if args.no_upgrade else overlayd_upgrade()
    print(json.dumps({"relayed_to_direct": upgrade}), flush=True)
    print()
    print("Gbit/s columns: a->b/b->a")
    print("drops: datagrams the relay host dropped at a full socket buffer, per direction")
    header = (
        f"{'case':9} {'forwarder':>9} {'mode':>7} {'1st ping':>10} {'path':>8} "
        f"{'Gbit/s':>13} {'drops':>11}"
    )
    if nebula:
        header += (
            f" | {'nebula':>8} {'Gbit/s':>13} | {'nebula+relay':>12} {'Gbit/s':>13} {'drops':>11}"
        )
    print(header)
    for row in rows:
        for index, o in enumerate(row["overlayd"]):
            line = (
                f"{row['case']:9} {o['forwarder']:>9} {_fmt(o['mode']):>7} "
                f"{_fmt(o['first_ping_s'], ' s'):>10} {_fmt(o['path']):>8} "
                f"{_fmt(o['gbit_s']):>13} {_fmt(o['relay_drops']):>11}"
            )
            if nebula and index == 0:
                n, r = row["nebula"], row["nebula_relay"]
                n_ping = "skipped" if n.get("skipped") else _fmt(n["first_ping_s"], " s")
                n_gbit = "skipped" if n.get("skipped") else _fmt(n["gbit_s"])
                line += (
                    f" | {n_ping:>8} {n_gbit:>13}"
                    f" | {_fmt(r['first_ping_s'], ' s'):>12} {_fmt(r['gbit_s']):>13}"
                    f" {_fmt(r.get('relay_drops')):>11}"
                )
            print(line)
    if upgrade is not None:
        print(
            f"relayed -> direct once possible: {_fmt(upgrade['to_direct_s'], ' s')} "
            f"(refresh {upgrade['refresh_s']} s, no traffic)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
