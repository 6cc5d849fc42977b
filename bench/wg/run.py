"""Benchmark the wireguard driver against wg(8) and raw UAPI, in throwaway namespaces.

Run as root: ``python bench/wg/run.py [--peers 1000] [--big 10000] [--iperf-secs 5]``.

Measures, in one run:

1. programming N peers: one raw UAPI ``set`` transaction (text prebuilt), the
   driver's ``peer_apply`` (one batch), and ``wg setconf``;
2. changing one peer on a device with 1,000 and with 10,000 peers: the
   driver's ``peer_apply`` and ``wg set``;
3. reading the status of 10,000 peers: ``peer_status`` and ``wg show dump``;
4. iperf3 TCP throughput through wireguard-go configured by the driver, and
   through wireguard-go configured by ``wg`` + ``ip`` (as wg-quick does).

Everything lives in namespaces named ``owgb-*`` (addresses 10.241.0.0/24 underlay,
10.242.0.0/16 overlay) that are deleted at the end, with every process started.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

    def wireguard_go(self, ns: str, ifname: str) -> None:
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


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    it = Lab()
    try:
        yield it
    finally:
        it.close()


def make_driver(ns: str) -> WireGuardDriver:
    drv = WireGuardDriver()
    drv.overlayd_configure(
        config=EngineConfig(
            drivers=[], driver_settings={"wireguard": {"backend": "userspace", "netns": ns}}
        )
    )
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


def iperf(lab: Lab, a: str, b: str, dst: str, secs: int) -> float:
    server = subprocess.Popen(
        ["ip", "netns", "exec", b, "iperf3", "-s", "-1", "-B", dst],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lab.procs.append(server)
    time.sleep(0.5)
    out = sh("ip", "netns", "exec", a, "iperf3", "-c", dst, "-t", str(secs), "-J").stdout
    server.wait(10)
    import json

    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def bench_iperf(lab: Lab, secs: int) -> dict[str, float]:
    na = lab.netns(f"owgb-{SFX}-ia")
    nb = lab.netns(f"owgb-{SFX}-ib")
    sh("ip", "link", "add", f"owgb{SFX}va", "netns", na, "type", "veth", "peer", "name",
       f"owgb{SFX}vb", "netns", nb)  # fmt: skip
    for ns, v, ip in ((na, f"owgb{SFX}va", "10.241.0.1"), (nb, f"owgb{SFX}vb", "10.241.0.2")):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", v)
        sh("ip", "-n", ns, "link", "set", v, "up")
    # 1. the driver, one per namespace
    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    da, db = make_driver(na), make_driver(nb)
    dev_a = device(da, f"owgb{SFX}ta", "10.242.0.1/24", 51820, ka.to_base64())
    dev_b = device(db, f"owgb{SFX}tb", "10.242.0.2/24", 51820, kb.to_base64())
    da.overlayd_peer_apply(
        device=dev_a,
        changes=[
            PeerChange(
                public_key=kb.public_key(),
                endpoint="10.241.0.2:51820",
                allowed_ips=(ipaddress.ip_network("10.242.0.2/32"),),
            )
        ],
    )
    db.overlayd_peer_apply(
        device=dev_b,
        changes=[
            PeerChange(
                public_key=ka.public_key(),
                endpoint="10.241.0.1:51820",
                allowed_ips=(ipaddress.ip_network("10.242.0.1/32"),),
            )
        ],
    )
    # 2. wireguard-go configured by wg + ip, as wg-quick does (MTU 1420)
    for ns, ifname, me, other, peer_ip, key in (
        (na, f"owgb{SFX}wa", "10.242.1.1", "10.241.0.2", "10.242.1.2", ka),
        (nb, f"owgb{SFX}wb", "10.242.1.2", "10.241.0.1", "10.242.1.1", kb),
    ):
        lab.wireguard_go(ns, ifname)
        other_key = (kb if key is ka else ka).public_key()
        keyfile = lab.tmp / f"{ifname}.key"
        keyfile.write_text(key.to_base64())
        keyfile.chmod(0o600)
        sh("ip", "netns", "exec", ns, "wg", "set", ifname, "private-key", str(keyfile),
           "listen-port", "51821", "peer", other_key, "endpoint", f"{other}:51821",
           "allowed-ips", f"{peer_ip}/32")  # fmt: skip
        sh("ip", "-n", ns, "addr", "add", f"{me}/24", "dev", ifname)
        sh("ip", "-n", ns, "link", "set", ifname, "mtu", "1420", "up")
    # Both tunnels are up side by side; measure them alternately, twice each,
    # so neither profits from running first (caches, CPU frequency, other load),
    # and keep each one's best run.
    ours = theirs = 0.0
    for _ in range(2):
        ours = max(ours, iperf(lab, na, nb, "10.242.0.2", secs))
        theirs = max(theirs, iperf(lab, na, nb, "10.242.1.2", secs))
    da.overlayd_device_delete(device=dev_a)
    db.overlayd_device_delete(device=dev_b)
    for d in (da, db):
        d.overlayd_shutdown()
    return {"driver_gbps": ours, "wg_gbps": theirs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--big", type=int, default=10000)
    parser.add_argument("--iperf-secs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (namespaces, TUN devices)", file=sys.stderr)
        return 2
    for tool in ("wireguard-go", "wg", "iperf3"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    with lab() as it:
        ns = it.netns(f"owgb-{SFX}-p")
        drv = make_driver(ns)
        try:
            prog = bench_program(it, ns, drv, args.peers)
            small = bench_one_change(it, ns, drv, 1000, "s")
            big = bench_one_change(it, ns, drv, args.big, "b")
        finally:
            drv.overlayd_shutdown()
        net = bench_iperf(it, args.iperf_secs)
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
            f"  {label:>12}: overlayd {r['change_med_ms']:6.2f} / {r['change_max_ms']:6.2f} ms"
            f"   wg set {r['wg_set_ms']:6.2f} ms"
        )
    print(
        f"  flatness: {big['change_med_ms'] / small['change_med_ms']:.2f}x (target: ~1x, <= 10 ms)"
    )
    print(f"status of {args.big:,} peers:")
    print(
        f"  overlayd peer_status {big['status_ms']:8.1f} ms"
        f"   wg show dump {big['wg_show_ms']:8.1f} ms"
    )
    print(f"iperf3 TCP over the tunnel ({args.iperf_secs} s):")
    print(
        f"  overlayd-configured {net['driver_gbps']:.2f} Gbit/s   wg-configured "
        f"{net['wg_gbps']:.2f} Gbit/s"
        f"   = {net['driver_gbps'] / net['wg_gbps']:.2f}x (target >= 0.95x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
