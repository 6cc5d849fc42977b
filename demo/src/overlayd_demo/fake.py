"""``overlayd demo --fake``: the two-node scenario without privileges or packets.

Two ``overlayd serve`` daemons on the fake driver (state in memory, sockets
and DNS servers on loopback, in a temporary directory) are driven through
:class:`overlayd.client.Client` exactly as the real demo drives its nodes;
the demo shows keys, addresses, peers and real DNS answers, everything but a
data plane.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from overlayd_demo.common import CLUSTER
from overlayd_demo.common import SERVICES
from overlayd_demo.common import SLICES
from overlayd_demo.common import WG_PORT
from overlayd_demo.common import DemoFailed
from overlayd_demo.common import attempt
from overlayd_demo.common import say
from overlayd_demo.common import tail

__all__ = ["fake_demo"]

_ZONE = "demo.local"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(tmp: Path, key: str, dns_port: int) -> subprocess.Popen[bytes]:
    """Start node ``key``'s daemon (its socket appears when it serves)."""
    config = tmp / f"node-{key}.toml"
    config.write_text(
        "\n".join(
            [
                f'socket = "{tmp / f"node-{key}.sock"}"',
                "[drivers]",
                'enabled = ["fake"]',
                "[dns]",
                f'zone = "{_ZONE}."',
                f'listen = ["127.0.0.1:{dns_port}"]',
                "listen_on_gateways = false",
                "forward = false",
                "[engine]",
                "health_interval_secs = 0",
                "",
            ]
        )
    )
    with (tmp / f"node-{key}.log").open("wb") as out:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "overlayd", "serve", "--in-memory", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _connect(tmp: Path, key: str, proc: subprocess.Popen[bytes]) -> Any:
    """A client of node ``key``'s daemon once it serves."""
    from overlayd.client import Client

    sock, log = tmp / f"node-{key}.sock", tmp / f"node-{key}.log"
    deadline = time.monotonic() + 30
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise DemoFailed(
                f"overlayd on node {key} did not start; its log ({log}) ends with:\n" + tail(log)
            )
        time.sleep(0.05)
    return Client(str(sock), timeout=10.0)


def _resolve(name: str, port: int) -> list[str]:
    import dns.message
    import dns.query

    answer = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=2)
    return sorted(str(r.address) for rrset in answer.answer for r in rrset)


def fake_demo() -> int:
    """Run the scenario on two fake-driver daemons; returns the exit code."""
    say("running on the FAKE driver: no root needed, and no packets move", step=True)
    say("(for the real thing run as root with the linux_bridge and wireguard drivers)")
    tmp = Path(tempfile.mkdtemp(prefix="ovd-demo-fake-"))
    ports = {key: _free_udp_port() for key in ("a", "b")}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    clients: dict[str, Any] = {}
    try:
        for key in ("a", "b"):  # both start at once
            procs[key] = _spawn(tmp, key, ports[key])
        for key, proc in procs.items():
            clients[key] = _connect(tmp, key, proc)
        say("setting up the global overlay on both nodes", step=True)
        keys: dict[str, str] = {}
        for key, client in clients.items():
            name = client.setup_global_overlay(
                deployment="demo",
                instance_id=key,
                cluster_cidr=CLUSTER,
                slice_cidr=SLICES[key],
                wg_port=WG_PORT,
                nat_enabled=False,
            )
            keys[key] = client.status().public_key or ""
            say(f"node {key}: {name} key {keys[key]} slice {SLICES[key]}")
        say("exchanging peers", step=True)
        for me, other in (("a", "b"), ("b", "a")):
            clients[me].add_peer(keys[other], f"node-{other}.invalid:{WG_PORT}", SLICES[other], 25)
            say(f"node {me} peers with node {other}")
        say("service overlays and two containers per node", step=True)
        ips: dict[str, list[str]] = {}
        for key, client in clients.items():
            client.setup_service_overlay(SERVICES[key], "shared")
            for i in (1, 2):
                answer = client.attach_container(
                    {"platform": "linux_pid", "pid": 1000 + i}, SERVICES[key]
                )
                ips.setdefault(key, []).append(str(answer.ip))
                say(f"node {key}: container {i} ({SERVICES[key]}) -> {answer.ip}")
        for me, other in (("a", "b"), ("b", "a")):
            for ip in ips[other]:
                clients[me].register_dns(SERVICES[other], ip)
        query = f"{SERVICES['b']}.{_ZONE}"
        say(f"node a's DNS server answers for {query}", step=True)
        got = _resolve(f"{query}.", ports["a"])
        say(f"{query} -> {', '.join(got)}")
        status = clients["a"].status()
        say("summary", step=True)
        say(
            f"node a: {status.interface} {status.node_ip}, {status.peer_count} peer(s), "
            f"{status.service_count} service(s)"
        )
        say("no ping on the fake driver: it models the host, it does not forward packets")
        return 0 if got == sorted(ips["b"]) else 1
    finally:
        for key, client in clients.items():
            attempt(f"stop overlayd on node {key}", client.shutdown)
            attempt("close the client", client.close)
        for key, proc in procs.items():
            if key not in clients and proc.poll() is None:
                proc.terminate()  # it never served: nothing to ask it
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
