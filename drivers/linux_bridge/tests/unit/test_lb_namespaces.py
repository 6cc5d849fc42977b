"""The linux_bridge namespace resolver: which client-given namespaces it refuses."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from overlayd.errors import InvalidRequest
from overlayd_linux_bridge.namespaces import ProcNamespaceResolver


@pytest.mark.parametrize(
    "path", ["/proc/self/ns/net", f"/proc/{os.getpid()}/ns/net"], ids=["self", "own-pid"]
)
def test_the_resolver_refuses_the_daemons_own_namespace(path: str) -> None:
    resolver = ProcNamespaceResolver()
    resolver.host_path = "/nonexistent"  # whatever pid 1's is, this test is about our own
    with (
        pytest.raises(InvalidRequest, match="overlayd's own network namespace"),
        resolver.open(path),
    ):
        pass


@pytest.mark.privileged
def test_the_resolver_refuses_the_hosts_namespace_by_identity() -> None:
    """pid 1's namespace is refused whatever path reaches it (here: another pid in it)."""
    init = subprocess.Popen(["unshare", "--net", "sleep", "30"])
    other = None
    try:
        own = os.stat("/proc/self/ns/net").st_ino
        deadline = time.monotonic() + 5
        while os.stat(f"/proc/{init.pid}/ns/net").st_ino == own:
            assert time.monotonic() < deadline, "unshare did not enter a new namespace"
            time.sleep(0.01)
        # A second process in the same namespace as our stand-in for pid 1.
        other = subprocess.Popen(["nsenter", f"--net=/proc/{init.pid}/ns/net", "sleep", "30"])
        while (
            os.stat(f"/proc/{other.pid}/ns/net").st_ino
            != os.stat(f"/proc/{init.pid}/ns/net").st_ino
        ):
            assert time.monotonic() < deadline, "nsenter did not enter the namespace"
            time.sleep(0.01)
        resolver = ProcNamespaceResolver()
        resolver.host_path = f"/proc/{init.pid}/ns/net"
        with (
            pytest.raises(InvalidRequest, match="the host's network namespace"),
            resolver.open(f"/proc/{other.pid}/ns/net"),
        ):
            pass
    finally:
        for proc in (init, other):
            if proc is not None:
                proc.kill()
                proc.wait()


def test_the_resolver_refuses_the_configured_host_namespace(tmp_path: Path) -> None:
    link = tmp_path / "host"
    link.symlink_to("/proc/self/ns/net")
    resolver = ProcNamespaceResolver(host_netns=str(link))
    resolver.host_path = "/nonexistent"
    with pytest.raises(InvalidRequest, match="manages as the host"), resolver.open(str(link)):
        pass


def test_a_host_namespace_configured_after_the_warm_up_is_refused_too(tmp_path: Path) -> None:
    """The warm-up looks the refused namespaces up early; configuring looks again."""
    link = tmp_path / "host"
    link.symlink_to("/proc/self/ns/net")
    resolver = ProcNamespaceResolver()
    resolver.host_path = "/nonexistent"
    resolver.warm_up()
    resolver.host_netns = str(link)
    with pytest.raises(InvalidRequest, match="manages as the host"), resolver.open(str(link)):
        pass
