"""What the unit tests of the userspace backend share: the fake wireguard-go command, a
recording link adapter, a quickly supervising backend, a polling wait."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

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
