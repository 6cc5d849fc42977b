"""AsyncClient and Client against a small in-test server that speaks the framing."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd import protocol as p
from overlayd.client import AsyncClient
from overlayd.client import Client
from overlayd.client import ClientClosed
from overlayd.client import ConnectError
from overlayd.client import ConnectionLost
from overlayd.client import RemoteError
from overlayd.client import RequestTimeout
from overlayd.transport import read_frame
from overlayd.transport import write_frame

if sys.platform == "win32":  # the in-test servers use Unix domain sockets
    pytest.skip("needs Unix domain sockets", allow_module_level=True)

# mypy --platform win32 sees the rest of this module as unreachable.
K1 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # type: ignore[unreachable,unused-ignore]

#: A handler returns the response, or ``None`` to leave the request unanswered.
Handler = Callable[[p.AnyRequest], Awaitable[p.AnyResponse | None]]


async def default_handler(request: p.AnyRequest) -> p.AnyResponse | None:
    if isinstance(request, p.HelloRequest):
        return p.HelloResponse(
            protocol_version=1, server_version="t", drivers=[], ops=[], events=request.events
        )
    if isinstance(request, p.StatusRequest):
        return p.StatusResponse(interface="zl-g", peer_count=2, service_count=1)
    if isinstance(request, p.AllocateIpRequest):
        return p.IpResponse(ip="10.200.0.5")
    if isinstance(request, p.RegisterDnsRequest):
        return p.ErrResponse(message=f"name {request.name!r} is already registered")
    if isinstance(request, p.GcRequest):
        return p.GcReportResponse(released=[], kept=len(request.live))
    return p.OkResponse()


class FakeServer:
    """Records requests, answers via ``handler``, pushes events, drops clients."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.handler: Handler = default_handler
        self.requests: list[p.AnyRequest] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.connections = 0
        self.raw_reply: bytes | None = None
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self.writers:
                writer.close()
            await self._server.wait_closed()

    async def push(self, event: p.AnyEvent) -> None:
        body = p.encode_body(p.EventFrame(event=event))
        for writer in self.writers:
            await write_frame(writer, body)

    def drop_clients(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        tasks: set[asyncio.Task[None]] = set()
        with contextlib.suppress(ConnectionError):
            while (body := await read_frame(reader)) is not None:
                frame = p.decode_frame(body)
                assert isinstance(frame, p.RequestFrame)
                self.requests.append(frame.request)
                task = asyncio.create_task(self._answer(writer, frame))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        for task in list(tasks):
            task.cancel()

    async def _answer(self, writer: asyncio.StreamWriter, frame: p.RequestFrame) -> None:
        if self.raw_reply is not None:
            await write_frame(writer, self.raw_reply)
            return
        response = await self.handler(frame.request)
        if response is not None and not writer.is_closing():
            body = p.encode_body(p.ResponseFrame(id=frame.id, response=response))
            with contextlib.suppress(ConnectionError):
                await write_frame(writer, body)


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "overlayd.sock")


@pytest.fixture
async def server(sock_path: str) -> AsyncIterator[FakeServer]:
    srv = FakeServer(sock_path)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def client(server: FakeServer) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(server.path, timeout=2, connect_attempts=3, backoff=0.01)
    try:
        yield c
    finally:
        await c.close()


async def test_client_status_returns_typed_snapshot(
    client: AsyncClient, server: FakeServer
) -> None:
    status = await client.status()
    assert status == p.StatusResponse(interface="zl-g", peer_count=2, service_count=1)
    assert server.requests == [p.StatusRequest()]


async def test_client_err_is_raised_as_remote_error(client: AsyncClient) -> None:
    with pytest.raises(RemoteError, match="name 'web' is already registered") as info:
        await client.register_dns("web", "10.200.0.9")
    assert info.value.op == "register_dns"
    assert info.value.message == "name 'web' is already registered"


async def test_client_typed_methods_send_the_contract_shapes(
    client: AsyncClient, server: FakeServer
) -> None:
    await client.add_peer(K1, "node2:51820", ["10.200.0.5/32", "10.200.1.0/28"], 25)
    await client.remove_peer(K1, service="db")
    await client.add_allowed_ip(K1, "10.200.2.0/28")
    assert await client.allocate_ip("web", join_global=True) == "10.200.0.5"
    report = await client.gc([p.LinuxPidHandle(pid=7)], dry_run=False)
    assert report == p.GcReportResponse(released=[], kept=1)
    assert server.requests[0] == p.AddPeerRequest(
        public_key=K1,
        endpoint="node2:51820",
        allowed_ips="10.200.0.5/32,10.200.1.0/28",
        persistent_keepalive_secs=25,
        scope=p.GlobalScope(),
    )
    assert server.requests[1] == p.RemovePeerRequest(pubkey=K1, scope=p.ServiceScope(service="db"))
    assert server.requests[2] == p.AddAllowedIpRequest(pubkey=K1, cidr="10.200.2.0/28")
    assert server.requests[3] == p.AllocateIpRequest(service="web", join_global=True)
    assert server.requests[4] == p.GcRequest(live=[p.LinuxPidHandle(pid=7)])


async def test_client_concurrent_calls_are_multiplexed_by_id(
    client: AsyncClient, server: FakeServer
) -> None:
    async def slow_reverse(request: p.AnyRequest) -> p.AnyResponse | None:
        assert isinstance(request, p.AllocateIpRequest)
        n = int(request.service.removeprefix("svc"))
        await asyncio.sleep(0.01 * (8 - n))  # answer in reverse order
        return p.IpResponse(ip=f"10.200.0.{n + 10}")

    server.handler = slow_reverse
    ips = await asyncio.gather(*(client.allocate_ip(f"svc{n}") for n in range(8)))
    assert ips == [f"10.200.0.{n + 10}" for n in range(8)]
    assert server.connections == 1


async def test_client_timeout_then_next_call_works(client: AsyncClient, server: FakeServer) -> None:
    async def never_for_nat(request: p.AnyRequest) -> p.AnyResponse | None:
        if isinstance(request, p.NatTickRequest):
            return None
        return await default_handler(request)

    server.handler = never_for_nat
    with pytest.raises(RequestTimeout, match="did not answer nat_tick"):
        await client.call(p.NatTickRequest(), timeout=0.05)
    assert (await client.status()).peer_count == 2


async def test_client_broken_connection_fails_call_and_reconnects(
    client: AsyncClient, server: FakeServer
) -> None:
    async def drop_on_shutdown(request: p.AnyRequest) -> p.AnyResponse | None:
        if isinstance(request, p.ShutdownRequest):
            server.drop_clients()
            return None
        return await default_handler(request)

    server.handler = drop_on_shutdown
    await client.status()
    with pytest.raises(ConnectionLost):
        await client.shutdown()
    assert (await client.status()).service_count == 1
    assert server.connections == 2


async def test_client_retries_until_the_daemon_listens(sock_path: str) -> None:
    srv = FakeServer(sock_path)
    c = AsyncClient(sock_path, timeout=2, connect_attempts=8, backoff=0.02)

    async def start_late() -> None:
        await asyncio.sleep(0.1)
        await srv.start()

    starter = asyncio.create_task(start_late())
    try:
        assert (await c.status()).interface == "zl-g"
    finally:
        await starter
        await c.close()
        await srv.stop()


async def test_client_gives_up_after_bounded_attempts(tmp_path: Path) -> None:
    c = AsyncClient(str(tmp_path / "absent.sock"), connect_attempts=3, backoff=0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectError, match=r"after 3 attempts.*is the daemon running"):
        await c.status()
    # two sleeps of 0.01 and 0.02 seconds between three attempts
    assert loop.time() - started >= 0.03
    await c.close()


async def test_client_events_are_delivered(client: AsyncClient, server: FakeServer) -> None:
    received: list[p.AnyEvent] = []
    sent: list[p.AnyEvent] = [
        p.PeerHealthChangedEvent(pubkey=K1, healthy=False),
        p.NatEndpointChangedEvent(pubkey=K1, endpoint="10.1.2.3:40000"),
    ]

    async def consume() -> None:
        async for event in client.events():
            received.append(event)
            if len(received) == len(sent):
                return

    consumer = asyncio.create_task(consume())
    while not any(isinstance(r, p.HelloRequest) for r in server.requests):
        await asyncio.sleep(0.01)
    await client.status()  # the subscription was answered before this
    for event in sent:
        await server.push(event)
    await asyncio.wait_for(consumer, 2)
    assert received == sent
    assert server.requests[0] == p.HelloRequest(
        client=server.requests[0].client,  # type: ignore[union-attr]
        protocol_version=1,
        events=sorted(p.EVENT_KINDS),
    )


async def test_client_subscribe_is_in_place_when_it_returns_and_filters_kinds(
    client: AsyncClient, server: FakeServer
) -> None:
    stream = await client.subscribe(["nat_endpoint_changed"])
    assert isinstance(server.requests[-1], p.HelloRequest)
    assert server.requests[-1].events == ["nat_endpoint_changed"]
    await server.push(p.PeerHealthChangedEvent(pubkey=K1, healthy=False))
    moved = p.NatEndpointChangedEvent(pubkey=K1, endpoint="10.1.2.3:40000")
    await server.push(moved)
    assert await asyncio.wait_for(anext(stream), 2) == moved
    await stream.aclose()
    # The last stream gone: the connection unsubscribes.
    assert isinstance(server.requests[-1], p.HelloRequest)
    assert server.requests[-1].events == []
    with pytest.raises(ValueError, match="unknown event kind"):
        await client.subscribe(["solar_flare"])


async def test_client_resubscribes_after_reconnecting(
    client: AsyncClient, server: FakeServer
) -> None:
    stream = await client.subscribe()
    server.drop_clients()
    waiting = asyncio.ensure_future(anext(stream))
    while server.connections < 2 or len(server.requests) < 2:
        await asyncio.sleep(0.01)
    hellos = [r for r in server.requests if isinstance(r, p.HelloRequest)]
    assert len(hellos) == 2
    event = p.PeerHealthChangedEvent(pubkey=K1, healthy=True)
    await server.push(event)
    assert await asyncio.wait_for(waiting, 2) == event
    await stream.aclose()


async def test_client_events_end_when_client_closes(
    client: AsyncClient, server: FakeServer
) -> None:
    async def consume() -> list[p.AnyEvent]:
        return [event async for event in client.events()]

    consumer = asyncio.create_task(consume())
    await client.connect()
    await asyncio.sleep(0.01)
    await client.close()
    assert await asyncio.wait_for(consumer, 2) == []
    with pytest.raises(ClientClosed):
        await client.status()


async def test_client_undecodable_response_fails_only_that_call(
    client: AsyncClient, server: FakeServer
) -> None:
    await client.connect()
    server.raw_reply = b'{"frame":"response","id":1,"response":{"result":"ip"}}'
    with pytest.raises(p.ProtocolError, match="response 1: ip needs field 'ip'"):
        await client.allocate_ip("web")
    server.raw_reply = None
    assert (await client.status()).peer_count == 2


async def test_client_normalises_bridge_name_for_service_overlay(
    client: AsyncClient, server: FakeServer
) -> None:
    async def zlayer_style(request: p.AnyRequest) -> p.AnyResponse | None:
        return p.BridgeNameResponse(name="zl-web-b")

    server.handler = zlayer_style
    overlay = await client.setup_service_overlay("web")
    assert overlay == p.ServiceOverlayResponse(name="zl-web-b", mode="shared")


async def test_client_attach_returns_guest_config(client: AsyncClient, server: FakeServer) -> None:
    config = p.GuestConfigResponse(
        overlay_ip="10.200.0.9",
        prefix_len=16,
        private_key=K1,
        public_key=K1,
        listen_port=51820,
        peers=[],
    )

    async def guest(request: p.AnyRequest) -> p.AnyResponse | None:
        return config

    server.handler = guest
    result = await client.attach_container(p.GuestManagedHandle(id="vm-1"), "web")
    assert result == config
    assert K1 not in repr(result).split("private_key=")[1].split(",")[0]


# ---------------------------------------------------------------------------
# the sync facade
# ---------------------------------------------------------------------------


@pytest.fixture
def threaded_server(
    sock_path: str,
) -> Iterator[tuple[FakeServer, asyncio.AbstractEventLoop]]:
    """A FakeServer on its own loop thread, for the blocking Client."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    srv = FakeServer(sock_path)
    asyncio.run_coroutine_threadsafe(srv.start(), loop).result(5)
    try:
        yield srv, loop
    finally:
        asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_client_sync_facade_calls_and_errors(
    threaded_server: tuple[FakeServer, asyncio.AbstractEventLoop],
) -> None:
    srv, _ = threaded_server
    with Client(srv.path, timeout=2, connect_attempts=2, backoff=0.01) as c:
        assert c.status().peer_count == 2
        assert c.allocate_ip("web") == "10.200.0.5"
        with pytest.raises(RemoteError, match="already registered"):
            c.register_dns("web", "10.200.0.9")
        c.set_local_node_id(7)
        assert isinstance(c.call(p.StatusRequest()), p.StatusResponse)
    assert srv.requests[3] == p.SetLocalNodeIdRequest(node_id=7)
    with pytest.raises(ClientClosed):
        c.status()


def test_client_sync_events(
    threaded_server: tuple[FakeServer, asyncio.AbstractEventLoop],
) -> None:
    srv, loop = threaded_server
    event = p.PeerHealthChangedEvent(pubkey=K1, healthy=True)
    with Client(srv.path, timeout=2) as c:
        c.status()
        events = c.subscribe()

        def push_soon() -> None:
            asyncio.run_coroutine_threadsafe(srv.push(event), loop).result(5)

        timer = threading.Timer(0.1, push_soon)
        timer.start()
        try:
            assert next(events) == event
        finally:
            timer.join()
            events.close()


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {"bogus": 1}), (("/s.sock",), {"connect_attempts": 0})],
    ids=["unknown-argument", "bad-value"],
)
def test_a_client_refused_at_construction_leaves_no_thread(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    before = {t for t in threading.enumerate() if t.name == "overlayd-client"}
    with pytest.raises((TypeError, ValueError)):
        Client(*args, **kwargs)  # type: ignore[arg-type]
    after = {t for t in threading.enumerate() if t.name == "overlayd-client"}
    assert after == before
