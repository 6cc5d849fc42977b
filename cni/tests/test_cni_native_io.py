"""The compiled front end against a daemon that answers in pieces or hangs up mid-frame.

``io_all`` in the front end (cni/src/overlayd_cni/native/overlayd-cni.c) must
assemble an answer that arrives a byte at a time, and hand the invocation to
the Python plugin when the daemon closes the connection inside a frame. The
"daemon" here is a :class:`~overlayd_cni.testing.ScriptedSocket` that answers
``cni_exec`` as told.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlayd_cni.testing import Plugin
from overlayd_cni.testing import ScriptedSocket

VERSION_OUT = {"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]}


@pytest.fixture(params=["native"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _shaped(mode: str, stdout: str, code: int) -> Callable[..., bool]:
    """Answer each ``cni_exec`` with a ``cni_result``, sent as ``mode`` says.

    ``drip``: the whole frame, one byte per send; ``cut-header``: two bytes of
    the length, then close; ``cut-body``: the length and half the body, then close.
    """
    answer = {"result": "cni_result", "exit_code": code, "stdout": stdout, "stderr": ""}

    def reply(request: dict[str, Any], send: Callable[[bytes], None]) -> bool:
        data = ScriptedSocket.frame(request, answer)
        if mode == "drip":
            for i in range(len(data)):
                send(data[i : i + 1])
                if i % 16 == 0:
                    time.sleep(0.001)  # separate reads, not one coalesced buffer
        elif mode == "cut-header":
            send(data[:2])
        else:
            send(data[: 4 + (len(data) - 4) // 2])
        return False

    return reply


@pytest.fixture
def shaped(workdir: Path, request: pytest.FixtureRequest) -> Iterator[ScriptedSocket]:
    daemon = ScriptedSocket(str(workdir / "shaped.sock"), _shaped(*request.param))
    try:
        yield daemon
    finally:
        daemon.close()


@pytest.mark.parametrize(
    "shaped",
    [("drip", json.dumps({"cniVersion": "1.1.0", "marker": "from the daemon"}) + "\n", 0)],
    indirect=True,
)
def test_an_answer_a_byte_at_a_time_is_printed_whole(
    argv: list[str], shaped: ScriptedSocket
) -> None:
    conf = {"cniVersion": "1.1.0", "name": "ovl", "socket": shaped.path}
    out = Plugin("-", argv=argv).run("VERSION", conf=conf)
    # The daemon's answer, not the Python plugin's: no fallback was taken.
    assert (out.rc, out.out) == (0, {"cniVersion": "1.1.0", "marker": "from the daemon"}), out
    assert shaped.ops == ["cni_exec"]


@pytest.mark.parametrize(
    "shaped",
    [("drip", json.dumps({"code": 11, "msg": "try again"}) + "\n", 7)],
    indirect=True,
)
def test_the_exit_code_of_a_dripped_answer_is_kept(argv: list[str], shaped: ScriptedSocket) -> None:
    conf = {"cniVersion": "1.1.0", "name": "ovl", "socket": shaped.path}
    out = Plugin("-", argv=argv).run("VERSION", conf=conf)
    assert (out.rc, out.out) == (7, {"code": 11, "msg": "try again"}), out


@pytest.mark.parametrize(
    "shaped",
    [("cut-header", "unused", 0), ("cut-body", '{"never": "printed"}', 0)],
    indirect=True,
    ids=["cut-header", "cut-body"],
)
def test_a_daemon_that_hangs_up_mid_frame_leaves_it_to_the_python_plugin(
    argv: list[str], shaped: ScriptedSocket
) -> None:
    conf = {"cniVersion": "1.0.0", "name": "ovl", "socket": shaped.path}
    out = Plugin("-", argv=argv).run("VERSION", conf=conf)
    # VERSION needs no daemon: the Python plugin answers it, from the same stdin.
    assert (out.rc, out.out) == (0, VERSION_OUT), out
    assert shaped.ops == ["cni_exec"]
