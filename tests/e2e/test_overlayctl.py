"""End to end: the ``overlayctl`` command line against ``overlayd serve --driver fake``."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlayd import protocol as p
from overlayd.keys import generate_private_key
from overlayd.keys import public_key
from overlayd.testing.daemon import start_daemon

_CTL = "import sys; from overlayd.cli import overlayctl_main; sys.exit(overlayctl_main())"


@pytest.fixture
def sock() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="octl-", dir="/tmp"))  # socket paths stay short
    daemon = start_daemon(root, args=["--driver", "fake", "--no-dns"])
    try:
        yield daemon.socket
    finally:
        assert daemon.stop() == 0, daemon.log_text()
        shutil.rmtree(root, ignore_errors=True)


def ctl(sock: Path, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CTL, "--socket", str(sock), "--timeout", str(timeout), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def ctl_json(sock: Path, *args: str) -> Any:
    out = ctl(sock, "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _key() -> str:
    return public_key(generate_private_key())


_SETUP = json.dumps(
    {
        "op": "setup_global_overlay",
        "deployment": "ctl",
        "instance_id": "n1",
        "cluster_cidr": "10.200.0.0/16",
        "slice_cidr": "10.200.1.0/24",
        "wg_port": 51820,
        "nat_enabled": False,
    }
)


def test_call_drives_every_op(sock: Path) -> None:
    key = _key()
    peer = _key()
    requests: list[tuple[dict[str, Any], str]] = [
        ({"op": "hello"}, "hello"),
        ({"op": "set_local_node_id", "node_id": 3}, "ok"),
        ({"op": "set_local_wg_pubkey", "pubkey": key}, "ok"),
        (json.loads(_SETUP), "bridge_name"),
        ({"op": "setup_service_overlay", "service": "web", "mode": "shared"}, "service_overlay"),
        ({"op": "allocate_ip", "service": "web", "join_global": False}, "ip"),
        ({"op": "release_ip", "ip": "<allocated>"}, "ok"),
        (
            {
                "op": "attach_container",
                "handle": {"platform": "linux_pid", "pid": 77},
                "service": "web",
                "join_global": False,
            },
            "attached",
        ),
        (
            {
                "op": "add_peer",
                "public_key": peer,
                "endpoint": "10.9.0.2:51820",
                "allowed_ips": "10.200.2.0/24",
                "persistent_keepalive_secs": 0,
            },
            "ok",
        ),
        ({"op": "add_allowed_ip", "pubkey": peer, "cidr": "10.200.5.0/24"}, "ok"),
        ({"op": "remove_allowed_ip", "pubkey": peer, "cidr": "10.200.5.0/24"}, "ok"),
        (
            {"op": "apply_peers", "changes": [{"public_key": peer, "endpoint": "10.9.0.3:51820"}]},
            "ok",
        ),
        ({"op": "register_dns", "name": "db", "ip": "10.200.1.9"}, "ok"),
        ({"op": "unregister_dns", "name": "db"}, "ok"),
        ({"op": "status"}, "status"),
        ({"op": "nat_tick"}, "ok"),
        (
            {
                "op": "nat_peer_candidates",
                "public_key": peer,
                "candidates": [{"kind": "host", "endpoint": "10.9.0.3:51820"}],
            },
            "ok",
        ),
        ({"op": "list_attachments"}, "attachments"),
        ({"op": "list_leases", "pool": "service:web"}, "leases"),
        ({"op": "gc", "live": [{"platform": "linux_pid", "pid": 77}]}, "gc_report"),
        ({"op": "reconcile"}, "reconcile_report"),
        (
            {
                "op": "attach_interface",
                "handle": {"platform": "netns", "path": "/run/netns/c1", "container_id": "c1"},
                "service": "web",
            },
            "attachment",
        ),
        ({"op": "detach_container", "handle": {"platform": "netns", "container_id": "c1"}}, "ok"),
        (
            {
                "op": "map_port",
                "protocol": "tcp",
                "host_port": 18080,
                "container_ip": "10.200.4.2",
                "container_port": 80,
            },
            "ok",
        ),
        (
            {
                "op": "unmap_port",
                "protocol": "tcp",
                "host_port": 18080,
                "container_ip": "10.200.4.2",
                "container_port": 80,
            },
            "ok",
        ),
        ({"op": "remove_peer", "pubkey": peer}, "ok"),
        # the CNI plugin run by the daemon (overlayd-cni is installed beside it)
        ({"op": "cni_exec", "command": "VERSION", "stdin": '{"cniVersion":"1.0.0"}'}, "cni_result"),
        ({"op": "detach_container", "handle": {"platform": "linux_pid", "pid": 77}}, "ok"),
        ({"op": "teardown_service_overlay", "service": "web"}, "ok"),
        ({"op": "teardown_global_overlay"}, "ok"),
    ]
    answers: dict[str, Any] = {}
    for request, result in requests:
        if request.get("ip") == "<allocated>":
            request["ip"] = answers["allocate_ip"]["ip"]
        out = ctl(sock, "call", json.dumps(request))
        assert out.returncode == 0, (request, out.stderr)
        answer = json.loads(out.stdout)
        assert answer["result"] == result, (request, answer)
        answers[request["op"]] = answer
    assert answers["allocate_ip"]["ip"].startswith("10.200.1.")
    assert answers["status"]["peers"][0]["endpoint"] == "10.9.0.3:51820"
    assert answers["list_leases"]["leases"][0]["pool"] == "service:web"
    assert answers["gc"] == {"result": "gc_report", "released": [], "kept": 1}
    version = answers["cni_exec"]
    assert version["exit_code"] == 0
    assert json.loads(version["stdout"])["supportedVersions"] == ["1.0.0", "1.1.0"]
    # cluster_status: this daemon has no [cluster] table, so the op is an error
    # (tests/e2e/test_cluster_daemon.py drives it in cluster mode)
    out = ctl(sock, "call", '{"op":"cluster_status"}')
    assert out.returncode == 1 and "cluster mode is not enabled" in out.stderr
    assert {r["op"] for r, _ in requests} | {"shutdown", "cluster_status"} == set(p.ALL_OPS)
    leases = ctl_json(sock, "state")["leases"]
    assert answers["allocate_ip"]["ip"] not in {lease["ip"] for lease in leases}
    out = ctl(sock, "call", '{"op":"shutdown"}')
    assert out.returncode == 0
    assert json.loads(out.stdout) == {"result": "ok"}


def test_subcommands(sock: Path) -> None:
    assert ctl(sock, "call", _SETUP).returncode == 0
    assert (
        ctl(sock, "call", '{"op":"setup_service_overlay","service":"web","mode":"auto"}').returncode
        == 0
    )

    status = ctl(sock, "status")
    assert status.returncode == 0
    assert "interface:    zl-ctl-n1-g" in status.stdout
    assert "node ip:      10.200.1.1" in status.stdout
    assert ctl_json(sock, "status")["service_count"] == 1

    attached = ctl_json(sock, "attach", "--pid", "1234", "--service", "web", "--join-global")
    assert attached["result"] == "attached"
    text = ctl(sock, "attach", "--netns", "/run/netns/c1", "--service", "web")
    assert text.returncode == 0
    assert "handle:  netns:/run/netns/c1" in text.stdout
    guest = ctl_json(
        sock,
        "attach",
        "--guest",
        "vm1",
        "--service",
        "web",
        "--dns-server",
        "10.200.1.1",
        "--dns-domain",
        "ctl.local",
    )
    assert guest["result"] == "guest_config"
    assert guest["dns_domain"] == "ctl.local"

    state = ctl_json(sock, "state")
    assert {a["handle"]["platform"] for a in state["attachments"]} == {
        "linux_pid",
        "netns",
        "guest_managed",
    }
    assert any(lease["pool"] == "node" for lease in state["leases"])
    table = ctl(sock, "state", "--service", "web")
    assert table.returncode == 0
    assert "pid:1234" in table.stdout and "netns:/run/netns/c1" in table.stdout

    peer = _key()
    assert (
        ctl(
            sock,
            "peers",
            "add",
            peer,
            "--endpoint",
            "10.9.0.2:51820",
            "--allowed-ips",
            "10.200.2.0/24",
            "--keepalive",
            "25",
        ).returncode
        == 0
    )
    assert ctl(sock, "peers", "allow", peer, "10.200.6.0/24").returncode == 0
    peers = ctl_json(sock, "peers")["peers"]
    row = next(x for x in peers if x["public_key"] == peer)
    assert row["allowed_ips"] == "10.200.2.0/24,10.200.6.0/24"
    assert ctl(sock, "peers", "disallow", peer, "10.200.6.0/24").returncode == 0
    listing = ctl(sock, "peers", "list")
    assert listing.returncode == 0
    assert peer in listing.stdout and "never" in listing.stdout
    assert ctl(sock, "peers", "remove", peer).returncode == 0
    assert peer not in ctl(sock, "peers").stdout

    assert ctl(sock, "dns", "register", "api", "10.200.1.40").stdout.strip() == "api -> 10.200.1.40"
    assert ctl(sock, "dns", "unregister", "api").returncode == 0

    drivers = ctl(sock, "drivers")
    assert drivers.returncode == 0
    assert "fake" in drivers.stdout and "protocol version: 1" in drivers.stdout
    assert [d["name"] for d in ctl_json(sock, "drivers")["drivers"]] == ["fake"]

    dry = ctl_json(sock, "gc", "--live", "pid:1234", "guest:vm1", "--dry-run")
    assert dry["released"] == [{"platform": "netns", "path": "/run/netns/c1"}]
    assert len(ctl_json(sock, "state")["attachments"]) == 3
    done = ctl(sock, "gc", "--live", "pid:1234", '{"platform":"guest_managed","id":"vm1"}')
    assert done.returncode == 0
    assert "released 1 attachment(s); 2 kept" in done.stdout
    assert ctl_json(sock, "reconcile")["errors"] == []
    assert ctl(sock, "nat-tick").returncode == 0
    assert ctl(sock, "detach", "--pid", "1234").stdout.strip() == "detached pid:1234"
    assert len(ctl_json(sock, "state")["attachments"]) == 1


def test_exit_codes(sock: Path) -> None:
    # 1: the daemon answered err, its message on stderr
    out = ctl(sock, "attach", "--pid", "5", "--service", "web")
    assert out.returncode == 1
    assert "call setup_global_overlay first" in out.stderr
    out = ctl(sock, "call", '{"op":"release_ip","ip":"10.77.0.1"}')
    assert out.returncode == 1
    assert json.loads(out.stdout)["result"] == "err"
    # 2: usage errors, before anything is sent
    assert ctl(sock, "attach", "--service", "web").returncode == 2  # no handle
    assert ctl(sock, "nosuchcommand").returncode == 2
    out = ctl(sock, "call", "{not json")
    assert out.returncode == 2
    assert "not valid JSON" in out.stderr
    out = ctl(sock, "call", '{"op":"frobnicate"}')
    assert out.returncode == 2
    assert "unknown op 'frobnicate'" in out.stderr
    out = ctl(sock, "dns", "register", "api", "not-an-ip")
    assert out.returncode == 2
    assert "not-an-ip" in out.stderr
    out = ctl(sock, "gc", "--live", "bogus")
    assert out.returncode == 2
    # 3: cannot connect
    out = ctl(sock.parent / "nosuch.sock", "status")
    assert out.returncode == 3
    assert "cannot connect" in out.stderr


def test_timeout_exit_code() -> None:
    root = Path(tempfile.mkdtemp(prefix="octl-", dir="/tmp"))
    path = root / "mute.sock"
    mute = socket.socket(socket.AF_UNIX)
    mute.bind(str(path))
    mute.listen(4)  # accepts (via the backlog) but never answers
    try:
        out = ctl(path, "status", timeout=0.5)
        assert out.returncode == 4
        assert "did not answer" in out.stderr
    finally:
        mute.close()
        shutil.rmtree(root, ignore_errors=True)


def test_help_documents_exit_codes() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CTL, "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    assert "3  cannot connect" in out.stdout
    assert "4  the daemon did not answer within --timeout" in out.stdout


def test_overlayd_version_and_drivers() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "overlayd", "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    assert out.stdout.strip().startswith("overlayd ")
    out = subprocess.run(
        [sys.executable, "-m", "overlayd", "drivers", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    names = [d["name"] for d in json.loads(out.stdout)["drivers"]]
    assert "fake" in names


def test_ports_map_and_unmap(sock: Path) -> None:
    """`overlayctl ports` drives the map_port / unmap_port ops."""
    assert ctl(sock, "call", _SETUP).returncode == 0  # ports map to overlay addresses
    out = ctl(sock, "ports", "map", "18080", "10.200.4.2:80")
    assert out.returncode == 0, out.stderr
    assert "tcp/18080 -> 10.200.4.2:80" in out.stdout
    clash = ctl(sock, "ports", "map", "18080", "10.200.4.3:80")
    assert clash.returncode == 1
    assert "already mapped" in clash.stderr
    bad = ctl(sock, "ports", "map", "18080", "10.200.4.3")
    assert bad.returncode == 2
    out = ctl(sock, "ports", "unmap", "18080", "10.200.4.2:80")
    assert out.returncode == 0, out.stderr
