"""The compiled front end and the daemon's ``cni_exec`` op.

The op is tested in-process (a server over the fake driver); the front end
as a runtime runs it, against ``overlayd serve --driver fake``, a daemon that
answers ``err``, and no daemon at all: whenever it cannot take the fast path
it must behave exactly as the Python plugin, which it then runs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlayd.rawclient import RawClient
from overlayd.rawclient import RemoteError
from overlayd.server.cni_exec import CNI_NOT_INSTALLED
from overlayd.testing.inproc import serving
from overlayd.testing.inproc import setup_overlay
from overlayd_cni import inprocess
from overlayd_cni.launcher import InstallError
from overlayd_cni.launcher import install
from overlayd_cni.main import execute
from overlayd_cni.testing import Daemon
from overlayd_cni.testing import Plugin
from overlayd_cni.testing import ScriptedSocket
from overlayd_fake.driver import FakeDriver

# -- the op, in-process ----------------------------------------------------------


@pytest.fixture
async def sock(short_tmp_path: Path) -> AsyncIterator[str]:
    async with serving(short_tmp_path, make_drivers=lambda: [FakeDriver()], in_memory=True) as d:
        await setup_overlay(await d.client(), deployment="cni")
        yield str(d.socket)


async def _call(path: str, request: dict[str, Any]) -> dict[str, Any]:
    """One request from a worker thread (the blocking client, as the front end speaks)."""

    def call() -> dict[str, Any]:
        with RawClient(path, timeout=10) as client:
            return client.call(request)

    return await asyncio.to_thread(call)


def _conf(sock: str, **extra: Any) -> str:
    conf = {"cniVersion": "1.1.0", "name": "ovl", "socket": sock, "service": "web", **extra}
    return json.dumps(conf)


async def test_cni_exec_runs_add_gc_del_status_in_the_daemon(sock: str, tmp_path: Path) -> None:
    netns = tmp_path / "ns"
    netns.touch()
    env = {"container_id": "c1", "netns": str(netns), "ifname": "eth0"}
    add = {"op": "cni_exec", "command": "ADD", **env, "stdin": _conf(sock)}
    answer = await _call(sock, add)
    assert answer["result"] == "cni_result" and answer["exit_code"] == 0, answer
    result = json.loads(answer["stdout"])
    assert result["interfaces"][1] == {**result["interfaces"][1], "sandbox": str(netns)}
    atts = (await _call(sock, {"op": "list_attachments"}))["attachments"]
    assert [a["handle"]["container_id"] for a in atts] == ["c1"]
    # The same ADD again: the same attachment (idempotent by identity).
    again = await _call(sock, add)
    assert json.loads(again["stdout"])["ips"] == result["ips"]
    status = await _call(sock, {"op": "cni_exec", "command": "STATUS", "stdin": _conf(sock)})
    assert (status["exit_code"], status["stdout"]) == (0, "")
    gc = await _call(sock, {"op": "cni_exec", "command": "GC", "stdin": _conf(sock)})
    assert gc["exit_code"] == 0 and "released 1 attachment" in gc["stderr"]
    for _ in range(2):
        done = await _call(sock, {"op": "cni_exec", "command": "DEL", **env, "stdin": _conf(sock)})
        assert (done["exit_code"], done["stdout"]) == (0, ""), done
    assert (await _call(sock, {"op": "list_attachments"}))["attachments"] == []


@pytest.mark.parametrize(
    ("command", "env", "stdin"),
    [
        ("ADD", {}, "{not json"),
        ("ADD", {"container_id": "c1", "ifname": "eth0"}, None),  # no CNI_NETNS
        ("ADD", {"container_id": "c1", "netns": "/nonexistent/ns", "ifname": "eth0"}, None),
        ("FROB", {}, None),
        ("VERSION", {}, '{"cniVersion":"1.0.0"}'),
    ],
)
async def test_cni_exec_answers_what_the_plugin_prints(
    sock: str, command: str, env: dict[str, str], stdin: str | None
) -> None:
    text = stdin if stdin is not None else _conf(sock)
    answer = await _call(sock, {"op": "cni_exec", "command": command, **env, "stdin": text})
    names = {"container_id": "CNI_CONTAINERID", "netns": "CNI_NETNS", "ifname": "CNI_IFNAME"}
    local = execute(
        {"CNI_COMMAND": command, **{names[k]: v for k, v in env.items()}}, text.encode()
    )
    assert (answer["exit_code"], answer["stdout"]) == local[:2]


async def test_cni_exec_runs_on_the_event_loop_and_a_slow_add_blocks_nothing_else(
    short_tmp_path: Path,
) -> None:
    """The flow awaits its requests on the loop: no thread of its own, and while
    an ADD waits for a slow driver, status and a second ADD are answered."""
    driver = FakeDriver()
    async with serving(short_tmp_path, make_drivers=lambda: [driver], in_memory=True) as d:
        await setup_overlay(await d.client(), deployment="cni")
        sock = str(d.socket)
        threads_before = {t.name for t in threading.enumerate()}
        driver.set_latency("overlayd_attach", 0.5)
        env = {"container_id": "slow", "netns": "/proc/self/ns/net", "ifname": "eth0"}
        slow = asyncio.ensure_future(
            _call(sock, {"op": "cni_exec", "command": "ADD", **env, "stdin": _conf(sock)})
        )
        await asyncio.sleep(0.1)
        status = await _call(sock, {"op": "cni_exec", "command": "STATUS", "stdin": _conf(sock)})
        assert status["exit_code"] == 0 and not slow.done()
        driver.set_latency("overlayd_attach", 0.0)
        env2 = {**env, "container_id": "quick"}
        quick = await _call(
            sock, {"op": "cni_exec", "command": "ADD", **env2, "stdin": _conf(sock)}
        )
        assert quick["exit_code"] == 0 and not slow.done(), quick
        assert (await slow)["exit_code"] == 0
        new_threads = {t.name for t in threading.enumerate()} - threads_before
        assert not [name for name in new_threads if name.startswith("overlayd-cni")]


async def test_a_late_answer_in_the_daemon_is_the_plugins_try_again_later(
    short_tmp_path: Path,
) -> None:
    driver = FakeDriver()
    async with serving(short_tmp_path, make_drivers=lambda: [driver], in_memory=True) as d:
        await setup_overlay(await d.client(), deployment="cni")
        sock = str(d.socket)
        driver.set_latency("overlayd_attach", 0.6)
        env = {"container_id": "late", "netns": "/proc/self/ns/net", "ifname": "eth0"}
        stdin = _conf(sock, timeout=0.2)
        answer = await _call(sock, {"op": "cni_exec", "command": "ADD", **env, "stdin": stdin})
        error = json.loads(answer["stdout"])
        assert answer["exit_code"] == 1 and error["code"] == 11, answer
        assert error["msg"] == "overlayd did not finish the attach"
        assert "within 0.2 s" in error["details"]


async def test_in_process_requests_run_in_the_invocations_own_task() -> None:
    """No task per request: the answer goes out before other work woken meanwhile."""
    tasks: list[asyncio.Task[Any] | None] = []
    handle = {"platform": "netns", "path": "/proc/self/ns/net"}
    attachment = {"handle": handle, "ip": "10.240.0.5", "prefix_len": 24, "ifname": "eth0"}

    async def dispatch(request: dict[str, Any]) -> dict[str, Any]:
        tasks.append(asyncio.current_task())
        return {"result": "attachment", "attachment": attachment}

    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/proc/self/ns/net",
        "CNI_IFNAME": "eth0",
    }
    code, out, _ = await inprocess.execute(env, _conf("/nowhere.sock").encode(), dispatch)
    assert code == 0, out
    assert tasks == [asyncio.current_task()]


async def test_cni_exec_refuses_check(sock: str) -> None:
    request = {"op": "cni_exec", "command": "CHECK", "stdin": _conf(sock)}
    with pytest.raises(RemoteError, match="does not run CHECK"):
        await _call(sock, request)


async def test_cni_exec_without_the_distribution(
    sock: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "overlayd_cni.inprocess", None)  # import fails
    with pytest.raises(RemoteError) as info:
        await _call(sock, {"op": "cni_exec", "command": "ADD", "stdin": "{}"})
    assert str(info.value) == CNI_NOT_INSTALLED
    assert CNI_NOT_INSTALLED == "not supported: the overlayd-cni distribution is not installed"


# -- the front end ------------------------------------------------------------


@pytest.fixture
def native(argv: list[str], kind: str) -> list[str]:
    assert kind == "native"
    return argv


@pytest.fixture(params=["native"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _same(native: list[str], command: str, conf_or_stdin: Any, **kwargs: Any) -> Any:
    """Run the front end and the Python plugin alike; both must print and exit the same.

    The Python plugin is the launcher beside the front end (this checkout's code).
    """
    stdin = (
        conf_or_stdin if isinstance(conf_or_stdin, bytes) else json.dumps(conf_or_stdin).encode()
    )
    fast = Plugin("-", argv=native).run(command, stdin=stdin, **kwargs)
    python = [str(Path(native[0]).with_name("launcher"))]
    slow = Plugin("-", argv=python).run(command, stdin=stdin, **kwargs)
    assert (fast.rc, fast.out) == (slow.rc, slow.out), (fast, slow)
    return fast


def test_without_a_daemon_del_succeeds_and_status_is_the_plugins_error(
    native: list[str], workdir: Path
) -> None:
    conf = {"cniVersion": "1.1.0", "name": "ovl", "socket": str(workdir / "none.sock")}
    out = _same(native, "DEL", conf, container="c1")
    assert out.rc == 0 and "releases the attachment when it starts" in out.err
    out = _same(native, "STATUS", conf, ifname="")
    assert out.rc == 1 and out.out["code"] == 50
    out = _same(native, "ADD", conf, container="c1", netns=str(workdir))
    assert out.rc == 1 and out.out["code"] == 11


@pytest.mark.parametrize(
    "case",
    [
        "not-json",
        "json-list",
        "empty",
        "escaped-key",
        "socket-number",
        "socket-empty",
        "not-utf8",
        "bom",
        "too-large",
        "deep",
        "nan-timeout",
    ],
)
def test_configurations_the_scan_cannot_read_get_the_plugins_answer(
    native: list[str], fake_daemon: Daemon, workdir: Path, case: str
) -> None:
    fake_daemon.setup_global()
    netns = workdir / "ns"
    netns.touch()
    conf: dict[str, Any] = {"cniVersion": "1.1.0", "name": "ovl", "socket": fake_daemon.socket}
    text = json.dumps(conf)
    stdin = {
        "not-json": b"{cniVersion: 1.0.0",
        "json-list": json.dumps([conf]).encode(),
        "empty": b"",
        # The key spells "socket" with an escape: the scan cannot tell, Python can.
        "escaped-key": text.replace('"socket"', '"\\u0073ocket"').encode(),
        "socket-number": json.dumps({**conf, "socket": 7}).encode(),
        "socket-empty": json.dumps({**conf, "socket": ""}).encode(),
        "not-utf8": text.replace('"ovl"', '"ov\xff"').encode("latin-1"),
        "bom": b"\xef\xbb\xbf" + text.encode(),
        "too-large": json.dumps({**conf, "x": "a" * (1 << 20)}).encode(),
        "deep": json.dumps({**conf, "x": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}).encode(),
        "nan-timeout": text.replace("{", '{"timeout": NaN, ', 1).encode(),
    }[case]
    out = _same(native, "ADD", stdin, container=f"c-{case}", netns=str(netns))
    if case in ("escaped-key", "bom", "too-large", "deep"):
        assert out.rc == 0, out  # valid for Python: attached, by whichever path
    else:
        assert out.rc == 1, out


def _refuse(request: dict[str, Any], send: Callable[[bytes], None]) -> None:
    """Answer ``err`` to everything (an overlayd without overlayd-cni)."""
    send(ScriptedSocket.frame(request, {"result": "err", "message": CNI_NOT_INSTALLED}))


@pytest.fixture
def err_daemon(workdir: Path) -> Iterator[ScriptedSocket]:
    daemon = ScriptedSocket(str(workdir / "err.sock"), _refuse)
    try:
        yield daemon
    finally:
        daemon.close()


def test_an_err_answer_runs_the_python_plugin(
    native: list[str], err_daemon: ScriptedSocket, workdir: Path
) -> None:
    conf = {"cniVersion": "1.0.0", "name": "ovl", "socket": err_daemon.path}
    version = Plugin("-", argv=native).run("VERSION", conf=conf)
    assert version.out == {"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]}
    assert err_daemon.ops == ["cni_exec"]  # asked, refused, answered by Python
    add = Plugin("-", argv=native).run("ADD", conf=conf, container="c1", netns=str(workdir))
    assert add.rc == 1 and add.out["code"] == 100, add
    assert CNI_NOT_INSTALLED in add.out["details"]
    assert err_daemon.ops == ["cni_exec", "cni_exec", "attach_interface"]


def test_check_and_the_command_line_go_to_the_python_plugin(
    native: list[str], fake_daemon: Daemon, workdir: Path
) -> None:
    conf = {"cniVersion": "1.1.0", "name": "ovl", "socket": fake_daemon.socket}
    out = _same(native, "CHECK", conf, container="c1", netns=str(workdir))
    assert out.rc == 1 and out.out["code"] == 7  # no prevResult
    import subprocess

    version = subprocess.run([*native, "--version"], capture_output=True, text=True, env={})
    assert version.returncode == 0 and version.stdout.startswith("overlayd-cni ")


def test_install_native_writes_the_front_end_and_its_fallback(tmp_path: Path) -> None:
    target = install(tmp_path, native=True)
    fallback = tmp_path / "overlayd-cni-py"
    assert target == tmp_path / "overlayd-cni" and target.stat().st_mode & 0o777 == 0o755
    assert fallback.read_text().startswith("#!") and str(fallback).encode() in target.read_bytes()
    assert not list(tmp_path.glob(".*"))  # no build leftovers


def test_install_native_without_a_compiler_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(InstallError, match="needs a C compiler"):
        install(tmp_path / "bin", native=True)
    from overlayd_cni.launcher import cli

    assert cli(["install", "--native", str(tmp_path / "bin")]) == 1
    assert "needs a C compiler" in capsys.readouterr().err
    assert cli(["install", "--native", "--cc", "no-such-cc", str(tmp_path / "bin")]) == 1
    assert "'no-such-cc' was not found" in capsys.readouterr().err


async def test_the_daemon_loads_the_plugin_ahead_of_the_first_cni_exec(
    short_tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "overlayd_cni.inprocess")
    async with serving(short_tmp_path, make_drivers=lambda: [FakeDriver()], in_memory=True):
        for _ in range(100):  # the server imports it about a second after it listens
            if "overlayd_cni.inprocess" in sys.modules:
                break
            await asyncio.sleep(0.05)
    assert "overlayd_cni.inprocess" in sys.modules
