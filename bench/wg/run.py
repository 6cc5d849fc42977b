"""Benchmark the wireguard driver against wg(8) and raw UAPI, in throwaway namespaces.

Run as root: ``python bench/wg/run.py [--peers 1000] [--big 10000] [--iperf-secs 5]``.

Measures, in one run:

1. programming N peers: one raw UAPI ``set`` transaction (text prebuilt), the
   driver's ``peer_apply`` (one batch), and ``wg setconf``;
2. changing one peer on a device with 1,000 and with 10,000 peers: the
   driver's ``peer_apply`` and ``wg set``;
3. reading the status of 10,000 peers: ``peer_status`` and ``wg show dump``;
4. iperf3 TCP throughput and CPU cost per Gbit/s (``tunnels.py`` says how it
   is measured) over one veth underlay, in turn: wireguard-go run by the
   driver (its default tuning, and with the tuning off), wireguard-go
   configured by ``wg`` + ``ip`` (as wg-quick does), and Nebula (its
   defaults, and with 10 MiB socket buffers) when ``nebula`` is installed.

Everything lives in namespaces named ``owgb-*`` (addresses 10.241.0.0/24 underlay,
10.242.0.0/16 overlay) that are deleted at the end, with every process started
and the temporary directory (keys, Nebula certificates and configs).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import tunnels

from overlayd.config import EngineConfig
from overlayd.model import Device
from overlayd.model import DeviceSpec
from overlayd.model import PeerChange
from overlayd.plugins import DriverContext
from overlayd_wireguard.driver import WireGuardDriver
from overlayd_wireguard.keys import PrivateKey
from overlayd_wireguard.uapi import PeerOp
from overlayd_wireguard.uapi import SetRequest
from overlayd_wireguard.uapi import UapiClient
from overlayd_wireguard.uapi import encode_set
from overlayd_wireguard.userspace import UserspaceBackend

SFX = secrets.token_hex(2)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=120)


def rand_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_ms(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """Median and max of ``n`` runs, in milliseconds."""
    times = [timed(fn) * 1000 for _ in range(n)]
    return statistics.median(times), max(times)


class Lab:
    """Namespaces and processes to remove at the end."""

    def __init__(self) -> None:
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="owgb"))

    def netns(self, name: str) -> str:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        """A background process, stopped by :meth:`close`."""
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def wireguard_go(self, ns: str, ifname: str) -> subprocess.Popen[bytes]:
        """wireguard-go in ``ns`` (foreground, as wg-quick's userspace mode runs it)."""
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "wireguard-go", "-f", ifname],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        client = UapiClient()
        deadline = time.monotonic() + 10
        while not client.alive(ifname):
            if time.monotonic() > deadline:
                raise RuntimeError(f"wireguard-go for {ifname} did not start")
            time.sleep(0.02)
        return proc

    def close(self) -> None:
        for ns in self.namespaces:
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGTERM)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for ns in self.namespaces:
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.3)
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        for sock in Path("/var/run/wireguard").glob(f"owgb{SFX}*.sock"):
            sock.unlink(missing_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def make_driver(ns: str, options: dict[str, Any] | None = None) -> WireGuardDriver:
    drv = WireGuardDriver()
    settings = {"backend": "userspace", "netns": ns, **(options or {})}
    drv.overlayd_configure(config=EngineConfig(drivers=[], driver_settings={"wireguard": settings}))
    drv.overlayd_startup(context=DriverContext(data_dir=None, emit=lambda e: None))
    return drv


def device(
    drv: WireGuardDriver, name: str, address: str, port: int, key: str | None = None
) -> Device:
    dev = drv.overlayd_device_create(
        spec=DeviceSpec(
            kind="wireguard",
            name=name,
            owner="base",
            addresses=(ipaddress.ip_interface(address),),
            mtu=1420,
            listen_port=port,
            private_key=key or PrivateKey.generate().to_base64(),
        )
    )
    assert dev is not None
    return dev


def peers_for(n: int, base: int = 0) -> list[tuple[str, str, str]]:
    """(key, endpoint, allowed /32) for ``n`` peers."""
    out = []
    for i in range(base, base + n):
        ip = ipaddress.ip_address("10.242.0.0") + 256 + i
        out.append((rand_key(), f"10.241.{(i // 250) % 250}.{i % 250 + 1}:51820", f"{ip}/32"))
    return out


def wg_conf(private: str, peers: list[tuple[str, str, str]]) -> str:
    lines = ["[Interface]", f"PrivateKey = {private}"]
    for key, ep, ip in peers:
        lines += ["[Peer]", f"PublicKey = {key}", f"Endpoint = {ep}", f"AllowedIPs = {ip}"]
    return "\n".join(lines) + "\n"


def bench_program(lab: Lab, ns: str, drv: WireGuardDriver, n: int) -> dict[str, float]:
    peers = peers_for(n)
    # raw UAPI: one set with the text prebuilt (lower bound for any UAPI client)
    raw_if = f"owgb{SFX}r"
    lab.wireguard_go(ns, raw_if)
    text = encode_set(
        SetRequest(
            peers=tuple(PeerOp(public_key=k, endpoint=e, allowed_ips=(a,)) for k, e, a in peers)
        )
    )
    client = UapiClient(timeout=30)
    raw = timed(lambda: client.transact(raw_if, text, "set"))
    # wg setconf
    wg_if = f"owgb{SFX}w"
    lab.wireguard_go(ns, wg_if)
    conf = lab.tmp / "setconf.conf"
    conf.write_text(wg_conf(PrivateKey.generate().to_base64(), peers))
    wg = timed(lambda: sh("ip", "netns", "exec", ns, "wg", "setconf", wg_if, str(conf)))
    # the driver: one peer_apply batch
    dev = device(drv, f"owgb{SFX}d", "10.242.0.1/16", 52001)
    changes = [
        PeerChange(public_key=k, endpoint=e, allowed_ips=(ipaddress.ip_network(a),))
        for k, e, a in peers
    ]
    ours = timed(lambda: drv.overlayd_peer_apply(device=dev, changes=changes))
    assert len(drv.overlayd_peer_status(device=dev) or []) == n
    return {"raw": raw, "wg": wg, "driver": ours}


def bench_one_change(lab: Lab, ns: str, drv: WireGuardDriver, n: int, tag: str) -> dict[str, float]:
    peers = peers_for(n)
    dev = device(drv, f"owgb{SFX}{tag}", "10.242.0.1/16", 52100 + len(tag) + n % 97)
    drv.overlayd_peer_apply(
        device=dev,
        changes=[
            PeerChange(public_key=k, endpoint=e, allowed_ips=(ipaddress.ip_network(a),))
            for k, e, a in peers
        ],
    )
    target = peers[n // 2][0]
    counter = iter(range(1, 10**6))

    def change() -> None:
        i = next(counter)
        drv.overlayd_peer_apply(
            device=dev,
            changes=[PeerChange(public_key=target, endpoint=f"10.241.9.{i % 250 + 1}:51820")],
        )

    med, worst = median_ms(change, 50)
    # wg set on the same device (wg reads the device key set first, as it always does)
    wcount = iter(range(1, 10**6))

    def wg_change() -> None:
        i = next(wcount)
        sh(
            "ip", "netns", "exec", ns, "wg", "set", dev.name, "peer", target,
            "endpoint", f"10.241.8.{i % 250 + 1}:51820",
        )  # fmt: skip

    wg_med, _ = median_ms(wg_change, 10)
    status_med, _ = median_ms(lambda: drv.overlayd_peer_status(device=dev), 5)
    wg_show, _ = median_ms(lambda: sh("ip", "netns", "exec", ns, "wg", "show", dev.name, "dump"), 5)
    return {
        "change_med_ms": med,
        "change_max_ms": worst,
        "wg_set_ms": wg_med,
        "status_ms": status_med,
        "wg_show_ms": wg_show,
    }


@dataclass
class Tunnel:
    label: str
    dst: str
    pids: list[int]
    samples: list[tunnels.Sample] = field(default_factory=list)

    def best(self) -> float:
        return max(s.gbps for s in self.samples)

    def cpu_per_gbit(self) -> float:
        return sum(s.tunnel_cpu for s in self.samples) / sum(s.gbit for s in self.samples)

    def softirq_per_gbit(self) -> float:
        return sum(s.softirq for s in self.samples) / sum(s.gbit for s in self.samples)

    def drop_share(self) -> float:
        drops = sum(s.dropped for s in self.samples)
        return drops / max(1, drops + sum(s.datagrams for s in self.samples))


def driver_pair(
    lab: Lab, na: str, nb: str, tag: str, net: int, port: int, options: dict[str, Any]
) -> tuple[Tunnel, list[WireGuardDriver]]:
    """Two WireGuard drivers (one per namespace) joined by one tunnel."""
    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    drivers, devices = [], []
    for ns, side, key in ((na, "a", ka), (nb, "b", kb)):
        drv = make_driver(ns, options)
        index = 1 if side == "a" else 2
        dev = device(
            drv, f"owgb{SFX}{tag}{side}", f"10.242.{net}.{index}/24", port, key.to_base64()
        )
        drivers.append(drv)
        devices.append(dev)
    for drv, dev, other, index in (
        (drivers[0], devices[0], kb, 2),
        (drivers[1], devices[1], ka, 1),
    ):
        drv.overlayd_peer_apply(
            device=dev,
            changes=[
                PeerChange(
                    public_key=other.public_key(),
                    endpoint=f"10.241.0.{index}:{port}",
                    allowed_ips=(ipaddress.ip_network(f"10.242.{net}.{index}/32"),),
                )
            ],
        )
    pids = []
    for drv, dev in zip(drivers, devices, strict=True):
        backend = drv.backend
        assert isinstance(backend, UserspaceBackend)
        pid = backend.pid(dev.name)
        assert pid is not None
        pids.append(pid)
    tunnels.wait_ping(na, f"10.242.{net}.2")
    return Tunnel(f"overlayd{tag}", f"10.242.{net}.2", pids), drivers


def wg_pair(lab: Lab, na: str, nb: str, net: int, port: int) -> Tunnel:
    """wireguard-go configured by wg + ip, as wg-quick does (MTU 1420), untuned."""
    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    pids = []
    for ns, ifname, me, other, peer_ip, key, other_key in (
        (na, f"owgb{SFX}wa", f"10.242.{net}.1", "10.241.0.2", f"10.242.{net}.2", ka, kb),
        (nb, f"owgb{SFX}wb", f"10.242.{net}.2", "10.241.0.1", f"10.242.{net}.1", kb, ka),
    ):
        pids.append(lab.wireguard_go(ns, ifname).pid)
        keyfile = lab.tmp / f"{ifname}.key"
        keyfile.write_text(key.to_base64())
        keyfile.chmod(0o600)
        sh("ip", "netns", "exec", ns, "wg", "set", ifname, "private-key", str(keyfile),
           "listen-port", str(port), "peer", other_key.public_key(), "endpoint",
           f"{other}:{port}", "allowed-ips", f"{peer_ip}/32")  # fmt: skip
        sh("ip", "-n", ns, "addr", "add", f"{me}/24", "dev", ifname)
        sh("ip", "-n", ns, "link", "set", ifname, "mtu", "1420", "up")
    tunnels.wait_ping(na, f"10.242.{net}.2")
    return Tunnel("wg-configured", f"10.242.{net}.2", pids)


def bench_iperf(
    lab: Lab, secs: int, reps: int, nebula: bool, variants: bool
) -> tuple[list[Tunnel], str, str]:
    na = lab.netns(f"owgb-{SFX}-ia")
    nb = lab.netns(f"owgb-{SFX}-ib")
    sh("ip", "link", "add", f"owgb{SFX}va", "netns", na, "type", "veth", "peer", "name",
       f"owgb{SFX}vb", "netns", nb)  # fmt: skip
    for ns, v, ip in ((na, f"owgb{SFX}va", "10.241.0.1"), (nb, f"owgb{SFX}vb", "10.241.0.2")):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", v)
        sh("ip", "-n", ns, "link", "set", v, "up")
    # The driver's defaults, and the same driver with its tuning switched off
    # (the socket buffers left to wireguard-go).
    configs: list[tuple[str, dict[str, Any]]] = [
        ("", {}),
        (" untuned", {"userspace_socket_buffer": 0}),
    ]
    if variants:
        configs.append((" + nice -5", {"userspace_nice": -5}))
        # env(1) execs wireguard-go, so the supervised pid stays wireguard-go's
        gomax = ["env", "GOMAXPROCS=1", "wireguard-go"]
        configs.append((" + GOMAXPROCS=1", {"userspace_command": gomax}))
    found: list[Tunnel] = []
    drivers: list[WireGuardDriver] = []
    for i, (label, options) in enumerate(configs):
        tunnel, pair = driver_pair(lab, na, nb, f"{i}", 10 + i, 51820 + i, options)
        tunnel.label = "overlayd" + label
        found.append(tunnel)
        drivers += pair
    found.append(wg_pair(lab, na, nb, 20, 51830))
    if nebula:
        nebulas: list[tuple[str, int | None, str]] = [
            ("Nebula", None, "aes"),
            ("Nebula, 10 MiB buffers", 10 << 20, "aes"),
        ]
        if variants:
            # WireGuard's cipher, to tell the cipher's share of the difference
            nebulas.append(("Nebula, 10 MiB, chachapoly", 10 << 20, "chachapoly"))
        for j, (label, buf, cipher) in enumerate(nebulas):
            pids = tunnels.nebula_pair(
                tmp=lab.tmp / f"nebula{j}",
                namespaces=(na, nb),
                underlay=("10.241.0.1", "10.241.0.2"),
                overlay=(f"10.242.{30 + j}.1", f"10.242.{30 + j}.2"),
                prefixlen=24,
                port=4242 + j,
                ifprefix=f"owgb{SFX}n{j}",
                socket_buffer=buf,
                cipher=cipher,
                start=lab.start,
            )
            found.append(Tunnel(label, f"10.242.{30 + j}.2", pids))
    load_before = sh("uptime").stdout.strip()
    # All tunnels are up side by side; measure them in turn, ``reps`` rounds,
    # so that none profits from running first (caches, CPU frequency, other
    # load), and keep each one's best throughput.
    for rnd in range(reps):
        for t in found:
            sample = tunnels.measure(na, nb, t.dst, secs, t.pids, lab.start)
            t.samples.append(sample)
            print(
                f"  round {rnd + 1} {t.label:28} {sample.gbps:5.2f} Gbit/s  "
                f"{sample.cpu_per_gbit:5.2f} CPU-s/Gbit  drops {100 * sample.drop_share:4.1f} %  "
                f"retransmits {sample.retransmits}",
                flush=True,
            )
    load_after = sh("uptime").stdout.strip()
    for drv in drivers:
        drv.overlayd_shutdown()
    return found, load_before, load_after


def print_tunnels(found: list[Tunnel], secs: int, reps: int, loads: tuple[str, str]) -> None:
    print(f"iperf3, one TCP stream, {secs} s, best of {reps}, tunnels in turn:")
    print(f"  load before: {loads[0]}")
    print(f"  load after:  {loads[1]}")
    print(
        f"  {'tunnel':28} {'Gbit/s':>7} {'runs':>15} {'CPU-s/Gbit':>11} "
        f"{'softirq':>8} {'UDP drops':>10} {'retrans':>8}"
    )
    for t in found:
        runs = " ".join(f"{s.gbps:.2f}" for s in t.samples)
        print(
            f"  {t.label:28} {t.best():7.2f} {runs:>15} {t.cpu_per_gbit():11.2f} "
            f"{t.softirq_per_gbit():8.2f} {100 * t.drop_share():9.1f}% "
            f"{sum(s.retransmits for s in t.samples) // len(t.samples):8d}"
        )
    by_label = {t.label: t for t in found}
    ours = by_label["overlayd"]
    for other, target in (
        ("overlayd untuned", None),
        ("wg-configured", ">= 0.95x"),
        ("Nebula", ">= 1x"),
        ("Nebula, 10 MiB buffers", None),
    ):
        if other in by_label:
            ratio = ours.best() / by_label[other].best()
            goal = f" (target {target})" if target else ""
            print(f"  overlayd / {other}: {ratio:.2f}x{goal}")
    print(
        "  CPU-s/Gbit: user+system CPU time of the tunnel's two processes per gigabit "
        "carried (softirq work\n  that ran in their context included); softirq: the "
        "whole machine's softirq time per gigabit\n  (not attributable to one process). "
        "UDP drops: receive-buffer drops in the receiving namespace."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--big", type=int, default=10000)
    parser.add_argument("--iperf-secs", type=int, default=5)
    parser.add_argument("--reps", type=int, default=2, help="rounds over all tunnels")
    parser.add_argument(
        "--tunnels-only", action="store_true", help="skip the peer programming figures"
    )
    parser.add_argument(
        "--variants",
        action="store_true",
        help="also run overlayd with userspace_nice = -5 and with GOMAXPROCS=1, and Nebula "
        "with WireGuard's cipher",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (namespaces, TUN devices)", file=sys.stderr)
        return 2
    for tool in ("wireguard-go", "wg", "iperf3"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    nebula = shutil.which("nebula") is not None and shutil.which("nebula-cert") is not None
    if not nebula:
        print("nebula is not installed (apt-get install nebula): no Nebula figures")
    with contextlib.closing(Lab()) as it:
        if not args.tunnels_only:
            ns = it.netns(f"owgb-{SFX}-p")
            drv = make_driver(ns)
            try:
                prog = bench_program(it, ns, drv, args.peers)
                small = bench_one_change(it, ns, drv, 1000, "s")
                big = bench_one_change(it, ns, drv, args.big, "b")
            finally:
                drv.overlayd_shutdown()
        found, *loads = bench_iperf(it, args.iperf_secs, args.reps, nebula, args.variants)
    if not args.tunnels_only:
        print(f"program {args.peers} peers (one batch):")
        print(f"  raw UAPI set (prebuilt text) {prog['raw'] * 1000:8.1f} ms")
        print(
            f"  overlayd peer_apply          {prog['driver'] * 1000:8.1f} ms"
            f"  = {prog['driver'] / prog['raw']:.2f}x raw (target <= 1.2x)"
        )
        print(f"  wg setconf                   {prog['wg'] * 1000:8.1f} ms")
        print("change one peer (endpoint), median / max of 50:")
        for label, r in (("1,000 peers", small), (f"{args.big:,} peers", big)):
            print(
                f"  {label:>12}: overlayd {r['change_med_ms']:6.2f} / "
                f"{r['change_max_ms']:6.2f} ms   wg set {r['wg_set_ms']:6.2f} ms"
            )
        print(
            f"  flatness: {big['change_med_ms'] / small['change_med_ms']:.2f}x "
            "(target: ~1x, <= 10 ms)"
        )
        print(f"status of {args.big:,} peers:")
        print(
            f"  overlayd peer_status {big['status_ms']:8.1f} ms"
            f"   wg show dump {big['wg_show_ms']:8.1f} ms"
        )
    print_tunnels(found, args.iperf_secs, args.reps, (loads[0], loads[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
