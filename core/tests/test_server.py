"""The IPC server in-process: socket claiming, error paths, events, logging."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from overlayd import protocol as p
from overlayd.client import AsyncClient
from overlayd.client import RemoteError
from overlayd.config import DaemonConfig
from overlayd.config import DnsSettings
from overlayd.engine import Engine
from overlayd.errors import ConfigError
from overlayd.hookspecs import hookimpl
from overlayd.logging import configure_logging
from overlayd.model import Event
from overlayd.server import Server
from overlayd.server import SocketInUse
from overlayd.testing.inproc import serving
from overlayd.testing.inproc import setup_overlay
from overlayd.testing.nodes import lone_node
from overlayd.transport import framed
from overlayd.transport import read_frame
from overlayd_fake.driver import FakeDriver


@pytest.fixture
def root(short_tmp_path: Path) -> Path:
    return short_tmp_path


def _config(root: Path) -> DaemonConfig:
    return DaemonConfig(
        socket=root / "s.sock", drivers=[], in_memory=True, dns=DnsSettings(enabled=False)
    )


@contextlib.asynccontextmanager
async def _served(root: Path) -> AsyncIterator[tuple[Server, AsyncClient]]:
    async with serving(root, make_drivers=lambda: [FakeDriver()], in_memory=True) as daemon:
        assert daemon.server is not None
        yield daemon.server, await daemon.client()


@pytest.fixture
async def served(root: Path) -> AsyncIterator[tuple[Server, AsyncClient]]:
    async with _served(root) as both:
        yield both


def test_claim_refuses_a_second_server_on_the_lock(root: Path) -> None:
    config = _config(root)
    first = Server(Engine(config, drivers=[FakeDriver()]), config)
    first.claim()
    try:
        second = Server(Engine(config, drivers=[FakeDriver()]), config)
        with pytest.raises(SocketInUse, match="another overlayd"):
            second.claim()
    finally:
        first._release_lock()
    # Released: a new server may claim it.
    third = Server(Engine(config, drivers=[FakeDriver()]), config)
    third.claim()
    third._release_lock()


def test_claim_refuses_a_non_socket_and_replaces_a_stale_socket(root: Path) -> None:
    config = _config(root)
    config.socket.write_text("data")
    server = Server(Engine(config, drivers=[FakeDriver()]), config)
    with pytest.raises(ConfigError, match="is not a socket"):
        server.claim()
    config.socket.unlink()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(config.socket))
    stale.close()
    server.claim()
    assert not config.socket.exists()
    server._release_lock()


async def test_engine_bugs_become_err_and_the_server_survives(
    served: tuple[Server, AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client = served

    async def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(server.engine, "status", broken)
    with pytest.raises(RemoteError, match=r"internal error in status: RuntimeError: boom"):
        await client.status()
    hello = await client.hello()
    assert hello.server_version


async def test_an_answer_too_large_to_send_becomes_err(
    served: tuple[Server, AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client = served

    async def huge(request: p.AnyRequest) -> p.AnyResponse:
        return p.ErrResponse(message="x" * (p.MAX_FRAME + 10))

    monkeypatch.setattr(server, "dispatch", huge)
    with pytest.raises(RemoteError, match="more than the 8388608-byte limit"):
        await client.status()


async def test_events_are_pushed_to_connected_clients(
    served: tuple[Server, AsyncClient],
) -> None:
    server, client = served
    key = "mVNGA3KRlsSVAukmk0+nBYbMx8QEySJH8MLMGAGyk0w="
    events = client.events()
    first = asyncio.ensure_future(anext(events))
    await client.status()  # connected and registered
    await asyncio.sleep(0.05)
    server.engine.emit(Event(event="nat_endpoint_changed", pubkey=key, endpoint="10.9.0.2:4000"))
    got = await asyncio.wait_for(first, 5)
    assert got == p.NatEndpointChangedEvent(pubkey=key, endpoint="10.9.0.2:4000")
    await events.aclose()


async def test_requests_after_stop_began_get_err(served: tuple[Server, AsyncClient]) -> None:
    server, client = served
    await client.status()
    server.request_stop()
    with pytest.raises(RemoteError, match="shutting down"):
        await client.status()


async def test_shutdown_op_answers_then_stops(served: tuple[Server, AsyncClient]) -> None:
    server, client = served
    await client.shutdown()
    await asyncio.wait_for(server.serve_until_stopped(), 15)
    assert not server.path.exists()


def test_json_logs_redact_secrets() -> None:
    stream = io.StringIO()
    handler = configure_logging("json", "info", stream)
    try:
        log = logging.getLogger("overlayd.test")
        log.info("guest %s attached", "vm1", extra={"private_key": "c2VjcmV0", "ip": "10.0.0.2"})
        log.debug("hidden")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["msg"] == "guest vm1 attached"
    assert record["level"] == "info"
    assert record["logger"] == "overlayd.test"
    assert record["ip"] == "10.0.0.2"
    assert record["private_key"] == "<redacted>"
    assert "c2VjcmV0" not in lines[0]
    assert record["ts"].endswith("Z")


def test_text_logs_show_extras() -> None:
    stream = io.StringIO()
    handler = configure_logging("text", "debug", stream)
    try:
        logging.getLogger("overlayd.test").warning("refused", extra={"peer": "uid 5"})
    finally:
        logging.getLogger().removeHandler(handler)
    line = stream.getvalue().strip()
    assert "WARNING" in line
    assert line.endswith("overlayd.test: refused peer=uid 5")


async def _setup_node(client: AsyncClient) -> None:
    await client.setup_global_overlay(
        **lone_node("d", cluster_cidr="10.77.0.0/16", slice_cidr="10.77.1.0/24")
    )


async def test_status_is_encoded_once_while_unchanged_and_anew_after_a_change(
    served: tuple[Server, AsyncClient],
) -> None:
    server, client = served
    await _setup_node(client)
    first = await client.status()
    memo = server.status_memo
    assert memo is not None
    second = await client.status()
    assert server.status_memo is memo  # the same answer object: encoded once
    assert second == first
    await client.setup_service_overlay("web", "shared")
    third = await client.status()
    assert server.status_memo is not memo
    assert third.service_count == first.service_count + 1


async def test_status_peers_encode_as_the_validated_wire_model(
    served: tuple[Server, AsyncClient],
) -> None:
    """The handler builds the peers without re-validating them: the bytes are unchanged."""
    server, client = served
    await _setup_node(client)
    await client.apply_peers(
        [
            p.PeerChange(
                public_key="A" * 43 + "=",
                endpoint="192.0.2.1:51820",
                allowed_ips="10.77.2.0/24,fd00::/64",
            ),
            p.PeerChange(public_key="B" * 43 + "=", allowed_ips="10.77.3.5/32"),
        ]
    )
    await client.status()
    memo = server.status_memo
    assert memo is not None
    sent = memo[1]
    assert isinstance(sent, p.StatusResponse) and len(sent.peers) == 2
    validated = p.StatusResponse.model_validate(sent.model_dump())
    assert p.encode_response(sent) == p.encode_response(validated)
    assert {peer.allowed_ips for peer in validated.peers} == {
        "10.77.2.0/24,fd00::/64",
        "10.77.3.5/32",
    }


def test_the_daemon_serves_on_uvloop(short_tmp_path: Path) -> None:
    pytest.importorskip("uvloop")
    from overlayd.client import Client
    from overlayd.testing.daemon import setup_node
    from overlayd.testing.daemon import start_daemon

    daemon = start_daemon(short_tmp_path, args=["--event-loop", "uvloop"])
    try:
        with Client(str(daemon.socket), timeout=10) as c:
            key = setup_node(c, 1, deployment="uv", cluster_cidr="10.78.0.0/16")
            answer = c.attach_container({"platform": "netns", "path": "/run/netns/x"}, "web")
            status = c.status()
            assert status.public_key == key and status.service_count == 1
            assert c.status() == status
            c.detach_container({"platform": "netns", "path": "/run/netns/x"})
            assert answer.ip
    finally:
        assert daemon.stop() == 0, daemon.log_text()
    assert "event loop: uvloop" in daemon.log_text()


async def _raw_status(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ids: range
) -> list[bytes]:
    """Send ``status`` with each id in one write; the answer frames' bodies, in order."""
    writer.write(
        b"".join(
            framed(f'{{"frame":"request","id":{i},"request":{{"op":"status"}}}}'.encode())
            for i in ids
        )
    )
    await writer.drain()
    return [await read_frame(reader) or b"" for _ in ids]


async def test_a_polled_status_is_answered_in_the_fast_lane_byte_for_byte(
    served: tuple[Server, AsyncClient],
) -> None:
    await _check_the_fast_lane(*served)


async def _check_the_fast_lane(server: Server, client: AsyncClient) -> None:
    await setup_overlay(client)
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    try:
        (slow,) = await _raw_status(reader, writer, range(7, 8))  # builds the memo
        before = server.fast_answers
        (fast,) = await _raw_status(reader, writer, range(7, 8))
        assert server.fast_answers == before + 1
        assert fast == slow  # the same bytes as the ordinary path's answer
        # Pipelined in one write: every one answered, in order, from the lane.
        bodies = await _raw_status(reader, writer, range(1, 101))
        assert [json.loads(b)["id"] for b in bodies] == list(range(1, 101))
        # (A read that splits a frame sends the rest down the ordinary path.)
        assert server.fast_answers > before + 50
        lane = server.fast_answers
        # A change closes the lane until status is built again: never stale.
        await client.setup_service_overlay("web", "shared")
        (after,) = await _raw_status(reader, writer, range(8, 9))
        assert json.loads(after)["response"]["service_count"] == 1
        assert server.fast_answers == lane
        # The peers' read expires (every STATUS_PEERS_MAX_AGE): read again, an equal
        # status, and the lane takes over again from the next request on.
        assert server.engine._status_cache is not None
        server.engine._status_cache = None
        await _raw_status(reader, writer, range(9, 10))
        lane = server.fast_answers
        await _raw_status(reader, writer, range(10, 11))
        assert server.fast_answers == lane + 1
        # Anything else, and a frame that is not a request, takes the ordinary path.
        writer.write(framed(b'{"frame":"request","id":3,"request":{"op":"status","x":"status"}}'))
        writer.write(framed(b'{"frame":"event","id":4,"status":1}'))
        await writer.drain()
        extra = json.loads(await read_frame(reader) or b"")
        assert extra["id"] == 3 and extra["response"]["result"] == "status"
        refused = json.loads(await read_frame(reader) or b"")
        assert refused["response"]["result"] == "err"
    finally:
        writer.close()


def test_the_fast_lane_is_open_on_uvloop(root: Path) -> None:
    """uvloop's transports are not asyncio's classes; the lane answers on them all the same."""
    uvloop = pytest.importorskip("uvloop")

    async def check() -> None:
        async with _served(root) as both:
            await _check_the_fast_lane(*both)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(check())


class _WarmUpRecorder:
    """A driver with only ``overlayd_warm_up``: counts calls, optionally fails."""

    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.calls = 0

    @hookimpl
    def overlayd_warm_up(self) -> None:
        self.calls += 1
        if self.fail:
            raise RuntimeError(f"{self.name} cannot warm up")


async def test_the_warm_up_runs_a_second_after_serving_began(root: Path) -> None:
    recorder = _WarmUpRecorder("recorder")
    async with serving(
        root, make_drivers=lambda: [FakeDriver(), recorder], in_memory=True
    ) as daemon:
        server = daemon.server
        assert server is not None
        client = await daemon.client()
        await client.status()  # answered before any warm-up
        assert recorder.calls == 0
        assert server._warm is not None
        assert server._warm.when() - asyncio.get_running_loop().time() > 0.5
        await asyncio.sleep(1.1)
        assert server._warm_task is not None
        await server._warm_task
        assert recorder.calls == 1


async def test_a_failing_warm_up_is_logged_and_the_daemon_serves_on(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = _WarmUpRecorder("broken", fail=True)
    other = _WarmUpRecorder("other")
    async with serving(
        root, make_drivers=lambda: [FakeDriver(), broken, other], in_memory=True
    ) as daemon:
        server = daemon.server
        assert server is not None
        with caplog.at_level(logging.DEBUG, logger="overlayd.server"):
            await server.warm_up()
        assert (broken.calls, other.calls) == (1, 1)  # one failure does not stop the others
        assert "broken: RuntimeError: broken cannot warm up" in caplog.text
        assert (await (await daemon.client()).hello()).server_version


async def test_a_warm_up_that_raises_outside_the_drivers_does_not_escape(
    served: tuple[Server, AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, client = served

    def boom() -> list[str]:
        raise OSError("no more threads")

    monkeypatch.setattr(server.engine.hooks, "warm_up", boom)
    with caplog.at_level(logging.DEBUG, logger="overlayd.server"):
        await server.warm_up()
    assert "warming up for the first requests failed: no more threads" in caplog.text
    assert (await client.hello()).server_version


async def test_what_a_client_sent_before_it_was_accepted_is_read_at_once() -> None:
    """A request already waiting is in the reader when the connection is wrapped."""
    from overlayd.connections import Connection
    from overlayd.connections import Limits

    ours, theirs = socket.socketpair()
    try:
        frame = framed(p.encode_body(p.RequestFrame(id=7, request=p.StatusRequest())))
        theirs.sendall(frame)
        ours.setblocking(False)
        conn = await Connection.from_socket(ours, "test", Limits(), asyncio.Semaphore(1))
        protocol = conn.writer.transport.get_protocol()
        # No pass of the event loop was needed for the bytes to arrive.
        assert protocol.buffered() == len(frame)  # type: ignore[attr-defined]
        assert await read_frame(conn.reader) == frame[4:]
        theirs.close()
        assert await read_frame(conn.reader) is None  # the end of the stream, seen later
        await conn.close()
    finally:
        theirs.close()
        ours.close()


async def test_a_client_that_left_before_it_was_accepted_ends_cleanly() -> None:
    from overlayd.connections import Connection
    from overlayd.connections import Limits

    ours, theirs = socket.socketpair()
    theirs.close()
    ours.setblocking(False)
    conn = await Connection.from_socket(ours, "test", Limits(), asyncio.Semaphore(1))
    assert await read_frame(conn.reader) is None
    await conn.close()
