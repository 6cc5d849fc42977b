"""The plugin through the exec protocol against ``overlayd serve --driver fake``.

No privileges: the fake driver plumbs nothing, so the "namespace" is a plain
file (the plugin only checks that ``CNI_NETNS`` exists before asking the
daemon). What happens inside real namespaces, ``CHECK`` and chaining are in
``test_cni_privileged.py``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from overlayd_cni import SUPPORTED_VERSIONS
from overlayd_cni.testing import Daemon
from overlayd_cni.testing import Plugin


@pytest.fixture
def plugin(fake_daemon: Daemon, argv: list[str]) -> Plugin:
    fake_daemon.setup_global()
    return Plugin(fake_daemon.socket, service="web", argv=argv)


@pytest.fixture
def netns(workdir: Path) -> str:
    path = workdir / "ns-c1"
    path.touch()
    return str(path)


def _error(outcome: Any, code: int, *phrases: str) -> None:
    """The runtime got exit status 1 and the specification's error object."""
    assert outcome.rc == 1, outcome
    err = outcome.out
    assert set(err) <= {"cniVersion", "code", "msg", "details"}, err
    assert err["code"] == code, err
    assert isinstance(err["msg"], str) and err["msg"]
    text = f"{err['msg']} {err.get('details', '')}"
    for phrase in phrases:
        assert phrase in text, (phrase, err)


def test_version_lists_1_0_0_and_1_1_0() -> None:
    out = Plugin("/nonexistent").run("VERSION", stdin=b'{"cniVersion":"1.0.0"}')
    assert out.rc == 0
    assert out.out == {"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]}
    assert list(SUPPORTED_VERSIONS) == ["1.0.0", "1.1.0"]
    # Without input the latest version is reported.
    assert Plugin("/nonexistent").run("VERSION", stdin=b"").out["cniVersion"] == "1.1.0"


def test_add_returns_a_spec_result_and_is_idempotent(
    plugin: Plugin, fake_daemon: Daemon, netns: str
) -> None:
    out = plugin.run("ADD", container="c1", netns=netns, ifname="net1")
    assert out.rc == 0, out
    res = out.out
    assert res["cniVersion"] == "1.1.0"
    host, ours = res["interfaces"]
    assert "sandbox" not in host and host["name"]
    assert ours["name"] == "net1" and ours["sandbox"] == netns
    assert ours["mac"] and ours["mtu"] == 1420
    (ip,) = res["ips"]
    assert ip["interface"] == 1
    address = ipaddress.ip_interface(ip["address"])
    assert address.ip in ipaddress.ip_network("10.240.0.0/20")
    assert ipaddress.ip_address(ip["gateway"]) in address.network
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": ip["gateway"]}]
    # The service overlay was created on the first ADD; the attachment is keyed
    # by the CNI identity.
    (att,) = fake_daemon.attachments()
    assert att["handle"] == {
        "platform": "netns",
        "path": netns,
        "container_id": "c1",
        "ifname": "net1",
        "network": "ovl",
    }
    assert att["service"] == "web"
    again = plugin.run("ADD", container="c1", netns=netns, ifname="net1")
    assert again.out == res
    assert len(fake_daemon.leases()) == 1


def test_cni_1_0_0_results_carry_no_mtu(plugin: Plugin, netns: str) -> None:
    conf = {**plugin.conf, "cniVersion": "1.0.0"}
    out = plugin.run("ADD", container="c1", netns=netns, conf=conf)
    assert out.rc == 0, out
    assert out.out["cniVersion"] == "1.0.0"
    assert all("mtu" not in i for i in out.out["interfaces"])


def test_del_twice_and_without_a_namespace_succeeds(
    plugin: Plugin, fake_daemon: Daemon, netns: str
) -> None:
    assert plugin.run("ADD", container="c1", netns=netns).rc == 0
    first = plugin.run("DEL", container="c1")  # no CNI_NETNS: allowed for DEL
    assert (first.rc, first.out) == (0, None)
    second = plugin.run("DEL", container="c1", netns=netns)
    assert (second.rc, second.out) == (0, None)
    assert fake_daemon.attachments() == [] and fake_daemon.leases() == []


def test_del_succeeds_when_the_daemon_is_gone(
    plugin: Plugin, fake_daemon: Daemon, netns: str
) -> None:
    assert plugin.run("ADD", container="c1", netns=netns).rc == 0
    fake_daemon.stop()
    out = plugin.run("DEL", container="c1", netns=netns)
    assert (out.rc, out.out) == (0, None)
    assert "releases the attachment when it starts" in out.err


def test_a_stale_attachment_of_the_same_identity_is_replaced(
    plugin: Plugin, fake_daemon: Daemon, workdir: Path, netns: str
) -> None:
    # A DEL was lost and the runtime reuses container id and interface for a
    # new namespace: ADD must not hand back the old namespace's attachment.
    assert plugin.run("ADD", container="c1", netns=netns).rc == 0
    other = workdir / "ns-c1-again"
    other.touch()
    out = plugin.run("ADD", container="c1", netns=str(other))
    assert out.rc == 0, out
    (att,) = fake_daemon.attachments()
    assert att["handle"]["path"] == str(other)
    assert out.out["interfaces"][1]["sandbox"] == str(other)


def test_chained_after_another_interface_plugin(plugin: Plugin, netns: str) -> None:
    prev = {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "sandbox": netns, "mac": "02:00:00:00:00:01"}],
        "ips": [{"address": "192.168.9.2/24", "gateway": "192.168.9.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "192.168.9.1"}],
        "dns": {"nameservers": ["192.168.9.1"]},
    }
    conf = {**plugin.conf, "prevResult": prev}
    out = plugin.run("ADD", container="c1", netns=netns, ifname="net1", conf=conf)
    assert out.rc == 0, out
    res = out.out
    assert res["interfaces"][0] == prev["interfaces"][0]
    assert [i["name"] for i in res["interfaces"]][-1] == "net1"
    assert res["ips"][0] == prev["ips"][0]
    assert res["ips"][1]["interface"] == len(res["interfaces"]) - 1
    # The earlier default route stays; overlayd routes only the cluster.
    gw = res["ips"][1]["gateway"]
    assert res["routes"] == [prev["routes"][0], {"dst": "10.240.0.0/16", "gw": gw}]
    assert res["dns"]["nameservers"] == ["192.168.9.1"]


def test_configured_dns_is_passed_through(plugin: Plugin, netns: str) -> None:
    dns = {"nameservers": ["10.0.0.53"], "search": ["svc.local"], "options": ["ndots:2"]}
    out = plugin.run("ADD", container="c1", netns=netns, conf={**plugin.conf, "dns": dns})
    assert out.rc == 0, out
    assert out.out["dns"] == dns


def test_gc_releases_what_is_not_valid_in_this_network_only(
    plugin: Plugin, fake_daemon: Daemon, netns: str
) -> None:
    for cid, ifname in (("a", "eth0"), ("b", "eth0"), ("b", "net1")):
        assert plugin.run("ADD", container=cid, netns=netns, ifname=ifname).rc == 0
    other = Plugin(fake_daemon.socket, name="other", service="web")
    assert other.run("ADD", container="z", netns=netns).rc == 0
    conf = {**plugin.conf, "cni.dev/valid-attachments": [{"containerID": "b", "ifname": "eth0"}]}
    out = plugin.run("GC", conf=conf, ifname="")
    assert (out.rc, out.out) == (0, None), out
    assert "released 2" in out.err
    left = {
        (a["handle"]["network"], a["handle"]["container_id"], a["handle"]["ifname"])
        for a in fake_daemon.attachments()
    }
    assert left == {("ovl", "b", "eth0"), ("other", "z", "eth0")}
    assert len(fake_daemon.leases()) == 2


def test_status_up_without_overlay_and_down(workdir: Path, argv: list[str]) -> None:
    daemon = Daemon(workdir)
    daemon.start()
    try:
        plugin = Plugin(daemon.socket, argv=argv)
        _error(plugin.run("STATUS", ifname=""), 50, "no global overlay", "setup_global_overlay")
        daemon.setup_global()
        up = plugin.run("STATUS", ifname="")
        assert (up.rc, up.out) == (0, None), up
    finally:
        daemon.stop()
    _error(plugin.run("STATUS", ifname=""), 50, "not available", "is the daemon running")


def test_check_reports_an_unknown_attachment(plugin: Plugin, netns: str) -> None:
    prev = {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "sandbox": netns}],
        "ips": [{"address": "10.240.4.2/22", "interface": 0}],
    }
    out = plugin.run(
        "CHECK", container="nope", netns=netns, conf={**plugin.conf, "prevResult": prev}
    )
    _error(out, 101, "no such attachment", "nope/eth0")
    _error(plugin.run("CHECK", container="nope", netns=netns), 7, "CHECK needs prevResult")


def test_check_reports_a_changed_address(plugin: Plugin, netns: str) -> None:
    res = plugin.run("ADD", container="c1", netns=netns).out
    res["ips"][0]["address"] = "10.240.9.9/22"
    out = plugin.run("CHECK", container="c1", netns=netns, conf={**plugin.conf, "prevResult": res})
    _error(out, 101, "address differs", "10.240.9.9/22")


# -- bad input: each a spec-shaped error, nothing left behind -----------------------


@dataclass(frozen=True)
class _Call:
    """One exec of the plugin: the command, its configuration or raw standard
    input, and the runtime's ``CNI_*`` values (:meth:`Plugin.run`'s keywords)."""

    conf: dict[str, Any]
    runtime: dict[str, Any]
    command: str = "ADD"
    stdin: bytes | None = None


def _conf(**changes: Any) -> Callable[[_Call], _Call]:
    """The call with these configuration fields (``None`` removes one)."""
    return lambda c: replace(
        c, conf={k: v for k, v in {**c.conf, **changes}.items() if v is not None}
    )


def _runtime(**changes: str) -> Callable[[_Call], _Call]:
    """The call with these ``CNI_*`` values (``container``, ``netns``, ``ifname``)."""
    return lambda c: replace(c, runtime={**c.runtime, **changes})


@pytest.mark.parametrize(
    ("case", "bad", "code", "phrases"),
    [
        ("not-json", lambda c: replace(c, stdin=b"{cniVersion: 1.0.0"), 6, ("not JSON",)),
        (
            "json-list",
            lambda c: replace(c, stdin=json.dumps([c.conf]).encode()),
            6,
            ("not a JSON object",),
        ),
        ("unknown-version", _conf(cniVersion="0.3.1"), 1, ("incompatible CNI version", "0.3.1")),
        ("no-netns", _runtime(netns=""), 4, ("missing environment variables", "CNI_NETNS")),
        ("no-container", _runtime(container=""), 4, ("CNI_CONTAINERID",)),
        ("bad-container", _runtime(container="-c1"), 4, ("invalid CNI_CONTAINERID",)),
        ("bad-ifname", _runtime(ifname="a/b"), 4, ("invalid CNI_IFNAME", "a/b")),
        ("relative-netns", _runtime(netns="run/netns/x"), 4, ("invalid CNI_NETNS",)),
        ("bad-command", lambda c: replace(c, command="FROB"), 4, ("invalid CNI_COMMAND", "FROB")),
        ("no-name", _conf(name=None), 7, ("invalid network name",)),
        ("bad-mode", _conf(mode="turbo"), 7, ("invalid 'mode'",)),
        ("bad-timeout", _conf(timeout="soon"), 7, ("invalid 'timeout'",)),
        (
            "ipam",
            _conf(ipam={"type": "host-local", "subnet": "10.9.0.0/24"}),
            2,
            ("unsupported field 'ipam'", "host-local"),
        ),
        ("ipmasq", _conf(ipMasq=True), 2, ("unsupported field 'ipMasq'", "true")),
        ("gone-netns", _runtime(netns="/nonexistent/ns"), 3, ("does not exist", "/nonexistent/ns")),
        (
            "no-daemon",  # a socket path beside the daemon's, where nothing listens
            lambda c: replace(c, conf={**c.conf, "socket": c.conf["socket"] + "-gone"}),
            11,
            ("overlayd is not reachable", "is the daemon running"),
        ),
        (
            "service-missing",
            _conf(createService=False),
            100,
            ("overlayd refused the attach", "setup_service_overlay"),
        ),
        (
            "bad-service",
            _conf(service="no such service!"),
            100,
            ("overlayd refused the attach", "service name"),
        ),
    ],
)
def test_bad_input_is_a_spec_error_and_changes_nothing(
    plugin: Plugin,
    fake_daemon: Daemon,
    netns: str,
    case: str,
    bad: Callable[[_Call], _Call],
    code: int,
    phrases: tuple[str, ...],
) -> None:
    call = bad(_Call(dict(plugin.conf), {"container": "c1", "netns": netns}))
    out = plugin.run(call.command, conf=call.conf, stdin=call.stdin, **call.runtime)
    _error(out, code, *phrases)
    assert fake_daemon.attachments() == []
    assert fake_daemon.leases() == []
    if case != "service-missing":
        assert fake_daemon.call({"op": "status"})["service_count"] == 0


def test_the_add_path_imports_only_light_modules() -> None:
    """What a runtime pays for on every exec: no pydantic, asyncio, typing, ctypes."""
    import subprocess
    import sys

    from overlayd_cni.launcher import package_roots

    heavy = ("pydantic", "asyncio", "typing", "ctypes", "argparse", "dataclasses", "pluggy")
    heavy += ("socket", "selectors")  # the plugin talks through _socket
    code = (
        f"import sys; sys.path[:0] = {package_roots()!r}; import overlayd_cni.main; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_launcher_runs_the_plugin(tmp_path: Path, plugin: Plugin, netns: str) -> None:
    import subprocess

    from overlayd_cni.launcher import install

    launcher = install(tmp_path / "bin")
    assert launcher.stat().st_mode & 0o777 == 0o755
    assert launcher.read_text().startswith("#!")
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": netns, "CNI_IFNAME": "eth0"}
    out = subprocess.run(
        [str(launcher)], input=json.dumps(plugin.conf).encode(), env=env, capture_output=True
    )
    assert out.returncode == 0, out
    assert json.loads(out.stdout)["interfaces"][1]["sandbox"] == netns
    # Run by a person (no CNI_COMMAND), it says what it is.
    usage = subprocess.run([str(launcher)], capture_output=True, text=True, env={})
    assert usage.returncode == 2 and "CNI_COMMAND is not set" in usage.stderr
