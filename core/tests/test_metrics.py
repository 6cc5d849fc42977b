"""Prometheus metrics of a daemon over IPC: exact counts after a known sequence,
and ``promtool check metrics`` on a scrape."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest

from overlayd import protocol as p
from overlayd.client import Client
from overlayd.client import RemoteError
from overlayd.testing.daemon import DaemonProcess
from overlayd.testing.daemon import serve_command
from overlayd.testing.daemon import setup_node
from overlayd.testing.daemon import start_daemon

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the daemon serves Unix sockets")

prometheus_parser = pytest.importorskip("prometheus_client.parser")


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback test URL
        text: str = resp.read().decode()
        return text


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in prometheus_parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(
    data: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return data.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def daemon() -> Iterator[tuple[DaemonProcess, int]]:
    root = Path(tempfile.mkdtemp(prefix="omx-", dir="/tmp"))
    dns_port = _free_port(socket.SOCK_DGRAM)
    config = (
        '[drivers]\nenabled = ["fake"]\n'
        "[engine]\nhealth_interval_secs = 0\n"
        f'[dns]\nzone = "mx.local."\nforward = false\nlisten_on_gateways = false\n'
        f'listen = ["127.0.0.1:{dns_port}"]\n'
        '[metrics]\nlisten = "127.0.0.1:0"\n'
    )
    proc = start_daemon(root, config)
    try:
        yield proc, dns_port
    finally:
        try:
            assert proc.stop() == 0, proc.log_text()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _setup(c: Client) -> None:
    setup_node(c, 1, deployment="mx", cluster_cidr="10.77.0.0/16")


def test_a_scrape_counts_exactly_the_sequence(daemon: tuple[DaemonProcess, int]) -> None:
    proc, dns_port = daemon
    url = proc.metrics_url()
    with Client(str(proc.socket), timeout=10) as c:
        _setup(c)
        for pid in (4101, 4102, 4103):
            c.attach_container(p.LinuxPidHandle(pid=pid), "web")
        c.detach_container(p.LinuxPidHandle(pid=4102))
        with pytest.raises(RemoteError, match="no-such-service"):
            c.attach_container(p.LinuxPidHandle(pid=4104), "no-such-service")
    reply = dns.query.udp(
        dns.message.make_query("web.mx.local.", "A"), "127.0.0.1", port=dns_port, timeout=5
    )
    assert len(reply.answer[0]) == 2
    data = samples(scrape(url))

    assert value(data, "overlayd_attach_duration_seconds_count") == 3
    assert value(data, "overlayd_detach_duration_seconds_count") == 1
    assert value(data, "overlayd_attachments") == 2
    assert value(data, "overlayd_ipc_requests_total", op="attach_container", result="attached") == 3
    assert value(data, "overlayd_ipc_requests_total", op="detach_container", result="ok") == 1
    assert value(data, "overlayd_ipc_requests_total", op="attach_container", result="err") == 1
    errs = sum(
        v
        for (n, labels), v in data.items()
        if n == "overlayd_ipc_requests_total" and ("result", "err") in labels
    )
    assert errs == 1
    assert value(data, "overlayd_ipc_request_duration_seconds_count", op="attach_container") == 4
    assert value(data, "overlayd_dns_queries_total", type="A", result="noerror") == 1
    dns_total = sum(v for (n, _), v in data.items() if n == "overlayd_dns_queries_total")
    assert dns_total == 1
    assert value(data, "overlayd_ipam_leases", pool="service:web") == 2
    assert value(data, "overlayd_ipam_pool_addresses", pool="service:web") > 2
    assert value(data, "overlayd_reconcile_runs_total", outcome="ok") == 1  # the startup pass
    assert value(data, "overlayd_attach_failures_total", reason="NotFound") == 1
    assert value(data, "overlayd_detach_failures_total", reason="NotFound") == 0
    info = [labels for (n, labels), _ in data.items() if n == "overlayd_build_info"]
    assert info and ("drivers", "fake") in info[0]


def test_scrape_passes_promtool(daemon: tuple[DaemonProcess, int]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    proc, _ = daemon
    url = proc.metrics_url()
    with Client(str(proc.socket), timeout=10) as c:
        _setup(c)
        c.attach_container(p.LinuxPidHandle(pid=4201), "web")
        c.add_peer(
            "hOtkL3YkBGRWhJ8dLs7a9N5lAiHpLKKNmlTvmC0b1Fo=", "192.0.2.7:51820", "10.77.9.0/24", 25
        )
        with pytest.raises(RemoteError):
            c.attach_container(p.LinuxPidHandle(pid=4202), "no-such-service")
    text = scrape(url)
    assert "overlayd_peer_receive_bytes_total" in text
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert done.stdout.decode().strip() == "" and done.stderr.decode().strip() == ""


def test_a_bad_listen_address_is_a_config_error() -> None:
    from overlayd.config import load_config
    from overlayd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"`metrics.listen`: .*'9464' is not host:port"):
        load_config(None, drivers=["fake"], metrics={"listen": "9464"})


def test_metrics_without_prometheus_client_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from overlayd.config import MetricsSettings
    from overlayd.errors import ConfigError
    from overlayd.metrics import start_metrics

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    engine: object = object()  # never reached: the library check comes first
    with pytest.raises(ConfigError, match=r"pip install 'overlayd\[metrics\]'"):
        start_metrics(MetricsSettings(listen="127.0.0.1:0"), engine)  # type: ignore[arg-type]
    assert start_metrics(MetricsSettings(), engine) is None  # type: ignore[arg-type]


def test_serve_refuses_a_metrics_port_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            serve_command(
                "--driver",
                "fake",
                "--in-memory",
                "--no-dns",
                "--socket",
                str(tmp_path / "s.sock"),
                "--metrics",
                f"127.0.0.1:{port}",
            ),
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stderr.decode()
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr.decode()
    assert not (tmp_path / "s.sock").exists()
