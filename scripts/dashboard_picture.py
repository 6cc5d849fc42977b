"""Draw docs/images/dashboard.png: the panels of docs/grafana/overlayd.json,
computed from a real scrape series of a real daemon.

How the picture is made (also said in docs/observability.rst):

1. ``overlayd serve`` runs on the fake driver (no root, no packets) with the
   built-in DNS server on a loopback port and ``[metrics] listen`` on a free
   loopback port.
2. A workload runs for ``--seconds`` (default 90): bursts of attaches and
   detaches of one service, DNS queries (A and AAAA of attached names, names
   that do not exist), a request the daemon answers ``err`` now and then, and
   a ``reconcile`` every 20 seconds.
3. ``/metrics`` is scraped every ``--interval`` seconds (default 2) with
   ``prometheus_client``'s parser; the series is kept in memory.
4. Each panel of the dashboard JSON is evaluated from that series by the
   Python function named after it below: ``rate()`` over a 10-second window,
   ``histogram_quantile()`` with Prometheus's linear interpolation inside a
   bucket, ``sum by``. The functions follow the panels' PromQL; Grafana
   itself is not run. The plot is matplotlib's (install it first:
   ``pip install matplotlib``).

The fake driver has no WireGuard handshakes or traffic, so the peer panel
shows the number of peers only and the traffic panel stays empty.

Run: ``python scripts/dashboard_picture.py [-o docs/images/dashboard.png]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
from prometheus_client.parser import text_string_to_metric_families

from overlayd.client import Client
from overlayd.client import RemoteError
from overlayd.protocol import LinuxPidHandle
from overlayd.testing.daemon import setup_node
from overlayd.testing.daemon import start_daemon

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "overlayd.json"
WINDOW = 10.0

Labels = frozenset[tuple[str, str]]
#: one scrape: (time, {(name, labels): value})
Scrape = tuple[float, dict[tuple[str, Labels], float]]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _parse(text: str) -> dict[tuple[str, Labels], float]:
    out: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _workload(c: Client, dns_port: int, stop: threading.Event) -> None:
    rng = random.Random(7)  # noqa: S311 - a reproducible workload, not a secret
    attached: list[int] = []
    next_pid = 20_000
    last_reconcile = time.monotonic()
    while not stop.is_set():
        for _ in range(rng.randint(2, 12)):
            c.attach_container(LinuxPidHandle(pid=next_pid), "web")
            attached.append(next_pid)
            next_pid += 1
        while len(attached) > rng.randint(10, 60):
            c.detach_container(LinuxPidHandle(pid=attached.pop(rng.randrange(len(attached)))))
        for _ in range(rng.randint(5, 30)):
            name, qtype = rng.choice(
                [("web.dash.local.", "A"), ("web.dash.local.", "AAAA"), ("nope.dash.local.", "A")]
            )
            dns.query.udp(
                dns.message.make_query(name, qtype), "127.0.0.1", port=dns_port, timeout=2
            )
        if rng.random() < 0.2:
            with contextlib.suppress(RemoteError):
                c.attach_container(LinuxPidHandle(pid=19_999), "no-such-service")
        if time.monotonic() - last_reconcile > 20:
            c.reconcile()
            last_reconcile = time.monotonic()
        stop.wait(rng.uniform(0.2, 0.8))


def record(seconds: float, interval: float) -> list[Scrape]:
    root = Path(tempfile.mkdtemp(prefix="odash-", dir="/tmp"))
    dns_port = _free_udp_port()
    config = (
        '[drivers]\nenabled = ["fake"]\n[engine]\nhealth_interval_secs = 0\n'
        '[dns]\nzone = "dash.local."\nforward = false\nlisten_on_gateways = false\n'
        f'listen = ["127.0.0.1:{dns_port}"]\n[metrics]\nlisten = "127.0.0.1:0"\n'
    )
    daemon = start_daemon(root, config)
    scrapes: list[Scrape] = []
    try:
        url = daemon.metrics_url()
        with Client(str(daemon.socket), timeout=30) as c:
            setup_node(c, 1, deployment="dash", cluster_cidr="10.91.0.0/16")
            c.add_peer(
                "hOtkL3YkBGRWhJ8dLs7a9N5lAiHpLKKNmlTvmC0b1Fo=",
                "192.0.2.7:51820",
                "10.91.16.0/20",
                25,
            )
            stop = threading.Event()
            worker = threading.Thread(target=_workload, args=(c, dns_port, stop))
            worker.start()
            start = time.monotonic()
            try:
                while time.monotonic() - start < seconds:
                    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310
                        scrapes.append((time.monotonic() - start, _parse(resp.read().decode())))
                    time.sleep(interval)
            finally:
                stop.set()
                worker.join(30)
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    return scrapes


# -- the PromQL of the panels, in Python ----------------------------------------------


def _windows(scrapes: list[Scrape]) -> Iterator[tuple[float, float, Scrape, Scrape]]:
    """(window seconds, end time, first, last scrape) of each full 10 s window."""
    for i in range(len(scrapes)):
        t = scrapes[i][0]
        for j in range(i, -1, -1):
            if t - scrapes[j][0] >= WINDOW:
                yield t - scrapes[j][0], t, scrapes[j], scrapes[i]
                break


def _rate(
    scrapes: list[Scrape], name: str, by: tuple[str, ...]
) -> dict[str, list[tuple[float, float]]]:
    """``sum by (by) (rate(name[10s]))`` per scrape."""
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for span, t1, (_, a), (_, b) in _windows(scrapes):
        sums: dict[str, float] = defaultdict(float)
        for (n, labels), v in b.items():
            if n != name:
                continue
            key = " ".join(dict(labels).get(k, "") for k in by) or name
            sums[key] += (v - a.get((n, labels), 0.0)) / span
        for key, v in sums.items():
            out[key].append((t1, v))
    return out


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile over cumulative (le, count) pairs."""
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_le, prev_count = le, count
    return prev_le


def _hq(
    scrapes: list[Scrape], q: float, name: str, by: tuple[str, ...] = ()
) -> dict[str, list[tuple[float, float]]]:
    """``histogram_quantile(q, sum by (by, le) (rate(name_bucket[10s])))``."""
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _, t1, (_, a), (_, b) in _windows(scrapes):
        groups: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for (n, labels), v in b.items():
            if n != f"{name}_bucket":
                continue
            d = dict(labels)
            key = " ".join(d.get(k, "") for k in by) or name
            groups[key][float(d["le"])] += v - a.get((n, labels), 0.0)
        for key, per_le in groups.items():
            value = _quantile(q, list(per_le.items()))
            if value is not None:
                out[key].append((t1, value))
    return out


def _gauge(
    scrapes: list[Scrape], name: str, by: tuple[str, ...] = ()
) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t, data in scrapes:
        for (n, labels), v in data.items():
            if n == name:
                key = " ".join(dict(labels).get(k, "") for k in by) or name
                out[key].append((t, v))
    return out


def _increase(
    scrapes: list[Scrape], name: str, by: tuple[str, ...]
) -> dict[str, list[tuple[float, float]]]:
    """``sum by (by) (increase(name[10s]))``: the rate times the window."""
    rates = _rate(scrapes, name, by)
    return {k: [(t, v * WINDOW) for t, v in points] for k, points in rates.items()}


def _max_by(scrapes: list[Scrape], name: str, label: str) -> dict[str, list[tuple[float, float]]]:
    """``max by (label) (name)``."""
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t, data in scrapes:
        best: dict[str, float] = {}
        for (n, labels), v in data.items():
            if n == name:
                key = dict(labels).get(label, "")
                best[key] = max(v, best.get(key, v))
        for key, v in best.items():
            out[key].append((t, v))
    return out


def _merge(
    *parts: tuple[str, dict[str, list[tuple[float, float]]]],
) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for prefix, series in parts:
        for key, points in series.items():
            out[f"{prefix} {key}".strip()] = points
    return out


PANELS: dict[str, Callable[[list[Scrape]], dict[str, list[tuple[float, float]]]]] = {
    "Attach latency (p50, p99)": lambda s: _merge(
        (
            "attach p50",
            {
                "": _hq(s, 0.5, "overlayd_attach_duration_seconds").get(
                    "overlayd_attach_duration_seconds", []
                )
            },
        ),
        (
            "attach p99",
            {
                "": _hq(s, 0.99, "overlayd_attach_duration_seconds").get(
                    "overlayd_attach_duration_seconds", []
                )
            },
        ),
        (
            "detach p99",
            {
                "": _hq(s, 0.99, "overlayd_detach_duration_seconds").get(
                    "overlayd_detach_duration_seconds", []
                )
            },
        ),
    ),
    "Attaches, detaches and failures per second": lambda s: _merge(
        (
            "attaches",
            {
                "": _rate(s, "overlayd_attach_duration_seconds_count", ()).get(
                    "overlayd_attach_duration_seconds_count", []
                )
            },
        ),
        (
            "detaches",
            {
                "": _rate(s, "overlayd_detach_duration_seconds_count", ()).get(
                    "overlayd_detach_duration_seconds_count", []
                )
            },
        ),
        ("attach failed:", _rate(s, "overlayd_attach_failures_total", ("reason",))),
    ),
    "IPC requests per second by op and result": lambda s: _rate(
        s, "overlayd_ipc_requests_total", ("op", "result")
    ),
    "IPC latency p99 by op": lambda s: _hq(
        s, 0.99, "overlayd_ipc_request_duration_seconds", ("op",)
    ),
    "Attachments and IPAM pool use": lambda s: _merge(
        ("", _gauge(s, "overlayd_attachments")),
        ("leases", _gauge(s, "overlayd_ipam_leases", ("pool",))),
    ),
    "DNS queries per second by type and result": lambda s: _rate(
        s, "overlayd_dns_queries_total", ("type", "result")
    ),
    "Peers, and the oldest handshake age (s)": lambda s: _merge(
        ("peers", _gauge(s, "overlayd_peers", ("device",))),
        ("oldest handshake", _max_by(s, "overlayd_peer_last_handshake_age_seconds", "device")),
    ),
    "Peer traffic (bytes per second)": lambda s: _merge(
        ("received", _rate(s, "overlayd_peer_receive_bytes_total", ("device",))),
        ("sent", _rate(s, "overlayd_peer_transmit_bytes_total", ("device",))),
    ),
    "Reconcile runs and repairs": lambda s: _merge(
        ("runs", _increase(s, "overlayd_reconcile_runs_total", ())),
        ("repaired", _increase(s, "overlayd_reconcile_repairs_total", ("kind",))),
    ),
}


def draw(scrapes: list[Scrape], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] == "timeseries"]
    fig, axes = plt.subplots(3, 3, figsize=(18, 11), facecolor="#181b1f")
    for ax, panel in zip(axes.flat, panels, strict=True):
        ax.set_facecolor("#111217")
        ax.set_title(panel["title"], color="#d8d9da", fontsize=11, loc="left")
        ax.tick_params(colors="#9fa1a6", labelsize=8)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.grid(color="#2c3235", linewidth=0.6)
        series = PANELS[panel["title"]](scrapes)
        unit = panel["fieldConfig"]["defaults"]["unit"]
        scale = 1000.0 if unit == "s" else 1.0
        for key, points in sorted(series.items()):
            if points:
                ax.plot(
                    [t for t, _ in points], [v * scale for _, v in points], label=key, linewidth=1.4
                )
        if unit == "s":
            ax.set_ylabel("ms", color="#9fa1a6", fontsize=8)
        if series and any(series.values()):
            ax.legend(
                fontsize=7,
                facecolor="#181b1f",
                labelcolor="#d8d9da",
                edgecolor="#2c3235",
                loc="upper left",
            )
        else:
            ax.text(
                0.5,
                0.5,
                "no data (fake driver)",
                color="#9fa1a6",
                ha="center",
                transform=ax.transAxes,
            )
        ax.set_xlabel("seconds", color="#9fa1a6", fontsize=8)
    info = [labels for (n, labels) in scrapes[-1][1] if n == "overlayd_build_info"]
    build = ", ".join(f"{k}={v}" for k, v in sorted(info[0])) if info else ""
    fig.suptitle(
        f"overlayd — dashboard panels from a recorded scrape series ({build})", color="#d8d9da"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Draw the dashboard picture from a real scrape series."
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=ROOT / "docs" / "images" / "dashboard.png"
    )
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args(argv)
    scrapes = record(args.seconds, args.interval)
    print(f"{len(scrapes)} scrapes recorded", flush=True)
    draw(scrapes, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
