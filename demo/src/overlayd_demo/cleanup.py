"""``overlayd demo --cleanup PREFIX``: remove what a demo run left behind.

A ``--keep`` run (or one killed hard) leaves namespaces, daemons, processes,
wireguard-go's UAPI sockets and a temporary directory, all named after the
run's ``ovd-demo-xxxx`` prefix; :func:`cleanup` finds them by that prefix and
the run's manifest, asks the daemons to stop through the client, then removes
the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from overlayd.errors import OverlaydError
from overlayd_demo.common import HARD_KILL
from overlayd_demo.common import MANIFEST
from overlayd_demo.common import PREFIX_ROOT
from overlayd_demo.common import WG_SOCKET_DIR
from overlayd_demo.common import DemoFailed
from overlayd_demo.common import attempt
from overlayd_demo.common import say

__all__ = ["cleanup"]


def _netns_pids(path: str) -> list[int]:
    """Processes whose network namespace is the one pinned at ``path``."""
    target = os.stat(path)
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue  # exited meanwhile, or a kernel thread
        if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
            pids.append(int(entry))
    return pids


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def cleanup(prefix: str, *, quiet: bool = False, graceful: bool = True) -> int:
    """Remove what a demo run left: daemons, processes, namespaces, sockets, temp dirs.

    Every name starting with ``prefix`` (``ovd-demo-xxxx`` as printed by
    ``--keep``) goes: the daemons are asked to tear their overlay down and stop,
    the processes left in the namespaces get SIGTERM (wireguard-go removes its
    UAPI socket then) and SIGKILL after a grace period, then the namespaces,
    any stale UAPI sockets and the temporary directory are removed. Returns the
    number of namespaces removed. ``graceful=False`` skips asking the daemons
    (the caller has stopped them already).
    """
    if not prefix.startswith(PREFIX_ROOT) or not all(c.isalnum() or c == "-" for c in prefix):
        raise DemoFailed(
            f"refusing to clean up {prefix!r}: give the prefix the demo printed, "
            f"such as {PREFIX_ROOT}1a2b"
        )
    from pyroute2 import netns

    from overlayd.client import Client

    dirs = sorted(p for p in Path(tempfile.gettempdir()).glob(f"{prefix}*") if p.is_dir())
    manifests: list[dict[str, Any]] = []
    for tmp in dirs:
        with contextlib.suppress(OSError, ValueError):
            manifests.append(json.loads((tmp / MANIFEST).read_text()))
    for manifest in manifests if graceful else []:
        for sock in manifest.get("sockets", []):
            if not Path(sock).exists():
                continue
            try:
                client = Client(sock, timeout=10.0, connect_attempts=1)
            except OverlaydError:
                continue
            attempt("tear down the global overlay", client.teardown_global_overlay)
            attempt("stop overlayd", client.shutdown)
            attempt("close the client", client.close)

    names = sorted(n for n in netns.listnetns() if n.startswith(prefix))
    paths = [f"/run/netns/{n}" for n in names]
    deadline = time.monotonic() + 5
    sig: int = signal.SIGTERM
    while True:
        pids = [pid for path in paths for pid in _netns_pids(path)]
        if not pids:
            break
        if time.monotonic() > deadline:
            sig = HARD_KILL
        _signal_all(pids, sig)
        time.sleep(0.1)
    for name in names:
        netns.remove(name)
        if not quiet:
            say(f"removed netns {name}")
    for manifest in manifests:
        for ifname in manifest.get("interfaces", []):
            sock = Path(WG_SOCKET_DIR) / f"{ifname}.sock"
            if sock.exists():
                sock.unlink()
                if not quiet:
                    say(f"removed stale {sock}")
    for tmp in dirs:
        shutil.rmtree(tmp, ignore_errors=True)
        if not quiet:
            say(f"removed {tmp}")
    if not quiet and not names and not dirs:
        say(f"nothing named {prefix}* to clean up")
    return len(names)
