"""``overlayd demo`` end to end: the real two-node overlay as root, the fake one without.

The privileged tests run the real command in a subprocess (its own session, as
a terminal would run it), parse what it prints, and check that nothing of the
run is left on the host afterwards: namespaces, processes, wireguard-go's UAPI
sockets, the temporary directory. Whatever a failing run leaves behind is
removed by the demo's own ``--cleanup`` logic in the fixtures' ``finally``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.names import global_device_name

DEMO = [sys.executable, "-m", "overlayd", "demo"]
PINGS = 5
PREFIX_RE = re.compile(r"netns (ovd-demo-([0-9a-f]{4}))-a\b")


def _tag(output: str) -> str | None:
    match = PREFIX_RE.search(output)
    return match.group(2) if match else None


def _assert_nothing_left(output: str) -> None:
    """The run that printed ``output`` left nothing of its own on the host."""
    tag = _tag(output)
    assert tag is not None
    assert _leftovers(tag) == []


def _leftovers(tag: str) -> list[str]:
    """Everything of run ``tag`` still on the host, described."""
    prefix = f"ovd-demo-{tag}"
    found: list[str] = []
    run_netns = Path("/run/netns")
    if run_netns.is_dir():
        found += [f"netns {p.name}" for p in run_netns.iterdir() if p.name.startswith(prefix)]
    wg_dir = Path("/var/run/wireguard")
    for node in ("a", "b"):
        sock = wg_dir / f"{global_device_name(f'demo{tag}', node)}.sock"
        if sock.exists():
            found.append(f"socket {sock}")
    found += [f"dir {p}" for p in Path(tempfile.gettempdir()).glob(f"{prefix}*")]
    marks = (prefix.encode(), f"zl-demo{tag}".encode())
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if any(mark in cmdline for mark in marks):
            argv = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
            found.append(f"process {entry}: {argv}")
    return found


def _force_cleanup(output: str) -> None:
    tag = _tag(output)
    if tag is None:
        return
    from overlayd_demo.cleanup import cleanup

    cleanup(f"ovd-demo-{tag}", quiet=True)


@pytest.fixture
def demo_output() -> Iterator[list[str]]:
    """Collects a demo run's output; removes whatever the run left, even on failure."""
    chunks: list[str] = []
    try:
        yield chunks
    finally:
        _force_cleanup("".join(chunks))


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DEMO, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )


# ---------------------------------------------------------------------------
# privileged: the real thing
# ---------------------------------------------------------------------------


@pytest.mark.privileged
@pytest.mark.slow
def test_demo_resolves_and_pings_across_wireguard(demo_output: list[str]) -> None:
    started = time.monotonic()
    result = _run([])
    demo_output.append(result.stdout)
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert "running on the FAKE driver" not in out

    # the containers of node b (service api), as attached
    b_ips = re.findall(r"node b: container \S+ \(pid \d+\) service api -> (\S+)", out)
    assert len(b_ips) == 2
    # node a's container resolved api.demo.local to exactly those addresses
    resolved = re.search(r"^    api\.demo\.local -> (.+)$", out, re.M)
    assert resolved is not None, out
    assert sorted(resolved.group(1).split(", ")) == sorted(b_ips)
    # and pinged one of them across the overlay: at most one echo lost
    target = resolved.group(1).split(", ")[0]
    replies = re.findall(rf"icmp_seq=\d+ reply from {re.escape(target)}: time=[\d.]+ ms", out)
    assert len(replies) >= PINGS - 1, out
    summary = re.search(r"ping: (\d+)/(\d+) received \((\d+)% loss\)", out)
    assert summary is not None, out
    received, sent, loss = (int(x) for x in summary.groups())
    assert sent == PINGS and received == len(replies) and loss <= 20
    # the summary shows both nodes with their keys and a recent handshake with the peer
    assert len(re.findall(r"^      public key \S{43}=$", out, re.M)) == 2
    handshakes = re.findall(r"last handshake (\d+)s ago, received (\d+) B", out)
    assert len(handshakes) == 2
    assert all(int(age) < 60 and int(rx) > 0 for age, rx in handshakes)
    assert "done" in out.splitlines()[-1]
    assert time.monotonic() - started < 60
    # the steps say how far the demo is: 1/9 to 9/9, in order, with a growing time
    steps = re.findall(r"^==> \[(\d+)/(\d+), ([\d.]+)s\] ", out, re.M)
    assert [(int(i), int(n)) for i, n, _ in steps] == [(i, 9) for i in range(1, 10)], out
    times = [float(t) for _, _, t in steps]
    assert times == sorted(times)
    assert re.search(r"^==> \[9/9, [\d.]+s\] summary$", out, re.M)

    _assert_nothing_left(out)


@pytest.mark.privileged
@pytest.mark.slow
def test_demo_torn_down_on_ctrl_c(demo_output: list[str]) -> None:
    proc = subprocess.Popen(
        DEMO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            demo_output.append(line)
            if "two containers each" in line:
                # Ctrl-C in a terminal signals the whole foreground process group
                os.killpg(proc.pid, signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=60)
        demo_output.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(demo_output)
    assert proc.returncode == 130, out
    assert "==> interrupted" in out
    assert "==> tearing everything down" in out
    assert "] summary" not in out
    assert out.rstrip().endswith("done")
    _assert_nothing_left(out)


@pytest.mark.privileged
@pytest.mark.slow
def test_demo_keep_then_cleanup(demo_output: list[str]) -> None:
    result = _run(["--keep"])
    demo_output.append(result.stdout)
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    tag = _tag(out)
    assert tag is not None
    assert f"overlayd demo --cleanup ovd-demo-{tag}" in out
    sockets = re.findall(r"overlayctl --socket (\S+) status", out)
    assert len(sockets) == 2

    # still running: overlayctl talks to node a's daemon, which has node b as its peer
    status = subprocess.run(
        ["overlayctl", "--socket", sockets[0], "--json", "status"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert status.returncode == 0, status.stderr
    assert f'"interface": "{global_device_name(f"demo{tag}", "a")}"' in status.stdout
    assert '"peer_count": 1' in status.stdout

    # the topology of the demo's two nodes: both nodes, and their one link with
    # a recent handshake and traffic seen from each end
    topology = subprocess.run(
        ["overlayctl", "--socket", sockets[0], "topology", "--node", sockets[1]],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert topology.returncode == 0, topology.stderr
    dot = topology.stdout
    devices = [global_device_name(f"demo{tag}", node) for node in ("a", "b")]
    nodes = re.findall(r'^  (n\d) \[label="([^"]*)"', dot, re.M)
    assert [label.split("\\n")[0] for _, label in nodes] == devices, dot
    edges = re.findall(r"^  n0 -- n1 \[label=\"handshake (\d+)s ago(.*)\"\];$", dot, re.M)
    assert len(edges) == 1 and int(edges[0][0]) < 60, dot
    for device in devices:
        sent = re.search(rf"{device}: sent ([\d.]+) (?:K?i?B), received ([\d.]+) ", edges[0][1])
        assert sent is not None and float(sent.group(1)) > 0 and float(sent.group(2)) > 0, dot
    assert _leftovers(tag) != []

    cleaned = _run(["--cleanup", f"ovd-demo-{tag}"])
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert f"removed netns ovd-demo-{tag}-a" in cleaned.stdout
    assert _leftovers(tag) == []


# ---------------------------------------------------------------------------
# unprivileged
# ---------------------------------------------------------------------------


def test_demo_fake_runs_and_says_so() -> None:
    result = _run(["--fake"], timeout=60)
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert "running on the FAKE driver" in out
    b_ips = re.findall(r"node b: container \d \(api\) -> (\S+)", out)
    assert len(b_ips) == 2
    resolved = re.search(r"^    api\.demo\.local -> (.+)$", out, re.M)
    assert resolved is not None, out
    assert sorted(resolved.group(1).split(", ")) == sorted(b_ips)


def test_demo_names_missing_prerequisites(tmp_path: Path) -> None:
    # an empty PATH: neither wireguard-go nor sleep can be found
    env = {**os.environ, "PATH": str(tmp_path)}
    result = subprocess.run(
        [*DEMO], capture_output=True, text=True, timeout=60, env=env, start_new_session=True
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert "the real demo needs what this host lacks:" in out
    assert "- wireguard-go (apt-get install wireguard-go)" in out
    assert "running on the FAKE driver" in out


def test_demo_cleanup_refuses_foreign_names() -> None:
    result = _run(["--cleanup", "eth0"], timeout=30)
    if os.geteuid() != 0:
        assert result.returncode == 1
        assert "root privileges" in result.stdout
    else:
        assert result.returncode == 2
        assert "refusing to clean up 'eth0'" in result.stdout


def test_demo_without_the_demo_distribution_says_how_to_get_it() -> None:
    code = (
        "import sys; sys.modules['overlayd_demo'] = None\n"
        "from overlayd.cli import overlayd_main\n"
        "sys.exit(overlayd_main(['demo', '--fake']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the demo is not installed (pip install overlayd-demo" in result.stderr


def test_the_demo_signal_handler_only_sets_a_flag() -> None:
    """Ctrl-C must not raise inside whatever the main thread is doing.

    The blocking client waits on a ``threading.Condition``; a ``KeyboardInterrupt``
    raised there by the handler broke the lock ("cannot release un-acquired
    lock") and the demo exited 1 with a traceback instead of tearing down.
    The handler sets a flag, and the demo raises at its next check.
    """
    from overlayd_demo.common import check_interrupted
    from overlayd_demo.common import clear_interrupted
    from overlayd_demo.common import interrupt

    clear_interrupted()
    check_interrupted()  # nothing pending: returns
    interrupt(signal.SIGINT, None)  # must not raise
    with pytest.raises(KeyboardInterrupt):
        check_interrupted()
    clear_interrupted()
    check_interrupted()


def test_demo_steps_are_numbered_with_the_time_since_the_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from overlayd_demo.common import plan
    from overlayd_demo.common import step

    try:
        plan(2)
        step("first")
        step("second")
    finally:
        plan(0)  # unnumbered again for whatever runs next in this process
    step("after")
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"==> \[1/2, \d+\.\ds\] first", lines[0]), lines
    assert re.fullmatch(r"==> \[2/2, \d+\.\ds\] second", lines[1]), lines
    assert lines[2] == "==> after"
