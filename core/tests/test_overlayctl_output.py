"""What ``overlayctl`` prints for each answer, text and ``--json``, without a daemon.

The commands are run against a stand-in for :class:`overlayd.client.Client`
that returns fixed protocol models, so the rendering of answers the e2e tests
rarely see (a guest's config, a reconcile with errors, a dry-run gc) is pinned.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from overlayd import protocol as p
from overlayd.cli import EXIT_CONNECT
from overlayd.cli import EXIT_ERR
from overlayd.cli import EXIT_OK
from overlayd.cli import EXIT_TIMEOUT
from overlayd.cli import EXIT_USAGE
from overlayd.cli import overlayctl as ctl_module
from overlayd.cli import overlayctl_main
from overlayd.cli.common import UsageError
from overlayd.client import ConnectError
from overlayd.client import ConnectionLost
from overlayd.client import RemoteError
from overlayd.client import RequestTimeout
from overlayd.errors import InvalidRequest
from overlayd.errors import OverlaydError

KEY = "A" * 43 + "="


class _StubClient:
    """Answers like a daemon would."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def close(self) -> None:
        pass

    def attach_container(self, handle: p.AnyHandle, service: str, **kwargs: Any) -> p.AnyResponse:
        if isinstance(handle, p.GuestManagedHandle):
            return p.GuestConfigResponse(
                overlay_ip="10.200.3.2",
                prefix_len=24,
                private_key=KEY,
                public_key=KEY,
                listen_port=51820,
                peers=[
                    p.PeerSpec(
                        public_key=KEY,
                        endpoint="",
                        allowed_ips="10.200.0.0/16",
                        persistent_keepalive_secs=25,
                    )
                ],
                dns_domain="svc",
            )
        return p.AttachedResponse(ip="10.200.3.3")

    def hello(self, client: str) -> p.HelloResponse:
        return p.HelloResponse(
            protocol_version=1,
            server_version="9.9",
            ops=["status", "gc"],
            drivers=[p.DriverDescription(name="fake", api=1, platforms=[], capabilities=["x"])],
        )

    def gc(self, live: list[p.AnyHandle], *, dry_run: bool = False) -> p.GcReportResponse:
        return p.GcReportResponse.model_validate(
            {"released": [{"platform": "linux_pid", "pid": 7}], "kept": 2}
        )

    def reconcile(self) -> p.ReconcileReportResponse:
        return p.ReconcileReportResponse(
            adopted=1, recreated=2, removed=0, released=3, errors=["web: bridge gone"]
        )


@pytest.fixture(autouse=True)
def _stub_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctl_module, "Client", _StubClient)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    assert overlayctl_main(["--socket", "/nonexistent.sock", *argv]) == EXIT_OK
    return capsys.readouterr().out.splitlines()


def test_attach_guest_prints_its_config_and_peers(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _run(capsys, "attach", "--guest", "vm1", "--service", "web")
    assert lines[:6] == [
        "handle:      guest:vm1",
        "overlay ip:  10.200.3.2/24",
        f"public key:  {KEY}",
        f"private key: {KEY}",
        "listen port: 51820",
        "dns domain:  svc",  # dns server is None: left out
    ]
    assert lines[6] == ""
    assert lines[7].split() == ["PEER", "PUBLIC", "KEY", "ENDPOINT", "ALLOWED", "IPS", "KEEPALIVE"]
    assert lines[8].split() == [KEY, "-", "10.200.0.0/16", "25"]


def test_attach_pid_prints_its_address(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _run(capsys, "attach", "--pid", "5", "--service", "web")
    assert lines == ["handle:  pid:5", "service: web", "ip:      10.200.3.3"]


def test_reconcile_prints_counts_then_each_error(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _run(capsys, "reconcile")
    assert lines == [
        "adopted:   1",
        "recreated: 2",
        "removed:   0",
        "released:  3",
        "errors:    1",
        "  web: bridge gone",
    ]


@pytest.mark.parametrize(("flags", "verb"), [(["--dry-run"], "would release"), ([], "released")])
def test_gc_says_what_it_released(
    capsys: pytest.CaptureFixture[str], flags: list[str], verb: str
) -> None:
    lines = _run(capsys, "gc", "--live", *flags)
    assert lines == [f"{verb} 1 attachment(s); 2 kept", "  pid:7"]


def test_drivers_prints_versions_and_a_driver_table(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _run(capsys, "drivers")
    assert lines[:3] == ["server version:   9.9", "protocol version: 1", "ops:              2"]
    assert lines[4].split() == ["DRIVER", "API", "PLATFORMS", "CAPABILITIES"]
    assert lines[5].split() == ["fake", "1", "any", "x"]


@pytest.mark.parametrize(
    ("argv", "result"),
    [
        (["attach", "--guest", "vm1", "--service", "web"], "guest_config"),
        (["drivers"], "hello"),
        (["gc", "--live"], "gc_report"),
        (["reconcile"], "reconcile_report"),
    ],
)
def test_json_prints_the_wire_form(
    capsys: pytest.CaptureFixture[str], argv: list[str], result: str
) -> None:
    data = json.loads("\n".join(_run(capsys, "--json", *argv)))
    assert data["result"] == result


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RequestTimeout("overlayd did not answer reconcile"), EXIT_TIMEOUT),
        (ConnectionLost("the connection to overlayd broke"), EXIT_CONNECT),
        (ConnectError("cannot connect to overlayd"), EXIT_CONNECT),
        (RemoteError("no such service"), EXIT_ERR),
        (p.ProtocolError("not a request"), EXIT_USAGE),
        (InvalidRequest("not a ProtocolError"), EXIT_ERR),
        (UsageError("--ip only goes with --container"), EXIT_USAGE),
        (OverlaydError("something else"), EXIT_ERR),
    ],
)
def test_errors_map_to_exit_codes(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    code: int,
) -> None:
    def fail(self: _StubClient) -> p.ReconcileReportResponse:
        raise error

    monkeypatch.setattr(_StubClient, "reconcile", fail)
    assert overlayctl_main(["--socket", "/nonexistent.sock", "reconcile"]) == code
    assert capsys.readouterr().err.startswith("overlayctl: ")
