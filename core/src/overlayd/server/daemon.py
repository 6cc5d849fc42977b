"""Run the daemon: build the engine, claim the socket, serve until a signal, stop.

:func:`run_daemon` is what ``overlayd serve`` runs; signals (SIGTERM, SIGINT)
and the ``shutdown`` op begin a graceful stop; systemd is told when the daemon
is ready and when it stops.
"""

# ruff: noqa: E402  (the package's own imports follow the POSIX assert)

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

from overlayd import __version__
from overlayd.config import DaemonConfig
from overlayd.engine import Engine
from overlayd.errors import ConfigError
from overlayd.metrics import start_metrics

# POSIX only: the daemon serves a Unix socket; serving the Windows named pipe is
# not supported yet. (This assert also makes mypy --platform win32 skip the rest,
# so the server's own modules are imported after it.)
assert sys.platform != "win32", "overlayd serve is not supported on Windows yet"

from overlayd.server.core import Server

__all__ = ["run_daemon"]

log = logging.getLogger("overlayd.server")


def _sd_notify(message: str) -> None:
    """Tell systemd we are ready (Type=notify); a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)


def _late_signal(sig: int) -> None:
    log.info("%s received while already stopping", signal.Signals(sig).name)


async def run_daemon(config: DaemonConfig, *, engine: Engine | None = None) -> int:
    """Run overlayd until SIGTERM/SIGINT or a ``shutdown`` request. Returns the exit code.

    :raises SocketInUse: another daemon serves on ``config.socket``.
    :raises OverlaydError: the engine or a driver could not start.
    """
    # [cluster]: cluster mode (overlayd.cluster); None in orchestrated mode.
    from overlayd.cluster.daemon import cluster_mode

    cluster = cluster_mode(config)
    if engine is None:
        plugins: list[object] = list(cluster.plugins()) if cluster else []
        if config.dns.enabled:
            try:
                from overlayd.dns.plugin import DnsPlugin
            except ImportError as exc:
                raise ConfigError(
                    f"the built-in DNS server is not available ({exc}); "
                    "set `[dns] enabled = false` or run `overlayd serve --no-dns`"
                ) from exc
            plugins.append(DnsPlugin(config.dns))
        engine = Engine(config, plugins=plugins)
    elif cluster is not None:  # [cluster] with an engine built by the caller
        for plugin in cluster.plugins():
            engine.pm.register(plugin)
    server = Server(engine, config)
    # Claim the socket before touching the host: a second daemon must not
    # reconcile (and so disturb) what the first one owns.
    server.claim()
    loop = asyncio.get_running_loop()
    try:
        await engine.start()
        # From the moment the socket accepts, a client may see the daemon and
        # a SIGTERM must be a graceful stop, so the handlers come first.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.request_stop)
        try:
            if cluster is not None:  # [cluster]: join in the background
                await cluster.start(engine)
                server.cluster = cluster
            await server.start()
            metrics = start_metrics(config.metrics, engine)  # [metrics] (overlayd.metrics)
        except BaseException:
            await server.close()
            if cluster is not None:
                await cluster.stop()
            await engine.stop()
            raise
    except BaseException:
        server._release_lock()
        raise
    _sd_notify(f"READY=1\nSTATUS=serving on {config.socket}\nMAINPID={os.getpid()}")
    log.info(
        "overlayd %s ready (drivers: %s, data_dir: %s, event loop: %s)",
        __version__,
        ", ".join(config.drivers) or "none",
        config.data_dir or "in memory",
        type(loop).__module__.split(".")[0],  # asyncio or uvloop
        extra={"socket": str(config.socket), "pid": os.getpid()},
    )
    try:
        await server.serve_until_stopped()
    finally:
        _sd_notify("STOPPING=1")
        if metrics is not None:  # [metrics]
            metrics.stop()
        try:
            await server.close()
        finally:
            if cluster is not None:  # [cluster]
                await cluster.stop()
            await engine.stop()
            # A further SIGTERM while the process winds down must not kill it with
            # the default action (exit status -15): keep a handler installed; the
            # loop's close() removes it.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, _late_signal, sig)
    log.info("overlayd stopped after %d request(s)", server.requests_served)
    return 0
