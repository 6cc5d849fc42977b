"""What the unit tests of the backends share: the fake wireguard-go command, a
recording link adapter, a quickly supervising backend, a polling wait, and the
device state both backends' parsers must produce."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from overlayd_wireguard.keys import PresharedKey
from overlayd_wireguard.keys import PrivateKey
from overlayd_wireguard.keys import generate_keypair
from overlayd_wireguard.uapi import DeviceState
from overlayd_wireguard.uapi import PeerState
from overlayd_wireguard.userspace import UserspaceBackend

#: The fake wireguard-go (one UAPI socket per device), as a userspace command.
FAKE_CMD = (sys.executable, "-m", "overlayd_wireguard.fakeuapi")


@dataclass
class RecordingLinks:
    """In-memory LinkAdapter for the userspace backend: records configure/delete calls."""

    configured: list[tuple[str, int, tuple[str, ...], str | None]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def wait_link(self, name: str, *, netns: str | None, timeout: float) -> None:
        return None

    def configure(
        self, name: str, *, mtu: int, addresses: Sequence[str], netns: str | None
    ) -> None:
        self.configured.append((name, mtu, tuple(addresses), netns))

    def ensure_wireguard_link(self, name: str, *, netns: str | None) -> None:
        raise AssertionError("the userspace backend never creates kernel links")

    def delete_link(self, name: str, *, netns: str | None) -> bool:
        self.deleted.append(name)
        return False


def fake_backend(
    sock_dir: Path, links: RecordingLinks | None = None, **options: Any
) -> UserspaceBackend:
    """A userspace backend that runs the fake wireguard-go with sockets in
    ``sock_dir`` and supervises quickly (poll 0.05 s, restart back-off 0.1 to
    0.5 s); ``options`` are more (or other) :class:`UserspaceBackend` arguments."""
    settings: dict[str, Any] = {"poll_interval": 0.05, "restart_backoff": (0.1, 0.5), **options}
    return UserspaceBackend(
        command=(*FAKE_CMD, "--socket-dir", str(sock_dir)),
        socket_dir=sock_dir,
        links=RecordingLinks() if links is None else links,
        **settings,
    )


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> None:
    """Poll ``pred`` every ``step`` seconds; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(step)


def killed_and_restarted(backend: UserspaceBackend, name: str) -> int:
    """Kill the wireguard-go of device ``name`` (SIGKILL) and wait for the
    supervisor's first restart of it; the new process's pid."""
    old = backend.pid(name)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: backend.restarts(name) == 1)
    new = backend.pid(name)
    assert new is not None
    assert new != old
    return new


def pub() -> str:
    """A fresh peer public key."""
    return generate_keypair()[1]


def peer_with_every_field(
    public_key: str, preshared_key: PresharedKey, allowed_ips: tuple[str, ...], **fields: Any
) -> PeerState:
    """A peer with every field set, as the backends' tests configure and count one:
    endpoint ``[fd00::2]:51820``, keepalive 25 s, last handshake 100 s and 5 ns,
    10 bytes received, 20 sent, protocol 1; ``fields`` are other values."""
    every: dict[str, Any] = {
        "endpoint": "[fd00::2]:51820",
        "persistent_keepalive_interval": 25,
        "last_handshake_time_sec": 100,
        "last_handshake_time_nsec": 5,
        "rx_bytes": 10,
        "tx_bytes": 20,
        "protocol_version": 1,
    }
    return PeerState(
        public_key=public_key,
        preshared_key=preshared_key,
        allowed_ips=allowed_ips,
        **{**every, **fields},
    )


def assert_device(
    state: DeviceState,
    private_key: PrivateKey,
    *,
    fwmark: int,
    peers: tuple[PeerState, ...],
    listen_port: int = 51820,
) -> None:
    """``state`` is the device of ``private_key`` (and its public key) listening on
    ``listen_port`` with ``fwmark`` and exactly ``peers``, in that order."""
    assert state.private_key == private_key
    assert state.public_key == private_key.public_key()
    assert state.listen_port == listen_port
    assert state.fwmark == fwmark
    assert state.peers == peers
