"""A real runtime: podman 4 with its CNI backend runs containers on overlayd-cni.

Everything podman needs lives in the test's temporary directory: its
``containers.conf`` (CNI backend, the test's network and plugin
directories), its storage (``vfs``), and the image, imported from a root
file system holding Debian's ``busybox-static``. Podman itself runs in a
throwaway "host" namespace (``nsenter --net``, so the namespaces it creates
under ``/run/netns`` are visible to the daemon), next to the daemon
(``linux_bridge`` + ``fake``, the ``daemon`` fixture); the conflist chains ``portmap``.

What this machine imposes, and how the test copes: its cgroups are in hybrid
mode with a controller on the v2 hierarchy, which ``crun`` (podman's default
runtime on Debian) refuses to run under; ``runc`` accepts it. The sandbox's
hard limits on open files and processes are below podman's defaults, so the
containers get explicit ``--ulimit`` values. Podman (through libcni) caches
results in ``/var/lib/cni`` and image metadata in ``/var/lib/containers``,
and creates its runtimes' state directories under ``/run``: the test removes
whichever of those it created, and the cgroups it asked for
(``--cgroup-parent``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd_cni.launcher import install
from overlayd_linux_bridge.testing import Netns

from .conftest import BridgeDaemon

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

#: Directories podman and libcni create outside the test's directory.
OUTSIDE = ("/var/lib/cni", "/var/lib/containers", "/run/runc", "/run/crun", "/run/libpod")
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


def _needs(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: apt-get install podman runc busybox-static "
            "(CI installs them, see .ci/run)"
        )


class Podman:
    """podman with a private configuration, run inside the host namespace."""

    def __init__(self, root: Path, host: Netns) -> None:
        self.root = root
        self.host = host
        self.cgroup = f"/ovt-podman-{secrets.token_hex(4)}"
        (root / "net.d").mkdir(parents=True)
        (root / "containers.conf").write_text(
            "[network]\n"
            'network_backend = "cni"\n'
            f'network_config_dir = "{root / "net.d"}"\n'
            f'cni_plugin_dirs = ["{root / "bin"}", "/usr/lib/cni", "/usr/libexec/cni"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{root / "events.log"}"\n'
            'runtime = "runc"\n'
            f'tmp_dir = "{root / "tmp"}"\n'
        )
        (root / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{root / "run"}"\n'
            f'graphroot = "{root / "graph"}"\n'
        )
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
        }

    def __call__(self, *args: str, check: bool = True, **kw: object) -> str:
        argv = ["nsenter", f"--net={self.host.path}", "podman", *args]
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=180)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {proc.stdout} {proc.stderr}")
        return proc.stdout

    def run(self, *args: str, check: bool = True) -> str:
        return self("run", "--cgroup-parent", self.cgroup, *ULIMITS, *args, check=check)

    def cleanup(self) -> None:
        self("rm", "--all", "--force", "--time", "0", check=False)
        self("rmi", "--all", "--force", check=False)
        # The cgroups of the parent asked for, deepest first.
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            parent = hierarchy / self.cgroup.lstrip("/")
            if parent.is_dir():
                for sub in sorted(parent.rglob("*"), key=lambda p: -len(p.parts)):
                    if sub.is_dir():
                        sub.rmdir()
                parent.rmdir()


def _image(root: Path, token: str) -> Path:
    """A root file system: busybox-static, its applets, and a page holding ``token``."""
    fs = root / "rootfs"
    (fs / "bin").mkdir(parents=True)
    (fs / "www").mkdir()
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", fs / "bin" / "busybox")
    for applet in ("sh", "sleep", "ip", "wget", "httpd", "cat"):
        (fs / "bin" / applet).symlink_to("busybox")
    (fs / "www" / "index.html").write_text(token)
    return fs


@pytest.fixture
def outside_dirs() -> Iterator[None]:
    before = {d for d in OUTSIDE if os.path.exists(d)}
    yield
    for d in OUTSIDE:
        if d not in before and os.path.exists(d):
            shutil.rmtree(d, ignore_errors=True)


def test_podman_runs_containers_on_the_overlay(
    tmp_path: Path, outside_dirs: None, daemon: BridgeDaemon
) -> None:
    _needs("podman", "runc", "busybox", "nsenter")
    token = secrets.token_hex(8)
    podman = Podman(tmp_path / "podman", daemon.host)
    try:
        install(podman.root / "bin")
        (podman.root / "net.d" / "ovl.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "ovl",
                    "plugins": [
                        {"type": "overlayd-cni", "socket": daemon.socket, "service": "web"},
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                }
            )
        )
        tar = subprocess.run(
            ["tar", "-C", str(_image(podman.root, token)), "-c", "."],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(
            ["podman", "import", "-", "localhost/ovl-busybox:test"],
            input=tar,
            env=podman.env,
            capture_output=True,
            check=True,
        )
        podman.run(
            *("-d", "--name", "web1", "--network", "ovl", "-p", "18082:8080"),
            *("localhost/ovl-busybox:test", "httpd", "-f", "-p", "8080", "-h", "/www"),
        )
        (att,) = daemon.process.attachments()
        web_ip = att["ip"]
        assert att["handle"]["ifname"] == "eth0" and att["service"] == "web"
        inspect = json.loads(podman("inspect", "web1"))
        assert inspect[0]["NetworkSettings"]["Networks"]["ovl"]["IPAddress"] == web_ip
        # A second container reaches the first across the overlay's bridge...
        page = ""
        deadline = time.monotonic() + 20
        while token not in page and time.monotonic() < deadline:
            page = podman.run(
                *("--rm", "--network", "ovl", "localhost/ovl-busybox:test"),
                # (busybox 1.35's wget crashes on -T: no timeout option here)
                *("wget", "-q", "-O", "-", f"http://{web_ip}:8080/"),
                check=False,
            )
        assert token in page
        # ...and the node's network reaches it through portmap.
        fetched = subprocess.run(
            [
                *("ip", "netns", "exec", daemon.outside.name, "busybox", "wget", "-q"),
                *("-O", "-", "http://192.168.79.1:18082/"),
            ],
            capture_output=True,
            timeout=30,
            text=True,
            check=False,
        ).stdout
        assert token in fetched
        # The one-shot container's DEL ran; removing web1 runs its DEL.
        assert len(daemon.process.attachments()) == 1
        podman("rm", "--force", "--time", "0", "web1")
        assert daemon.process.attachments() == []
        assert daemon.process.leases() == []
    finally:
        podman.cleanup()
