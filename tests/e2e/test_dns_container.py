"""A container resolves overlay names through its gateway, with dig and getent.

The daemon runs inside a throwaway "host" namespace with the linux_bridge
driver (and the fake driver for the WireGuard device this kernel cannot
create); a "container" namespace holds a sleeping process attached by pid.
Its resolver is the service gateway, where overlayd's DNS server listens.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.client import Client
from overlayd.testing.daemon import setup_lone_node
from overlayd.testing.daemon import start_daemon
from overlayd.testing.daemon import terminate

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig (dnsutils)"),
]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def in_ns(ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=20
    )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, object]]:
    tag = secrets.token_hex(3)
    host, cont = f"ovt-dns-{tag}-h", f"ovt-dns-{tag}-c"
    etc = Path("/etc/netns") / cont
    procs: list[subprocess.Popen[bytes]] = []
    ip("netns", "add", host)
    ip("netns", "add", cont)
    try:
        ip("-n", host, "link", "set", "lo", "up")
        sleeper = subprocess.Popen(["ip", "netns", "exec", cont, "sleep", "300"])
        procs.append(sleeper)
        # The built-in DNS server stays on (the default): the test resolves through it.
        config = '[drivers]\nenabled = ["linux_bridge", "fake"]\n'
        daemon = start_daemon(tmp_path, config, prefix=("ip", "netns", "exec", host))
        procs.append(daemon.proc)
        # The sleeper's pid as seen from the root pid namespace (ip netns exec execs).
        yield {
            "host": host,
            "cont": cont,
            "sock": daemon.socket,
            "pid": sleeper.pid,
            "etc": etc,
            "log": daemon.log,
        }
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(subprocess.TimeoutExpired):  # killed then
                terminate(proc, 15)
        shutil.rmtree(etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", cont], capture_output=True)
        subprocess.run(["ip", "netns", "del", host], capture_output=True)


def test_container_resolves_overlay_names_via_gateway(world: dict[str, object]) -> None:
    with Client(str(world["sock"])) as client:
        setup_lone_node(client, "prod")
        client.setup_service_overlay("web", "shared")
        att = client.attach_container({"platform": "linux_pid", "pid": world["pid"]}, "web")
        client.register_dns("db", "10.200.4.77")
    gateway = "10.200.4.1"
    cont = str(world["cont"])
    # the server reconciles its listeners right after the bridge comes up
    deadline = time.monotonic() + 10
    while True:
        out = in_ns(cont, "dig", "+short", "+time=1", "+tries=1", f"@{gateway}", "web.prod.local")
        if out.stdout.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert out.stdout.split() == [att.ip], (
        out.stdout,
        out.stderr,
        Path(str(world["log"])).read_text()[-2000:],
    )
    out = in_ns(cont, "dig", "+short", f"@{gateway}", "db.prod.local")
    assert out.stdout.split() == ["10.200.4.77"]
    out = in_ns(cont, "dig", f"@{gateway}", "nope.prod.local")
    assert "status: NXDOMAIN" in out.stdout

    # getent goes through the libc resolver: give the namespace a resolv.conf
    etc = Path(str(world["etc"]))
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"nameserver {gateway}\nsearch prod.local\n")
    out = in_ns(cont, "getent", "hosts", "db.prod.local")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "10.200.4.77"
    out = in_ns(cont, "getent", "hosts", "web")  # via the search domain
    assert out.stdout.split()[0] == att.ip
    assert os.path.exists(f"/proc/{world['pid']}")
