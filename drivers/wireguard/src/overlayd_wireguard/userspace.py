"""Userspace WireGuard backend: supervised ``wireguard-go`` processes over UAPI.

Facts this relies on (docs/reference/wireguard.rst §2): ``wireguard-go -f IFNAME`` creates the
TUN in the network namespace of the *process*, then listens on
``/var/run/wireguard/IFNAME.sock`` (a directory shared by every namespace, so
names are unique per host). It exits on SIGTERM, when its TUN is deleted, or
when its socket file is deleted, unlinking the socket on the way out. A restart
therefore means a new TUN: key, port, peers, MTU and addresses are re-applied.

Each device's last known configuration is recorded after every successful call
(peers are read back with ``get``), and a watcher thread restarts a process that
died with exponential backoff and replays that configuration.

Each process is tuned (:mod:`~overlayd_wireguard.tuning`: UDP socket buffers,
nice value) after it starts, after its listen port changes, and whenever the
watcher sees that it replaced its UDP sockets.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path
from typing import Final

from overlayd.errors import Conflict
from overlayd.errors import DeviceError
from overlayd.errors import InvalidRequest
from overlayd.errors import NotFound
from overlayd_linux.netns import preexec_setns
from overlayd_wireguard.backend import DeviceConfig
from overlayd_wireguard.backend import WgBackend
from overlayd_wireguard.links import LinkAdapter
from overlayd_wireguard.links import PyRoute2Links
from overlayd_wireguard.tuning import DEFAULT_TUNING
from overlayd_wireguard.tuning import LinuxProcessTuner
from overlayd_wireguard.tuning import ProcessTuner
from overlayd_wireguard.tuning import TuneReport
from overlayd_wireguard.tuning import Tuning
from overlayd_wireguard.tuning import socket_server_pid
from overlayd_wireguard.uapi import DEFAULT_SOCKET_DIR
from overlayd_wireguard.uapi import DeviceState
from overlayd_wireguard.uapi import PeerConfig
from overlayd_wireguard.uapi import SetRequest
from overlayd_wireguard.uapi import UapiClient

__all__ = ["DEFAULT_COMMAND", "UserspaceBackend"]

log = logging.getLogger(__name__)

DEFAULT_COMMAND: Final = ("wireguard-go",)
NETNS_DIR: Final = Path("/var/run/netns")
_OUTPUT_LINES: Final = 20


@dataclass
class _Device:
    name: str
    #: The settings of the last ensure_device, with the key, port and fwmark
    #: of later applies.
    config: DeviceConfig
    peers: tuple[PeerConfig, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    output: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=_OUTPUT_LINES)
    )
    restarts: int = 0
    backoff: float = 0.0
    next_restart: float = 0.0
    #: pid of an adopted process (no Popen handle), from the UAPI socket.
    adopted_pid: int | None = None
    tune_report: TuneReport | None = None
    next_tune_check: float = 0.0


class UserspaceBackend(WgBackend):
    """:class:`~overlayd_wireguard.backend.WgBackend` running ``wireguard-go``.

    :param command: program and leading arguments; ``-f IFNAME`` is appended.
    :param socket_dir: where the program puts ``IFNAME.sock`` (wireguard-go's
        is fixed at ``/var/run/wireguard``; configurable for test doubles).
    :param links: rtnetlink adapter (pyroute2 by default).
    :param supervise: run the watcher thread that restarts dead processes.
    :param on_restart: called with the device name after a successful restart
        (outside the backend lock), e.g. to re-add routes over the new TUN.
    :param tuning: socket buffers and nice value applied to every process
        (:class:`~overlayd_wireguard.tuning.Tuning`; ``None``: none).
    :param tuner: applies ``tuning`` (default: the Linux implementation).
    :param retune_interval: how often the watcher checks that a process still
        has the sockets it was tuned on.
    """

    kind = "userspace"

    def __init__(
        self,
        *,
        command: Sequence[str] = DEFAULT_COMMAND,
        socket_dir: str | os.PathLike[str] = DEFAULT_SOCKET_DIR,
        links: LinkAdapter | None = None,
        uapi_timeout: float = 5.0,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        supervise: bool = True,
        poll_interval: float = 0.2,
        restart_backoff: tuple[float, float] = (0.5, 30.0),
        log_level: str = "error",
        on_restart: Callable[[str], None] | None = None,
        tuning: Tuning | None = DEFAULT_TUNING,
        tuner: ProcessTuner | None = None,
        retune_interval: float = 5.0,
    ) -> None:
        if not command:
            raise InvalidRequest("the wireguard-go command must not be empty")
        self.command = tuple(command)
        self.uapi = UapiClient(socket_dir, timeout=uapi_timeout)
        self.links: LinkAdapter = links if links is not None else PyRoute2Links()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.supervise = supervise
        self.poll_interval = poll_interval
        self.restart_backoff = restart_backoff
        self.log_level = log_level
        self.on_restart = on_restart
        self.tuning = tuning if tuning is not None and tuning.enabled else None
        self.tuner: ProcessTuner = tuner if tuner is not None else LinuxProcessTuner()
        self.retune_interval = retune_interval
        self._devices: dict[str, _Device] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # ------------------------------------------------------------------ public API

    def _ensure_device(self, name: str, config: DeviceConfig) -> DeviceState:
        """Start (or adopt) ``wireguard-go`` for ``name`` and configure it."""
        netns = config.netns
        if netns is not None and not (NETNS_DIR / netns).exists():
            raise NotFound(f"network namespace {netns!r} does not exist under {NETNS_DIR}")
        with self._lock:
            dev = self._devices.get(name)
            if dev is not None and dev.config.netns != netns:
                raise Conflict(
                    f"WireGuard device {name} already runs in "
                    f"{_ns_text(dev.config.netns)}, not in {_ns_text(netns)}; names are "
                    "unique per host because the UAPI socket directory is shared"
                )
            created = dev is None
            if dev is None:
                dev = _Device(name, config)
            else:
                dev.config = config
            try:
                if created and self.uapi.alive(name):
                    # A process from an earlier overlayd run: adopt it. It has no
                    # Popen handle; the watcher notices its exit by the socket.
                    log.info("adopting running WireGuard process for %s", name)
                    self._configure(dev, with_peers=False)
                    dev.peers = self._read_peers(name)
                elif created:
                    self._start(dev)
                    self._configure(dev, with_peers=False)
                elif not self._running(dev):
                    self._restart(dev)
                else:
                    self._configure(dev, with_peers=False)
                self._tune(dev)
                state = self.uapi.get(name)
            except BaseException:
                if created and dev.proc is not None:
                    self._kill(dev)  # roll back only what this call started
                raise
            self._devices[name] = dev
            self._ensure_watcher()
        return state

    def _delete_device(self, name: str) -> bool:
        """Stop the process (SIGTERM, then SIGKILL) and remove its socket."""
        with self._lock:
            dev = self._devices.pop(name, None)
            if dev is not None:
                existed = self._running(dev)
                self._kill(dev)
                return existed
            if self.uapi.alive(name):
                # Not ours (or from an earlier run): wireguard-go exits when its
                # socket file disappears (inotify watch, docs/reference/wireguard.rst §2).
                self._stop_by_socket(name)
                return True
            with contextlib.suppress(FileNotFoundError):
                self.uapi.socket_path(name).unlink()  # stale file
            return False

    def _apply(self, name: str, request: SetRequest, peers: Sequence[PeerConfig] | None) -> None:
        """Apply ``request`` over UAPI and record the resulting configuration.

        With ``peers`` (the whole peer configuration after ``request``) the
        record is taken from the caller instead of a ``get`` of the whole
        device, which keeps one-peer changes on large devices cheap. After a
        failed ``set`` the device is always read back (it is partially applied).
        """
        with self._lock:
            dev = self._require(name)
            if not self._running(dev):
                self._restart(dev)
            ok = False
            try:
                self.uapi.set(name, request)
                ok = True
            finally:
                self._record(dev, request, peers if ok else None)
            if request.listen_port is not None:
                self._tune(dev)  # a new port means new UDP sockets

    def get(self, name: str) -> DeviceState:
        """Read the device over UAPI."""
        return self.uapi.get(name)

    def close(self) -> None:
        """Stop supervising; the processes keep running (adopted on next start)."""
        self._stop.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.join(self.start_timeout + 5)

    def delete_all(self) -> None:
        """Delete every device this backend started or adopted."""
        with self._lock:
            names = list(self._devices)
        for name in names:
            self.delete_device(name)

    def restarts(self, name: str) -> int:
        """How often the supervisor restarted ``name``."""
        with self._lock:
            return self._require(name).restarts

    def pid(self, name: str) -> int | None:
        """The process id of ``name``'s wireguard-go, if this backend started it."""
        with self._lock:
            proc = self._require(name).proc
            return proc.pid if proc is not None else None

    def tune_report(self, name: str) -> TuneReport | None:
        """What the last tuning of ``name``'s process achieved (None: not tuned)."""
        with self._lock:
            return self._require(name).tune_report

    # ------------------------------------------------------------------ internals

    def _require(self, name: str) -> _Device:
        dev = self._devices.get(name)
        if dev is None:
            raise NotFound(
                f"WireGuard device {name} is not managed by this backend; call ensure_device first"
            )
        return dev

    def _running(self, dev: _Device) -> bool:
        if dev.proc is not None:
            return dev.proc.poll() is None
        return self.uapi.alive(dev.name)

    def _start(self, dev: _Device) -> None:
        argv = [*self.command, "-f", dev.name]
        env = dict(os.environ)
        env["WG_PROCESS_FOREGROUND"] = "1"
        env["LOG_LEVEL"] = self.log_level
        ns_fd: int | None = None
        preexec: Callable[[], None] | None = None
        nice = self.tuning.nice if self.tuning is not None else None
        if nice is not None:
            # Threads inherit the nice value of the thread that creates them: set
            # it before exec, so that all of wireguard-go's threads start with it.
            # Failure (no CAP_SYS_NICE) is reported by the tuning after start.
            preexec = _nice_function(nice)
        if dev.config.netns is not None:
            try:
                ns_fd = os.open(NETNS_DIR / dev.config.netns, os.O_RDONLY)
            except OSError as exc:
                raise DeviceError(
                    f"cannot open network namespace {dev.config.netns!r} to start "
                    f"WireGuard device {dev.name}: {exc.strerror}",
                    op="ensure_device",
                    driver="wireguard",
                ) from exc
            setns = preexec_setns(ns_fd)
            then = preexec

            def preexec() -> None:
                setns()
                if then is not None:
                    then()

        dev.output.clear()
        try:
            dev.proc = subprocess.Popen(  # noqa: S603 - argv from configuration
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,  # noqa: PLW1509 - setns must run in the child
                # Its own process group keeps a terminal's Ctrl-C away from the
                # data plane. Not its own session: with the kernel's scheduler
                # autogroups (on by default) a new session is a separate CPU
                # group, which cost 15-18% iperf3 throughput against wireguard-go
                # started in the caller's session (bench/wg, 2 cores).
                process_group=0,
            )
        except OSError as exc:
            raise DeviceError(
                f"cannot start {argv[0]!r} for WireGuard device {dev.name}: {exc}; "
                "check that wireguard-go is installed and the command is correct",
                op="ensure_device",
                driver="wireguard",
            ) from exc
        except subprocess.SubprocessError as exc:
            raise DeviceError(
                f"cannot start {argv[0]!r} for WireGuard device {dev.name} in "
                f"{_ns_text(dev.config.netns)}: {exc}",
                op="ensure_device",
                driver="wireguard",
            ) from exc
        finally:
            if ns_fd is not None:
                os.close(ns_fd)
        self._pump_output(dev, dev.proc)
        self._wait_ready(dev, dev.proc)
        log.info(
            "started %s for %s (pid %d, %s)",
            argv[0],
            dev.name,
            dev.proc.pid,
            _ns_text(dev.config.netns),
        )

    def _pump_output(self, dev: _Device, proc: subprocess.Popen[bytes]) -> None:
        stream = proc.stdout
        if stream is None:
            return

        def pump() -> None:
            with stream:
                for raw in stream:
                    line = raw.decode("utf-8", "replace").rstrip()
                    dev.output.append(line)
                    log.debug("%s[%d]: %s", dev.name, proc.pid, line)

        threading.Thread(target=pump, name=f"wg-out-{dev.name}", daemon=True).start()

    def _wait_ready(self, dev: _Device, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        while True:
            rc = proc.poll()
            if rc is not None:
                time.sleep(0.05)  # let the pump read the last lines
                raise DeviceError(
                    f"{self.command[0]} for WireGuard device {dev.name} exited with "
                    f"code {rc} during start-up: {_tail(dev)}",
                    op="ensure_device",
                    driver="wireguard",
                )
            if self.uapi.alive(dev.name, timeout=1.0):
                return
            if time.monotonic() > deadline:
                self._kill(dev)
                raise DeviceError(
                    f"{self.command[0]} for WireGuard device {dev.name} did not "
                    f"open {self.uapi.socket_path(dev.name)} within "
                    f"{self.start_timeout} s: {_tail(dev)}",
                    op="ensure_device",
                    driver="wireguard",
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _configure(self, dev: _Device, *, with_peers: bool) -> None:
        """Push key/port/fwmark (and recorded peers), then link settings."""
        config = dev.config
        if with_peers:
            request = SetRequest(
                private_key=config.private_key,
                listen_port=config.listen_port,
                fwmark=config.fwmark,
                replace_peers=True,
                peers=tuple(p.create_op() for p in dev.peers),
            )
        else:
            # Send only the device keys that differ: re-sending an unchanged
            # listen_port makes wireguard-go close and rebind its UDP socket,
            # which an adopted, working device must not suffer.
            have = self.uapi.get(dev.name)
            request = SetRequest(
                private_key=(
                    config.private_key if have.private_key != config.private_key else None
                ),
                listen_port=(
                    config.listen_port
                    if config.listen_port is not None
                    and have.listen_port != config.listen_port
                    and not (config.listen_port == 0 and have.listen_port)
                    else None
                ),
                fwmark=config.fwmark
                if config.fwmark is not None and have.fwmark != config.fwmark
                else None,
            )
        self.uapi.set(dev.name, request)
        self.links.configure(
            dev.name, mtu=config.mtu, addresses=config.addresses, netns=config.netns
        )
        if config.listen_port:
            port = self.uapi.get(dev.name).listen_port
            if port != config.listen_port:
                raise DeviceError(
                    f"WireGuard device {dev.name} listens on {port} instead of "
                    f"{config.listen_port}; another socket may hold the port",
                    op="ensure_device",
                    driver="wireguard",
                )

    def _read_peers(self, name: str) -> tuple[PeerConfig, ...]:
        return tuple(PeerConfig.from_state(p) for p in self.uapi.get(name).peers)

    def _record(
        self,
        dev: _Device,
        request: SetRequest,
        peers: Sequence[PeerConfig] | None = None,
    ) -> None:
        if request.private_key is not None:
            dev.config = replace(dev.config, private_key=request.private_key)
        if request.listen_port is not None:
            dev.config = replace(dev.config, listen_port=request.listen_port)
        if request.fwmark is not None:
            dev.config = replace(dev.config, fwmark=request.fwmark)
        if peers is not None:
            dev.peers = tuple(peers)
            return
        try:
            dev.peers = self._read_peers(dev.name)
        except DeviceError as exc:
            # Runs in a `finally`: never mask the error of the apply itself.
            log.warning("could not re-read %s after apply: %s", dev.name, exc)

    def _restart(self, dev: _Device) -> None:
        self._kill(dev)
        self._start(dev)
        self._configure(dev, with_peers=True)
        self._tune(dev)
        dev.restarts += 1

    def _process_id(self, dev: _Device) -> int | None:
        if dev.proc is not None:
            return dev.proc.pid
        if dev.adopted_pid is None or not Path(f"/proc/{dev.adopted_pid}").exists():
            dev.adopted_pid = socket_server_pid(self.uapi.socket_path(dev.name))
        return dev.adopted_pid

    def _tune(self, dev: _Device) -> None:
        """Apply the tuning to ``dev``'s process; problems are logged, never raised."""
        dev.next_tune_check = time.monotonic() + self.retune_interval
        if self.tuning is None:
            return
        pid = self._process_id(dev)
        if pid is None:
            log.warning("cannot tune the WireGuard process of %s: its pid is unknown", dev.name)
            return
        try:
            report = self.tuner.tune(pid, self.tuning)
        except OSError as exc:  # the tuner reports what it can; this is a bug guard
            report = TuneReport(pid=pid, problems=(f"tuning failed: {exc}",))
        old = dev.tune_report
        if report.problems and (old is None or old.problems != report.problems):
            log.warning(
                "tuning the WireGuard process of %s (pid %d) was incomplete: %s",
                dev.name,
                pid,
                "; ".join(report.problems),
            )
        log.debug(
            "tuned %s (pid %d): UDP buffers %s, nice %s",
            dev.name,
            pid,
            [(s.port, s.rcvbuf, s.sndbuf) for s in report.sockets],
            sorted(report.nice),
        )
        dev.tune_report = report

    def _check_tuning(self, dev: _Device, now: float) -> None:
        """Re-tune when the process no longer holds the sockets it was tuned on."""
        if self.tuning is None or now < dev.next_tune_check:
            return
        dev.next_tune_check = now + self.retune_interval
        pid = self._process_id(dev)
        report = dev.tune_report
        if (
            pid is not None
            and report is not None
            and report.pid == pid
            and report.sockets
            and report.inodes <= self.tuner.socket_inodes(pid)
        ):
            return
        self._tune(dev)

    def _kill(self, dev: _Device) -> None:
        proc, dev.proc = dev.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM; sending SIGKILL", dev.name)
                proc.kill()
                proc.wait(self.stop_timeout)
        elif proc is None and self.uapi.alive(dev.name):
            self._stop_by_socket(dev.name, dev.config.netns)
        with contextlib.suppress(FileNotFoundError):
            self.uapi.socket_path(dev.name).unlink()

    def _stop_by_socket(self, name: str, netns: str | None = None) -> None:
        # No pid for a process we did not start: wireguard-go exits when its
        # socket file or its TUN disappears (docs/reference/wireguard.rst §2), so remove both.
        with contextlib.suppress(FileNotFoundError):
            self.uapi.socket_path(name).unlink()
        try:
            self.links.delete_link(name, netns=netns)
        except DeviceError as exc:
            log.warning("could not delete the TUN of %s: %s", name, exc)

    # ------------------------------------------------------------------ watcher

    def _ensure_watcher(self) -> None:
        if not self.supervise or self._watcher is not None:
            return
        self._stop.clear()
        self._watcher = threading.Thread(
            target=self._watch, name="wg-userspace-supervisor", daemon=True
        )
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            restarted: list[str] = []
            with self._lock:
                for dev in list(self._devices.values()):
                    if self._stop.is_set():
                        break
                    if self._running(dev):
                        self._check_tuning(dev, time.monotonic())
                        continue
                    if self._try_restart(dev):
                        restarted.append(dev.name)
            if self.on_restart is not None:
                for name in restarted:
                    self._notify(name)

    def _try_restart(self, dev: _Device) -> bool:
        now = time.monotonic()
        if now < dev.next_restart:
            return False
        rc = dev.proc.poll() if dev.proc is not None else None
        log.warning(
            "WireGuard process for %s is gone (exit code %s); restarting: %s",
            dev.name,
            rc,
            _tail(dev),
        )
        try:
            self._restart(dev)
        except (DeviceError, InvalidRequest, OSError) as exc:
            low, high = self.restart_backoff
            dev.backoff = min(max(dev.backoff * 2, low), high)
            dev.next_restart = time.monotonic() + dev.backoff
            log.error(
                "restarting WireGuard device %s failed (retry in %.1f s): %s",
                dev.name,
                dev.backoff,
                exc,
            )
            return False
        dev.backoff = 0.0
        dev.next_restart = 0.0
        log.info("restarted WireGuard device %s (restart #%d)", dev.name, dev.restarts)
        return True

    def _notify(self, name: str) -> None:
        callback = self.on_restart
        if callback is None:
            return
        try:
            callback(name)
        except Exception:
            log.exception("on_restart callback for %s failed", name)


def _nice_function(value: int) -> Callable[[], None]:
    def set_nice() -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, value)

    return set_nice


def _ns_text(netns: str | None) -> str:
    return f"netns {netns}" if netns else "the host namespace"


def _tail(dev: _Device) -> str:
    lines = [line for line in dev.output if line]
    return " | ".join(lines[-5:]) if lines else "(no output)"
