"""The linux_bridge daemon against bad namespace handles, crashes mid-detach and a
firewall reload, driven over IPC and overlayctl inside throwaway namespaces.

The daemon runs in a throwaway "host" namespace (``ip netns exec``), so
everything it creates, and its "own" namespace, is that namespace. Workloads
are ``sleep`` processes in namespaces of their own (``unshare --net``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overlayd.testing.daemon import DaemonProcess
from overlayd.testing.daemon import raw_connect
from overlayd.testing.daemon import recv_frame
from overlayd.testing.daemon import send_request
from overlayd.testing.daemon import start_daemon
from overlayd_linux_bridge.testing import Netns
from overlayd_linux_bridge.testing import throwaway_netns

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

SETUP = {
    "op": "setup_global_overlay",
    "deployment": "lbh",
    "instance_id": "n1",
    "cluster_cidr": "10.241.0.0/16",
    "slice_cidr": "10.241.0.0/20",
    "wg_port": 51820,
    "nat_enabled": True,
}
WEB = {"op": "setup_service_overlay", "service": "web", "mode": "shared"}
_CTL = "import sys; from overlayd.cli import overlayctl_main; sys.exit(overlayctl_main())"


@dataclass
class Node:
    """The daemon in its throwaway host namespace, and how to start it again."""

    host: Netns
    root: Path
    daemon: DaemonProcess | None = None

    def start(self) -> DaemonProcess:
        config = (
            '[drivers]\nenabled = ["linux_bridge", "fake"]\n'
            f'[drivers.fake]\nstate_file = "{self.root / "fake-host.json"}"\n'
            "[dns]\nenabled = false\n[engine]\nhealth_interval_secs = 0\n"
        )
        self.daemon = start_daemon(
            self.root, config, prefix=["ip", "netns", "exec", self.host.name]
        )
        return self.daemon

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.daemon is not None
        with raw_connect(self.daemon.socket, timeout=30) as s:
            send_request(s, 1, request)
            frame = recv_frame(s)
        assert frame is not None, "the daemon closed the connection without an answer"
        response: dict[str, Any] = frame["response"]
        return response

    def attach(self, handle: dict[str, Any]) -> dict[str, Any]:
        """The answer to ``attach_container`` of ``handle`` to service web."""
        request = {"op": "attach_container", "handle": handle, "service": "web"}
        return self.call({**request, "join_global": False})

    def links(self) -> str:
        return self.host.ip("-o", "link", "show")


@pytest.fixture
def node() -> Iterator[Node]:
    root = Path(tempfile.mkdtemp(prefix="olh-", dir="/tmp"))
    with throwaway_netns() as make:
        n = Node(make("host"), root)
        n.host.ip("link", "set", "lo", "up")
        try:
            n.start()
            yield n
        finally:
            if n.daemon is not None and n.daemon.proc.poll() is None:
                n.daemon.stop()
            shutil.rmtree(root, ignore_errors=True)


class Workloads:
    """``sleep`` processes, each in a network namespace of its own."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, count: int) -> list[int]:
        own = os.stat("/proc/self/ns/net").st_ino
        new = [subprocess.Popen(["unshare", "--net", "sleep", "600"]) for _ in range(count)]
        self.procs += new
        deadline = time.monotonic() + 10
        for proc in new:
            while os.stat(f"/proc/{proc.pid}/ns/net").st_ino == own:
                assert time.monotonic() < deadline, "unshare did not enter a new namespace"
                time.sleep(0.01)
        return [proc.pid for proc in new]

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def workloads() -> Iterator[Workloads]:
    with contextlib.closing(Workloads()) as w:
        yield w


def _eth0(pid: int) -> str | None:
    """The IPv4 address of eth0 in the workload's namespace, or None without eth0."""
    out = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-o", "-4", "addr", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return None
    words = out.stdout.split()
    return words[words.index("inet") + 1].split("/")[0] if "inet" in words else ""


# -- namespace handles that are not a workload's ------------------------------------------


def test_netns_handles_that_are_not_a_workloads_namespace_are_refused(
    node: Node, tmp_path: Path
) -> None:
    assert node.call(SETUP)["result"] == "bridge_name"
    assert node.call(WEB)["result"] == "service_overlay"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    regular = tmp_path / "file"
    regular.write_text("not a namespace")
    assert node.daemon is not None
    pid = node.daemon.proc.pid  # `ip netns exec` execs the daemon: its pid
    cases = {
        str(fifo): "is a FIFO, not a network namespace",
        str(regular): "is a regular file, not a network namespace",
        "/proc/self/ns/net": "overlayd's own network namespace",
        f"/proc/{pid}/ns/net": "overlayd's own network namespace",
        "/proc/1/ns/net": "",  # the host's: refused by identity, or unreadable at all
        f"/proc/{pid}/ns/mnt": "is a mount namespace, not a network namespace",
    }
    routes_before = node.host.ip("route", "show")
    for path, message in cases.items():
        answer = node.attach({"platform": "netns", "path": path})
        assert answer["result"] == "err", (path, answer)
        assert message in answer["message"], (path, answer)
        if path == "/proc/1/ns/net":
            assert (
                "the host's network namespace" in answer["message"]
                or "permission denied" in answer["message"]
            ), answer
        # and through overlayctl, the operator's way in
        out = subprocess.run(
            [
                *(sys.executable, "-c", _CTL, "--socket", str(node.daemon.socket)),
                *("attach", "--netns", path, "--service", "web"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode != 0, out.stdout
        assert message in out.stderr, out.stderr
    # A pid handle whose process lives in the daemon's or the host's namespace.
    for handle_pid, message in ((pid, "overlayd's own network namespace"), (1, "")):
        answer = node.attach({"platform": "linux_pid", "pid": handle_pid})
        assert answer["result"] == "err", (handle_pid, answer)
        assert message in answer["message"], answer
        assert (
            "network namespace" in answer["message"] or "permission denied" in answer["message"]
        ), answer
    assert node.call({"op": "list_attachments"})["attachments"] == []
    assert node.call({"op": "list_leases"})["leases"] == []
    assert " eth0" not in node.links()
    assert node.host.ip("route", "show") == routes_before
    assert node.call({"op": "status"})["result"] == "status"
    assert node.daemon.stop(timeout=15) == 0  # no worker is stuck in open()


# -- a crash in the middle of detaching ----------------------------------------------------


def _pipeline_detaches_and_kill(node: Node, pids: list[int], answers_before_kill: int) -> set[int]:
    """Send a detach for every pid on one connection, SIGKILL after some answers."""
    assert node.daemon is not None
    done: set[int] = set()
    with raw_connect(node.daemon.socket, timeout=30) as s:
        for pid in pids:
            send_request(
                s, pid, {"op": "detach_container", "handle": {"platform": "linux_pid", "pid": pid}}
            )
        while len(done) < answers_before_kill:
            frame = recv_frame(s)
            assert frame is not None
            assert frame["response"]["result"] == "ok", frame
            done.add(int(frame["id"]))
        node.daemon.proc.send_signal(signal.SIGKILL)
        node.daemon.proc.wait(10)
    return done


def test_a_crash_mid_detach_is_repaired_by_the_startup_reconcile(
    node: Node, workloads: Workloads
) -> None:
    assert node.call(SETUP)["result"] == "bridge_name"
    assert node.call(WEB)["result"] == "service_overlay"
    for round_no in range(2):
        pids = workloads.start(25)
        ips = {}
        for pid in pids:
            answer = node.attach({"platform": "linux_pid", "pid": pid})
            assert answer["result"] == "attached", answer
            ips[pid] = answer["ip"]
        detached = _pipeline_detaches_and_kill(node, pids, answers_before_kill=8)
        node.start()  # no manual reconcile from here on
        attachments = {
            a["handle"]["pid"]: a
            for a in node.call({"op": "list_attachments"})["attachments"]
            if a["handle"]["platform"] == "linux_pid"
        }
        leases = node.call({"op": "list_leases", "pool": "service:web"})["leases"]
        links = node.links()
        for pid in pids:
            eth0 = _eth0(pid)
            if pid in detached:
                assert pid not in attachments, f"round {round_no}: answered detach of {pid} lost"
            if pid in attachments:
                # recorded: plugged in, with its address and its host end
                assert eth0 == ips[pid], f"round {round_no}: {pid} recorded but eth0 is {eth0}"
                for name in attachments[pid]["interfaces"]:
                    assert f" {name}@" in links, f"round {round_no}: {name} of {pid} is gone"
            else:
                assert eth0 is None, f"round {round_no}: {pid} detached but still has eth0"
        assert sorted(lease["ip"] for lease in leases) == sorted(
            a["ip"] for a in attachments.values()
        )
        assert node.daemon is not None
        assert "startup reconcile:" in node.daemon.log_text()
        # leave nothing attached for the next round
        for pid in attachments:
            answer = node.call(
                {"op": "detach_container", "handle": {"platform": "linux_pid", "pid": pid}}
            )
            assert answer["result"] == "ok", answer


# -- a firewall reload ----------------------------------------------------------------------


def _tables(node: Node) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", node.host.name, "nft", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_reconcile_after_flush_ruleset_recreates_both_tables_and_says_so(
    node: Node, workloads: Workloads
) -> None:
    assert node.call(SETUP)["result"] == "bridge_name"
    assert node.call(WEB)["result"] == "service_overlay"
    (pid,) = workloads.start(1)
    assert node.attach({"platform": "linux_pid", "pid": pid})["result"] == "attached"
    assert "table inet overlayd" in _tables(node)
    assert "table bridge overlayd" in _tables(node)
    subprocess.run(["ip", "netns", "exec", node.host.name, "nft", "flush", "ruleset"], check=True)
    assert "overlayd" not in _tables(node)
    report = node.call({"op": "reconcile"})
    assert report["result"] == "reconcile_report"
    assert report["errors"] == []
    assert report["recreated"] >= 2, report  # both tables
    tables = _tables(node)
    assert "table inet overlayd" in tables
    assert "table bridge overlayd" in tables
    assert node.call({"op": "reconcile"})["recreated"] == 0
