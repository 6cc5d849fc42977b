"""Tuning of supervised wireguard-go processes (socket buffers, nice value).

The backend's use of the tuning runs against fake wireguard-go processes and a
recording :class:`ProcessTuner`; :class:`LinuxProcessTuner` runs against a
child process that holds real sockets and reports their sizes itself.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pytest

from overlayd.config import EngineConfig
from overlayd.driver_options import parse_driver_options
from overlayd.errors import ConfigError
from overlayd.errors import InvalidRequest
from overlayd.plugins import DriverContext
from overlayd_wireguard.driver import WireGuardDriver
from overlayd_wireguard.keys import PrivateKey
from overlayd_wireguard.options import WireGuardOptions
from overlayd_wireguard.tuning import DEFAULT_TUNING
from overlayd_wireguard.tuning import LinuxProcessTuner
from overlayd_wireguard.tuning import TuneReport
from overlayd_wireguard.tuning import Tuning
from overlayd_wireguard.tuning import UdpSocket
from overlayd_wireguard.tuning import socket_server_pid
from overlayd_wireguard.uapi import SetRequest
from overlayd_wireguard.uapi.client import UapiClient
from overlayd_wireguard.userspace import UserspaceBackend

from .conftest import FAKE_CMD
from .conftest import fake_backend
from .conftest import killed_and_restarted
from .conftest import wait_until

# ---------------------------------------------------------------------- settings


def test_defaults_raise_the_socket_buffers_and_leave_nice_alone() -> None:
    assert Tuning(socket_buffer=7 << 20, nice=None) == DEFAULT_TUNING
    assert DEFAULT_TUNING.enabled
    assert not Tuning(socket_buffer=0, nice=None).enabled
    assert Tuning(socket_buffer=0, nice=0).enabled


@pytest.mark.parametrize(
    "kwargs",
    [
        {"socket_buffer": -1},
        {"socket_buffer": (1 << 30) + 1},
        {"socket_buffer": True},
        {"socket_buffer": "7M"},
        {"socket_buffer": 1.5},
        {"nice": -21},
        {"nice": 20},
        {"nice": False},
        {"nice": "high"},
    ],
)
def test_invalid_tuning_is_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest, match="is invalid"):
        Tuning(**kwargs)


def _tuning(raw: dict[str, Any]) -> Tuning:
    return parse_driver_options(WireGuardOptions, "wireguard", raw).tuning


def test_options_name_the_bad_key() -> None:
    assert _tuning({}) == DEFAULT_TUNING
    assert _tuning({"userspace_socket_buffer": 0, "userspace_nice": -5}) == Tuning(
        socket_buffer=0, nice=-5
    )
    with pytest.raises(ConfigError, match=r"\[drivers.wireguard\] userspace_nice = 42"):
        _tuning({"userspace_nice": 42})
    with pytest.raises(ConfigError, match=r"userspace_socket_buffer = 'big'"):
        _tuning({"userspace_socket_buffer": "big"})
    with pytest.raises(ConfigError, match=r"userspace_nice = True"):
        _tuning({"userspace_nice": True})


def _config(sock_dir: Path, **options: Any) -> EngineConfig:
    return EngineConfig(
        drivers=[],
        driver_settings={
            "wireguard": {
                "backend": "userspace",
                "userspace_command": [*FAKE_CMD, "--socket-dir", str(sock_dir)],
                "socket_dir": str(sock_dir),
                **options,
            }
        },
    )


def test_driver_hands_the_configured_tuning_to_the_backend(sock_dir: Path) -> None:
    drv = WireGuardDriver()
    drv.overlayd_configure(_config(sock_dir, userspace_socket_buffer=1 << 20, userspace_nice=3))
    drv.overlayd_startup(DriverContext(data_dir=None, emit=lambda e: None))
    try:
        assert isinstance(drv.backend, UserspaceBackend)
        assert drv.backend.tuning == Tuning(socket_buffer=1 << 20, nice=3)
    finally:
        drv.overlayd_shutdown()
    off = WireGuardDriver()
    off.overlayd_configure(_config(sock_dir, userspace_socket_buffer=0))
    off.overlayd_startup(DriverContext(data_dir=None, emit=lambda e: None))
    try:
        assert isinstance(off.backend, UserspaceBackend)
        assert off.backend.tuning is None  # nothing left to apply
    finally:
        off.overlayd_shutdown()


def test_driver_rejects_bad_tuning_keys(sock_dir: Path) -> None:
    drv = WireGuardDriver()
    with pytest.raises(ConfigError, match="userspace_socket_buffer"):
        drv.overlayd_configure(_config(sock_dir, userspace_socket_buffer=-5))


# ---------------------------------------------------------------------- backend


@dataclass
class RecordingTuner:
    """ProcessTuner double: each process "holds" the sockets in ``held``."""

    held: dict[int, frozenset[int]] = field(default_factory=dict)
    calls: list[tuple[int, Tuning]] = field(default_factory=list)
    problems: tuple[str, ...] = ()
    next_inode: int = 1000

    def socket_inodes(self, pid: int) -> frozenset[int]:
        return self.held.get(pid, frozenset())

    def rebind(self, pid: int) -> None:
        """What wireguard-go does on a port change or link down/up: new sockets."""
        self.next_inode += 2
        self.held[pid] = frozenset({self.next_inode, self.next_inode + 1})

    def tune(self, pid: int, tuning: Tuning) -> TuneReport:
        self.calls.append((pid, tuning))
        if pid not in self.held:
            self.rebind(pid)
        sockets = tuple(
            UdpSocket(fd=3 + i, inode=ino, port=51820, rcvbuf=2 * tuning.socket_buffer, sndbuf=0)
            for i, ino in enumerate(sorted(self.held[pid]))
        )
        return TuneReport(pid=pid, sockets=sockets, problems=self.problems)

    def pids(self) -> list[int]:
        return [pid for pid, _ in self.calls]


TUNING = Tuning(socket_buffer=1 << 20, nice=None)


@pytest.fixture
def tuner() -> RecordingTuner:
    return RecordingTuner()


def make_backend(
    sock_dir: Path, tuner: RecordingTuner, tuning: Tuning | None = TUNING, **kw: Any
) -> UserspaceBackend:
    kw.setdefault("retune_interval", 0.1)
    return fake_backend(sock_dir, tuning=tuning, tuner=tuner, **kw)


@pytest.fixture
def backend(sock_dir: Path, tuner: RecordingTuner) -> Iterator[UserspaceBackend]:
    b = make_backend(sock_dir, tuner)
    try:
        yield b
    finally:
        b.close()
        b.delete_all()


def test_a_started_process_is_tuned(backend: UserspaceBackend, tuner: RecordingTuner) -> None:
    backend.ensure_device("wgt1", private_key=PrivateKey.generate(), listen_port=51820)
    pid = backend.pid("wgt1")
    assert tuner.calls[0] == (pid, TUNING)
    report = backend.tune_report("wgt1")
    assert report is not None
    assert report.pid == pid
    assert report.inodes == tuner.held[pid]


def test_a_port_change_retunes_and_peer_changes_do_not(
    sock_dir: Path, tuner: RecordingTuner
) -> None:
    b = make_backend(sock_dir, tuner, supervise=False)
    try:
        b.ensure_device("wgt2", private_key=PrivateKey.generate(), listen_port=51820)
        assert len(tuner.calls) == 1
        b.apply("wgt2", SetRequest(fwmark=7))
        assert len(tuner.calls) == 1
        b.apply("wgt2", SetRequest(listen_port=51821))
        assert len(tuner.calls) == 2
    finally:
        b.delete_all()


def test_watcher_retunes_when_the_process_replaced_its_sockets(
    backend: UserspaceBackend, tuner: RecordingTuner
) -> None:
    backend.ensure_device("wgt3", private_key=PrivateKey.generate(), listen_port=51820)
    pid = backend.pid("wgt3")
    assert pid is not None
    time.sleep(0.5)  # several retune intervals: the sockets are the tuned ones
    assert len(tuner.calls) == 1
    tuner.rebind(pid)
    wait_until(lambda: len(tuner.calls) == 2)
    report = backend.tune_report("wgt3")
    assert report is not None
    assert report.inodes == tuner.held[pid]
    time.sleep(0.3)
    assert len(tuner.calls) == 2


def test_a_restarted_process_is_tuned(backend: UserspaceBackend, tuner: RecordingTuner) -> None:
    backend.ensure_device("wgt4", private_key=PrivateKey.generate(), listen_port=51820)
    new = killed_and_restarted(backend, "wgt4")
    assert tuner.pids()[-1] == new


def test_problems_are_logged_once_and_the_device_still_works(
    sock_dir: Path, tuner: RecordingTuner, caplog: pytest.LogCaptureFixture
) -> None:
    tuner.problems = ("pidfd_getfd on fd 7 failed: not permitted",)
    b = make_backend(sock_dir, tuner, supervise=False)
    try:
        with caplog.at_level(logging.WARNING, logger="overlayd_wireguard.userspace"):
            state = b.ensure_device("wgt5", private_key=PrivateKey.generate(), listen_port=5)
            b.apply("wgt5", SetRequest(listen_port=6))  # tuned again, same problem
        assert state.listen_port == 5
        warnings = [r.getMessage() for r in caplog.records if "incomplete" in r.getMessage()]
        assert len(warnings) == 1
        assert "not permitted" in warnings[0]
        assert len(tuner.calls) == 2
    finally:
        b.delete_all()


class FailingTuner(RecordingTuner):
    def tune(self, pid: int, tuning: Tuning) -> TuneReport:
        raise OSError(5, "Input/output error")


def test_a_failing_tuner_does_not_fail_the_device(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b = make_backend(sock_dir, FailingTuner(), supervise=False)
    try:
        with caplog.at_level(logging.WARNING, logger="overlayd_wireguard.userspace"):
            state = b.ensure_device("wgt8", private_key=PrivateKey.generate(), listen_port=8)
        assert state.listen_port == 8
        report = b.tune_report("wgt8")
        assert report is not None
        assert report.problems == ("tuning failed: [Errno 5] Input/output error",)
        assert any("Input/output error" in r.getMessage() for r in caplog.records)
    finally:
        b.delete_all()


def test_no_tuning_means_no_tuner_calls(sock_dir: Path, tuner: RecordingTuner) -> None:
    b = make_backend(sock_dir, tuner, tuning=Tuning(socket_buffer=0, nice=None))
    try:
        b.ensure_device("wgt6", private_key=PrivateKey.generate(), listen_port=51820)
        b.apply("wgt6", SetRequest(listen_port=51821))
        time.sleep(0.3)
        assert tuner.calls == []
        assert b.tune_report("wgt6") is None
    finally:
        b.close()
        b.delete_all()


def test_an_adopted_process_is_tuned_by_the_pid_behind_its_socket(
    sock_dir: Path, tuner: RecordingTuner
) -> None:
    # A wireguard-go left running by an earlier overlayd: no Popen handle.
    proc = subprocess.Popen([*FAKE_CMD, "--socket-dir", str(sock_dir), "-f", "wgt7"])
    try:
        # Answering, not only bound: the socket file appears at bind(), before
        # listen(); a backend that finds it refusing starts its own process.
        wait_until(lambda: UapiClient(sock_dir, timeout=2.0).alive("wgt7"))
        b = make_backend(sock_dir, tuner, supervise=False)
        b.ensure_device("wgt7", private_key=PrivateKey.generate(), listen_port=51820)
        assert b.pid("wgt7") is None  # adopted, not started
        assert tuner.pids() == [proc.pid]
        b.delete_all()
    finally:
        proc.kill()
        proc.wait(5)


def test_socket_server_pid_is_the_listener() -> None:
    path = Path(f"/tmp/owgt-{os.getpid()}.sock")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()\n"
            "print('ready', flush=True); time.sleep(60)\n",
            str(path),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        assert socket_server_pid(path) == child.pid
    finally:
        child.kill()
        child.wait(5)
        path.unlink(missing_ok=True)
    assert socket_server_pid(path) is None  # nothing listens


# ---------------------------------------------------------------------- Linux tuner

#: A process holding two UDP sockets, a TCP socket and a unix socket, with a
#: second thread; it prints their inodes and ports, then answers "report" with
#: its own view of the UDP sockets' buffers and its threads' nice values.
_HOLDER = textwrap.dedent(
    """
    import json, os, socket, sys, threading
    udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp4.bind(("127.0.0.1", 0))
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); udp6.bind(("::1", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM); tcp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    done = threading.Event()
    threading.Thread(target=done.wait, daemon=True).start()
    udp = [udp4, udp6]
    print(json.dumps({
        "udp": {str(os.fstat(s.fileno()).st_ino): s.getsockname()[1] for s in udp},
        "other": [os.fstat(s.fileno()).st_ino for s in (tcp, unix)],
    }), flush=True)
    for line in sys.stdin:
        bufs = [[s.getsockopt(socket.SOL_SOCKET, o) for o in (socket.SO_RCVBUF, socket.SO_SNDBUF)]
                for s in udp]
        nice = sorted({os.getpriority(os.PRIO_PROCESS, int(t))
                       for t in os.listdir(f"/proc/{os.getpid()}/task")})
        print(json.dumps({"bufs": bufs, "nice": nice}), flush=True)
    """
)


@dataclass
class Holder:
    proc: subprocess.Popen[str]
    udp: dict[int, int]
    other: list[int]

    def report(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("report\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer


@pytest.fixture
def holder() -> Iterator[Holder]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        yield Holder(proc, {int(k): v for k, v in first["udp"].items()}, first["other"])
    finally:
        proc.kill()
        proc.wait(5)


def _can_force_buffers() -> bool:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, 33, 1 << 20)  # SO_RCVBUFFORCE
        except PermissionError:
            return False
    return True


def _rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


def test_linux_tuner_raises_the_udp_buffers_only(holder: Holder) -> None:
    tuner = LinuxProcessTuner()
    inodes = tuner.socket_inodes(holder.proc.pid)
    assert set(holder.udp) | set(holder.other) <= inodes
    size = 3 << 20
    report = tuner.tune(holder.proc.pid, Tuning(socket_buffer=size, nice=None))
    assert {s.inode: s.port for s in report.sockets} == holder.udp
    seen = holder.report()["bufs"]
    if _can_force_buffers():
        assert report.problems == ()
        assert seen == [[2 * size, 2 * size], [2 * size, 2 * size]]
    else:  # without CAP_NET_ADMIN the host's limit caps it, and that is reported
        cap = 2 * min(size, _rmem_max())
        assert [b[0] for b in seen] == [cap, cap]
        assert any("CAP_NET_ADMIN" in p for p in report.problems)
    assert [[s.rcvbuf, s.sndbuf] for s in report.sockets] == seen
    # Never lowered: a smaller request leaves them as they are.
    tuner.tune(holder.proc.pid, Tuning(socket_buffer=1 << 20, nice=None))
    assert holder.report()["bufs"] == seen


def test_linux_tuner_sets_nice_on_every_thread(holder: Holder) -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    value = min(own + 3, 19)  # a lower priority needs no privilege
    report = LinuxProcessTuner().tune(holder.proc.pid, Tuning(socket_buffer=0, nice=value))
    assert report.problems == ()
    assert report.nice == {value}
    assert holder.report()["nice"] == [value]
    assert report.sockets == ()  # socket_buffer=0: sockets untouched


def test_linux_tuner_reports_a_gone_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)
    tuner = LinuxProcessTuner()
    report = tuner.tune(child.pid, Tuning(socket_buffer=1 << 20, nice=5))
    assert report.sockets == ()
    assert any("gone" in p for p in report.problems)
    assert tuner.socket_inodes(child.pid) == frozenset()


def _tune_without(cap: str, pid: int, tuning: Tuning) -> list[str]:
    """Run the Linux tuner on ``pid`` in a child process that lacks ``cap``.

    As root the capability is dropped with setpriv(1) (util-linux); otherwise
    the child has no capabilities anyway. Returns the report's problems.
    """
    code = (
        "import json, sys\n"
        "from overlayd_wireguard.tuning import LinuxProcessTuner, Tuning\n"
        "t = Tuning(socket_buffer=int(sys.argv[2]), nice=json.loads(sys.argv[3]))\n"
        "print(json.dumps(list(LinuxProcessTuner().tune(int(sys.argv[1]), t).problems)))\n"
    )
    argv = [
        sys.executable,
        "-c",
        code,
        str(pid),
        str(tuning.socket_buffer),
        json.dumps(tuning.nice),
    ]
    if os.geteuid() == 0:
        argv = ["setpriv", "--inh-caps", f"-{cap}", "--bounding-set", f"-{cap}", *argv]
    done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)
    problems: list[str] = json.loads(done.stdout)
    return problems


def test_linux_tuner_reports_raising_priority_without_privilege(holder: Holder) -> None:
    before = holder.report()["nice"]
    problems = _tune_without("sys_nice", holder.proc.pid, Tuning(socket_buffer=0, nice=-10))
    assert any("CAP_SYS_NICE" in p for p in problems)
    assert holder.report()["nice"] == before


def test_linux_tuner_without_net_admin_stays_under_the_host_limit(holder: Holder) -> None:
    size = 2 * _rmem_max()  # more than the host allows without SO_RCVBUFFORCE
    problems = _tune_without("net_admin", holder.proc.pid, Tuning(socket_buffer=size, nice=None))
    assert any("CAP_NET_ADMIN" in p for p in problems)
    cap = 2 * _rmem_max()
    assert [b[0] for b in holder.report()["bufs"]] == [cap, cap]
