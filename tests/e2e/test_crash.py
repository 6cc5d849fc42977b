"""Crash safety: SIGKILL the daemon at random points under load, restart, verify.

A daemon on the fake driver (whose host state persists in a file, as real host
objects outlive a process) serves several clients doing attach, detach and peer
operations. It is killed with SIGKILL at a random moment, restarted on the same
data directory, and then:

* every operation that was answered successfully is in effect, none that was
  answered with an error is (operations still in flight at the kill may have
  landed or not: both are accepted);
* every attachment holds exactly one lease, no lease is held twice or by nobody;
* the fake host's objects (attachments, peers) match the store exactly.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import pytest

from overlayd.client import Client
from overlayd.client import RemoteError
from overlayd.testing.daemon import setup_lone_node
from overlayd.testing.daemon import start_daemon
from overlayd_fake.driver import FakeDriver

pytestmark = pytest.mark.slow

SERVICE = "web"
KEYS = ["%s=" % (chr(65 + i) * 43) for i in range(8)]


def start(tmp: Path) -> subprocess.Popen[bytes]:
    """The daemon on the fake driver, its host kept in ``tmp`` across restarts.

    (:func:`start_daemon` returns once the socket accepts connections: a killed
    daemon leaves its socket file behind.)
    """
    config = (
        '[drivers]\nenabled = ["fake"]\n'
        f'[drivers.fake]\nstate_file = "{tmp / "fakehost.json"}"\n'
        "[dns]\nenabled = false\n[engine]\nhealth_interval_secs = 0\n"
    )
    return start_daemon(tmp, config).proc


@dataclass
class Outcome:
    """The last known state of each handle / peer key, per client."""

    #: handle pid -> (attached?, certain?)
    handles: dict[int, tuple[bool, bool]] = field(default_factory=dict)
    #: peer key -> (present?, certain?)
    peers: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    answered: int = 0


def worker(
    sock: Path, pids: list[int], keys: list[str], out: Outcome, stop: threading.Event, seed: int
) -> None:
    rng = random.Random(seed)
    try:
        client = Client(str(sock), timeout=10, connect_attempts=1)
    except Exception:
        return
    with client:
        while not stop.is_set():
            if rng.random() < 0.7:
                pid = rng.choice(pids)
                attach = rng.random() < 0.6
                before = out.handles.get(pid, (False, True))
                out.handles[pid] = (attach, False)  # in flight: unknown
                try:
                    if attach:
                        client.attach_container({"platform": "linux_pid", "pid": pid}, SERVICE)
                    else:
                        client.detach_container({"platform": "linux_pid", "pid": pid})
                except RemoteError:
                    out.handles[pid] = before
                    out.answered += 1
                    continue
                except Exception:
                    return  # connection lost: the daemon was killed
                out.handles[pid] = (attach, True)
                out.answered += 1
            else:
                key = rng.choice(keys)
                add = rng.random() < 0.6
                before = out.peers.get(key, (False, True))
                out.peers[key] = (add, False)
                octet = KEYS.index(key) + 1
                try:
                    if add:
                        client.add_peer(key, f"127.0.0.{octet}:51820", f"10.201.{octet}.0/24", 0)
                    else:
                        client.remove_peer(key)
                except RemoteError:
                    out.peers[key] = before
                    out.answered += 1
                    continue
                except Exception:
                    return
                out.peers[key] = (add, True)
                out.answered += 1


def verify(tmp: Path, outcomes: list[Outcome]) -> None:
    with Client(str(tmp / "s.sock"), timeout=10) as client:
        attachments = {a.handle.pid: a for a in client.list_attachments()}  # type: ignore[union-attr]
        leases = client.list_leases()
        status = client.status()
    peers = {p.public_key for p in status.peers}
    for out in outcomes:
        for pid, (attached, certain) in out.handles.items():
            if certain:
                assert (pid in attachments) == attached, f"pid {pid}: expected {attached}"
        for key, (present, certain) in out.peers.items():
            if certain:
                assert (key in peers) == present, f"peer {key[:4]}: expected {present}"
    # leases: one per attachment, no duplicates, none orphaned
    ips = [lease.ip for lease in leases]
    assert len(ips) == len(set(ips)), "an address is leased twice"
    owners = {lease.owner for lease in leases}
    assert owners == {f"handle:linux_pid:{pid}" for pid in attachments}
    assert {a.ip for a in attachments.values()} == set(ips)
    # the fake host matches the store exactly
    host = FakeDriver(state_file=tmp / "fakehost.json").host.to_json()
    assert set(host["attachments"]) == {f"linux_pid:{pid}" for pid in attachments}
    assert set(host["peers"][status.interface]) == peers


def test_sigkill_under_load_loses_nothing_answered(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("OVERLAYD_CRASH_SEED", "7")))
    proc = start(tmp_path)
    try:
        with Client(str(tmp_path / "s.sock")) as client:
            setup_lone_node(client, "crash")
            client.setup_service_overlay(SERVICE, "shared")
        outcomes = [Outcome() for _ in range(4)]
        total = 0
        for _round_no in range(6):
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=worker,
                    args=(
                        tmp_path / "s.sock",
                        list(range(100 * i + 1, 100 * i + 16)),
                        KEYS[2 * i : 2 * i + 2],
                        outcomes[i],
                        stop,
                        rng.random(),
                    ),
                )
                for i in range(4)
            ]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            stop.set()
            for t in threads:
                t.join(timeout=30)
            proc = start(tmp_path)
            verify(tmp_path, outcomes)
            total = sum(o.answered for o in outcomes)
        assert total >= 200, f"only {total} operations were answered in 6 rounds"
    finally:
        proc.kill()
        proc.wait()
