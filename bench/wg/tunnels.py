"""Throughput and CPU cost of tunnels between two namespaces (used by ``run.py``).

Each tunnel is a pair of processes, one per namespace, over the same veth
underlay. :func:`measure` runs one iperf3 TCP stream through a tunnel and
reads, around the client's run:

* the CPU time of the tunnel's two processes: ``utime + stime`` from
  ``/proc/PID/stat``, which covers all threads, including exited ones. The
  kernel work a process's system calls cause is in it, and so is softirq work
  that ran while the process was on the CPU: with tick-based accounting (no
  ``CONFIG_IRQ_TIME_ACCOUNTING``) a tick that hits a softirq is charged to the
  interrupted task as system time (and also counted as softirq in
  ``/proc/stat``). On a veth underlay the receive side of a datagram mostly
  runs in the sender's context (``netif_rx`` then ``do_softirq`` on return);
* the machine's softirq time (``/proc/stat``), which cannot be attributed to
  one process: it includes iperf3's and anything else running;
* UDP datagrams received and dropped for a full receive buffer
  (``Udp: InDatagrams, RcvbufErrors`` of ``/proc/net/snmp`` in the receiving
  namespace).

CPU cost is reported as core-seconds per gigabit carried (equal to cores
busy per Gbit/s of throughput).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """``utime + stime`` of the whole process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def machine_softirq_ticks() -> int:
    return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[7])


def udp_counters(ns: str) -> dict[str, int]:
    """The ``Udp:`` line of ``/proc/net/snmp`` inside namespace ``ns``."""
    text = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = [ln.split() for ln in text.splitlines() if ln.startswith("Udp:")]
    return dict(zip(lines[0][1:], (int(v) for v in lines[1][1:]), strict=True))


@dataclass(frozen=True)
class Sample:
    gbps: float
    gbit: float
    wall: float
    tunnel_cpu: float
    softirq: float
    retransmits: int
    datagrams: int
    dropped: int

    @property
    def cpu_per_gbit(self) -> float:
        return self.tunnel_cpu / self.gbit if self.gbit else float("inf")

    @property
    def softirq_per_gbit(self) -> float:
        return self.softirq / self.gbit if self.gbit else float("inf")

    @property
    def drop_share(self) -> float:
        total = self.datagrams + self.dropped
        return self.dropped / total if total else 0.0


def sample_from(
    iperf_json: str,
    wall: float,
    cpu_ticks_used: int,
    softirq_ticks: int,
    udp_before: dict[str, int],
    udp_after: dict[str, int],
) -> Sample:
    end = json.loads(iperf_json)["end"]
    received = end["sum_received"]
    return Sample(
        gbps=float(received["bits_per_second"]) / 1e9,
        gbit=float(received["bytes"]) * 8 / 1e9,
        wall=wall,
        tunnel_cpu=cpu_ticks_used / TICK,
        softirq=softirq_ticks / TICK,
        retransmits=int(end["sum_sent"].get("retransmits", 0)),
        datagrams=udp_after["InDatagrams"] - udp_before["InDatagrams"],
        dropped=udp_after["RcvbufErrors"] - udp_before["RcvbufErrors"],
    )


def measure(
    client_ns: str,
    server_ns: str,
    dst: str,
    secs: int,
    pids: Sequence[int],
    start: Callable[[list[str]], subprocess.Popen[bytes]],
) -> Sample:
    """One iperf3 run to ``dst`` with the tunnel processes ``pids`` measured.

    ``start`` launches (and registers for cleanup) a background process.
    """
    server = start(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", dst])
    time.sleep(0.5)
    udp0 = udp_counters(server_ns)
    soft0 = machine_softirq_ticks()
    cpu0 = sum(cpu_ticks(p) for p in pids)
    t0 = time.monotonic()
    out = subprocess.run(
        ["ip", "netns", "exec", client_ns, "iperf3", "-c", dst, "-t", str(secs), "-J"],
        check=True,
        capture_output=True,
        text=True,
        timeout=secs + 60,
    ).stdout
    wall = time.monotonic() - t0
    cpu1 = sum(cpu_ticks(p) for p in pids)
    soft1 = machine_softirq_ticks()
    udp1 = udp_counters(server_ns)
    server.wait(10)
    return sample_from(out, wall, cpu1 - cpu0, soft1 - soft0, udp0, udp1)


# ---------------------------------------------------------------------- Nebula


def nebula_config(
    *,
    tmp: Path,
    name: str,
    ifname: str,
    port: int,
    peer_overlay: str,
    peer_underlay: str,
    socket_buffer: int | None,
    cipher: str = "aes",
) -> str:
    """A Nebula host config: no lighthouse, the peer in ``static_host_map``.

    Everything else keeps Nebula's defaults (AES-256-GCM, MTU 1300, one
    routine, the kernel's socket buffer sizes) unless ``socket_buffer`` is set
    or ``cipher`` is ``chachapoly``.
    """
    listen = f"  host: 0.0.0.0\n  port: {port}\n"
    if socket_buffer:
        listen += f"  read_buffer: {socket_buffer}\n  write_buffer: {socket_buffer}\n"
    return (
        "pki:\n"
        f"  ca: {tmp / 'ca.crt'}\n"
        f"  cert: {tmp / (name + '.crt')}\n"
        f"  key: {tmp / (name + '.key')}\n"
        "static_host_map:\n"
        f'  "{peer_overlay}": ["{peer_underlay}:{port}"]\n'
        "lighthouse:\n  am_lighthouse: false\n  hosts: []\n"
        f"listen:\n{listen}"
        "punchy:\n  punch: false\n"
        f"tun:\n  dev: {ifname}\n"
        "logging:\n  level: warning\n"
        f"cipher: {cipher}\n"
        "firewall:\n"
        "  outbound:\n    - port: any\n      proto: any\n      host: any\n"
        "  inbound:\n    - port: any\n      proto: any\n      host: any\n"
    )


def nebula_pair(
    *,
    tmp: Path,
    namespaces: tuple[str, str],
    underlay: tuple[str, str],
    overlay: tuple[str, str],
    prefixlen: int,
    port: int,
    ifprefix: str,
    socket_buffer: int | None,
    cipher: str,
    start: Callable[[list[str]], subprocess.Popen[bytes]],
) -> list[int]:
    """Certificates (``nebula-cert`` into ``tmp``), configs, and a nebula per namespace.

    Returns the two nebula pids once the first ping went through.
    """
    tmp.mkdir(parents=True, exist_ok=True)

    def cert(*argv: str) -> None:
        subprocess.run(["nebula-cert", *argv], check=True, capture_output=True, timeout=60)

    cert("ca", "-name", "owgb", "-out-crt", str(tmp / "ca.crt"), "-out-key", str(tmp / "ca.key"))
    pids = []
    for i, ns in enumerate(namespaces):
        name = "ab"[i]
        cert(
            "sign", "-ca-crt", str(tmp / "ca.crt"), "-ca-key", str(tmp / "ca.key"),
            "-name", name, "-ip", f"{overlay[i]}/{prefixlen}",
            "-out-crt", str(tmp / f"{name}.crt"), "-out-key", str(tmp / f"{name}.key"),
        )  # fmt: skip
        conf = tmp / f"{name}.yml"
        conf.write_text(
            nebula_config(
                tmp=tmp,
                name=name,
                ifname=f"{ifprefix}{name}",
                port=port,
                peer_overlay=overlay[1 - i],
                peer_underlay=underlay[1 - i],
                socket_buffer=socket_buffer,
                cipher=cipher,
            )
        )
        # `ip netns exec` execs nebula itself, so the pid is nebula's.
        pids.append(start(["ip", "netns", "exec", ns, "nebula", "-config", str(conf)]).pid)
    wait_ping(namespaces[0], overlay[1])
    return pids


def wait_ping(ns: str, dst: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", dst], capture_output=True
        )
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no ping from {ns} to {dst} within {timeout} s")
        time.sleep(0.2)
