"""Test helpers: the plugin run as a container runtime runs it, and a fake daemon.

A runtime execs the plugin with a clean environment holding the ``CNI_*``
variables, writes the configuration to its standard input and reads the
result or error object from standard output; :class:`Plugin` does exactly
that with the installed ``overlayd-cni`` executable. :class:`FakeDaemon` runs
``overlayd serve --driver fake``; :class:`ScriptedSocket` is a daemon socket
that answers each request frame as a test tells it. Shipped in the package (like
``overlayd_linux_bridge.testing``) so the project's end-to-end tests and the
benchmark reuse them; nothing here is imported by the plugin itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlayd.rawclient import RawClient
from overlayd.testing.daemon import frame_bytes
from overlayd.testing.daemon import raw_connect
from overlayd.testing.daemon import recv_frame

__all__ = [
    "PLUGIN",
    "Chain",
    "Daemon",
    "Outcome",
    "Plugin",
    "ScriptedSocket",
    "execute",
    "native_plugin",
    "plugin_argv",
    "reference_plugin",
]

#: The installed console script (a runtime finds it in its plugin directory).
PLUGIN = Path(sys.executable).with_name("overlayd-cni")
#: Where Debian's ``containernetworking-plugins`` puts the reference plugins.
REFERENCE_DIRS = ("/usr/lib/cni", "/usr/libexec/cni", "/opt/cni/bin")


def reference_plugin(name: str) -> str | None:
    """Path of reference plugin ``name`` (``portmap``, ``bridge``…), ``None`` if absent."""
    for directory in REFERENCE_DIRS:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def plugin_argv() -> list[str]:
    """How to exec overlayd-cni: the console script, else ``python -m overlayd_cni``."""
    return [str(PLUGIN)] if PLUGIN.exists() else [sys.executable, "-m", "overlayd_cni"]


def native_plugin(directory: Path) -> list[str]:
    """Build the C front end into ``directory`` (``install --native``); how to exec it."""
    from overlayd_cni.launcher import install

    return [str(install(directory, native=True))]


@dataclass
class Outcome:
    """What the runtime sees: exit status, the JSON on standard output, standard error."""

    rc: int
    out: Any
    err: str


def execute(
    argv: list[str],
    command: str,
    stdin: bytes,
    *,
    container: str = "",
    netns: str = "",
    ifname: str = "",
    env: dict[str, str] | None = None,
    netns_exec: str | None = None,
) -> Outcome:
    """Exec a CNI plugin as a runtime does: clean environment, stdin, stdout, status.

    ``netns_exec`` runs it inside that named namespace (``ip netns exec``):
    the "host" namespace of a test, where the runtime would run it.
    """
    environ = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    environ["CNI_COMMAND"] = command
    environ["CNI_PATH"] = ":".join(REFERENCE_DIRS)
    for key, value in (
        ("CNI_CONTAINERID", container),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
    ):
        if value:
            environ[key] = value
    environ.update(env or {})
    if netns_exec is not None:
        argv = ["ip", "netns", "exec", netns_exec, *argv]
    proc = subprocess.run(  # noqa: S603 - test helper, fixed argv
        argv, input=stdin, env=environ, capture_output=True, timeout=60, check=False
    )
    text = proc.stdout.decode()
    out = json.loads(text) if text.strip() else None
    return Outcome(proc.returncode, out, proc.stderr.decode())


class Plugin:
    """Runs ``overlayd-cni`` with a clean environment, as a container runtime does.

    ``argv`` is the executable (default :func:`plugin_argv`, the console script),
    e.g. a launcher or the compiled front end (:func:`native_plugin`).
    """

    def __init__(
        self, socket: str, name: str = "ovl", *, argv: list[str] | None = None, **conf: Any
    ) -> None:
        self.argv = argv
        self.conf: dict[str, Any] = {
            "cniVersion": "1.1.0",
            "name": name,
            "type": "overlayd-cni",
            "socket": socket,
            **conf,
        }

    def run(
        self,
        command: str,
        *,
        container: str = "",
        netns: str = "",
        ifname: str = "eth0",
        conf: dict[str, Any] | None = None,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        netns_exec: str | None = None,
    ) -> Outcome:
        data = stdin if stdin is not None else json.dumps(conf or self.conf).encode()
        return execute(
            self.argv or plugin_argv(),
            command,
            data,
            container=container,
            netns=netns,
            ifname=ifname,
            env=env,
            netns_exec=netns_exec,
        )


class Chain:
    """A network configuration list executed as the specification's section 3 says.

    ``ADD`` runs the plugins in order, each given the previous one's result
    as ``prevResult``; ``DEL`` runs them in reverse and ``CHECK`` in order,
    both with the final ``ADD`` result; ``GC`` and ``STATUS`` run every plugin.
    ``runtimeConfig`` is derived from each plugin's ``capabilities`` and the
    capability arguments given to :meth:`add`.
    """

    def __init__(self, conflist: dict[str, Any], *, netns_exec: str | None = None) -> None:
        self.conflist = conflist
        self.netns_exec = netns_exec
        #: Final ADD results by (container, ifname), as a runtime caches them.
        self.cache: dict[tuple[str, str], Any] = {}

    def _argv(self, plugin: dict[str, Any]) -> list[str]:
        if plugin["type"] == "overlayd-cni":
            return plugin_argv()
        path = reference_plugin(plugin["type"])
        if path is None:
            raise FileNotFoundError(f"CNI plugin {plugin['type']} is not installed")
        return [path]

    def _request(self, plugin: dict[str, Any], prev: Any, capability_args: dict[str, Any]) -> bytes:
        conf = {k: v for k, v in plugin.items() if k != "capabilities"}
        conf["cniVersion"] = self.conflist["cniVersion"]
        conf["name"] = self.conflist["name"]
        runtime = {
            key: value
            for key, value in capability_args.items()
            if plugin.get("capabilities", {}).get(key)
        }
        if runtime:
            conf["runtimeConfig"] = runtime
        if prev is not None:
            conf["prevResult"] = prev
        return json.dumps(conf).encode()

    def _exec(
        self,
        plugin: dict[str, Any],
        command: str,
        stdin: bytes,
        container: str,
        netns: str,
        ifname: str,
    ) -> Outcome:
        return execute(
            self._argv(plugin),
            command,
            stdin,
            container=container,
            netns=netns,
            ifname=ifname,
            netns_exec=self.netns_exec,
        )

    def add(
        self, container: str, netns: str, ifname: str = "eth0", **capability_args: Any
    ) -> Outcome:
        prev: Any = None
        outcome = Outcome(0, None, "")
        for plugin in self.conflist["plugins"]:
            stdin = self._request(plugin, prev, capability_args)
            outcome = self._exec(plugin, "ADD", stdin, container, netns, ifname)
            if outcome.rc != 0:
                return outcome
            prev = outcome.out
        self.cache[(container, ifname)] = (prev, capability_args)
        return outcome

    def delete(self, container: str, netns: str = "", ifname: str = "eth0") -> Outcome:
        prev, capability_args = self.cache.get((container, ifname), (None, {}))
        outcome = Outcome(0, None, "")
        for plugin in reversed(self.conflist["plugins"]):
            stdin = self._request(plugin, prev, capability_args)
            outcome = self._exec(plugin, "DEL", stdin, container, netns, ifname)
            if outcome.rc != 0:
                return outcome
        self.cache.pop((container, ifname), None)
        return outcome

    def check(
        self, container: str, netns: str, ifname: str = "eth0", *, skip: tuple[str, ...] = ()
    ) -> Outcome:
        """``CHECK`` every plugin whose type is not in ``skip``."""
        prev, capability_args = self.cache[(container, ifname)]
        outcome = Outcome(0, None, "")
        for plugin in self.conflist["plugins"]:
            if plugin["type"] in skip:
                continue
            stdin = self._request(plugin, prev, capability_args)
            outcome = self._exec(plugin, "CHECK", stdin, container, netns, ifname)
            if outcome.rc != 0:
                return outcome
        return outcome


@dataclass
class Daemon:
    """``overlayd serve`` in a temporary directory, optionally inside a named namespace.

    ``drivers`` are enabled in that order; ``dns`` runs the built-in DNS
    server; ``netns`` runs the daemon with ``ip netns exec`` (a test's "host").
    """

    root: Path
    drivers: tuple[str, ...] = ("fake",)
    netns: str | None = None
    dns: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return str(self.root / "s.sock")

    def start(self) -> None:
        config = self.root / "overlayd.toml"
        names = ", ".join(f'"{d}"' for d in self.drivers)
        config.write_text(
            f"[drivers]\nenabled = [{names}]\n"
            f'[drivers.fake]\nstate_file = "{self.root / "fake.json"}"\n'
            "[engine]\nhealth_interval_secs = 0\n"
        )
        argv = [sys.executable, "-m", "overlayd", "serve", "--config", str(config)]
        argv += ["--socket", self.socket, "--data-dir", str(self.root / "data")]
        argv += [] if self.dns else ["--no-dns"]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        with (self.root / "daemon.log").open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - test helper, fixed argv
                argv, stdout=log, stderr=subprocess.STDOUT
            )
        # Ready once the socket accepts a connection (start_daemon's rule).
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log()
            try:
                with raw_connect(self.socket, timeout=1.0):
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(30) == 0, self.log()

    def log(self) -> str:
        return (self.root / "daemon.log").read_text(errors="replace")[-3000:]

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        with RawClient(self.socket, timeout=30) as client:
            return client.call(request)

    def setup_global(self, cluster: str = "10.240.0.0/16", slice_: str = "10.240.0.0/20") -> None:
        self.call(
            {
                "op": "setup_global_overlay",
                "deployment": "cni",
                "instance_id": "n1",
                "cluster_cidr": cluster,
                "slice_cidr": slice_,
                "wg_port": 51820,
                "nat_enabled": False,
            }
        )

    def attachments(self) -> list[dict[str, Any]]:
        return list(self.call({"op": "list_attachments"})["attachments"])

    def leases(self) -> list[dict[str, Any]]:
        return list(self.call({"op": "list_leases"})["leases"])


class ScriptedSocket:
    """A Unix socket that answers each request frame through ``reply``.

    ``reply(request, send)`` gets the decoded request frame and a function
    that sends the bytes it is given on the connection (the whole answer,
    pieces of it, or a frame cut short); when it returns ``False`` the
    connection is closed, otherwise the next request is read from it. The
    op of each request is kept in ``ops``.
    """

    def __init__(
        self, path: str, reply: Callable[[dict[str, Any], Callable[[bytes], None]], bool | None]
    ) -> None:
        self.path = path
        self.ops: list[str] = []
        self._reply = reply
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(path)
        self._listener.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    @staticmethod
    def frame(request: dict[str, Any], response: dict[str, Any]) -> bytes:
        """The response frame answering ``request`` with ``response``, length first."""
        body = json.dumps({"frame": "response", "id": request["id"], "response": response})
        return frame_bytes(body.encode())

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            # A client that gives up early closes its end: not the server's failure.
            with conn, contextlib.suppress(OSError):
                while (request := recv_frame(conn)) is not None:
                    self.ops.append(request["request"]["op"])
                    if self._reply(request, conn.sendall) is False:
                        break

    def close(self) -> None:
        self._listener.close()
