"""End to end: ``overlayd serve --driver fake`` as a subprocess, driven over its socket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlayd import protocol as p
from overlayd.client import Client
from overlayd.client import RemoteError
from overlayd.keys import generate_private_key
from overlayd.keys import public_key
from overlayd.testing.daemon import DaemonProcess
from overlayd.testing.daemon import frame_bytes
from overlayd.testing.daemon import raw_connect
from overlayd.testing.daemon import recv_frame
from overlayd.testing.daemon import request_as_nobody
from overlayd.testing.daemon import running_daemon
from overlayd.testing.daemon import serve_command
from overlayd.testing.nodes import lone_node

_HDR = struct.Struct("<I")


#: ``overlayd serve`` with the fake driver and no DNS, as these tests run it.
_SERVE = serve_command("--driver", "fake", "--no-dns")


def _serve_cmd(sock: Path, data: Path) -> list[str]:
    """The command line of a daemon run to completion (one that must refuse to start)."""
    return [*_SERVE, "--socket", str(sock), "--data-dir", str(data)]


def _running(
    root: Path, *extra: str, config: str | None = None, dns: bool = False
) -> contextlib.AbstractContextManager[DaemonProcess]:
    """``overlayd serve --driver fake`` on ``root/overlayd.sock`` for a ``with`` block,
    at whose end it must exit 0; ``config`` is TOML for ``--config`` (flags win
    over it); ``dns`` keeps the built-in DNS server on."""
    flags = ["--driver", "fake", *([] if dns else ["--no-dns"]), *extra]
    return running_daemon(
        root,
        config or '[drivers]\nenabled = ["fake"]\n',
        args=flags,
        socket_path=root / "overlayd.sock",
    )


@pytest.fixture
def daemon(root: Path) -> Iterator[DaemonProcess]:
    with _running(root) as d:
        yield d


def _key() -> str:
    return public_key(generate_private_key())


def _setup(c: Client) -> None:
    name = c.setup_global_overlay(**lone_node("e2e", slice_cidr="10.200.1.0/24", nat_enabled=True))
    assert name == "zl-e2e-n1-g"


# -- raw socket helpers -------------------------------------------------------


def _send(s: socket.socket, body: bytes) -> None:
    s.sendall(frame_bytes(body))


def _recv(s: socket.socket) -> dict[str, Any] | None:
    """The next frame, which must be a well-formed response or event frame."""
    frame = recv_frame(s)
    if frame is not None:
        decoded = p.decode_frame(json.dumps(frame).encode())
        assert isinstance(decoded, p.ResponseFrame | p.EventFrame)
    return frame


def _request(id_: int, request: dict[str, object]) -> bytes:
    return json.dumps({"frame": "request", "id": id_, "request": request}).encode()


# -- every op -----------------------------------------------------------------


def test_every_op_through_the_client(daemon: DaemonProcess) -> None:
    with Client(str(daemon.socket), timeout=10) as c:
        hello = c.hello("e2e")
        assert hello.protocol_version == 1
        assert [d.name for d in hello.drivers] == ["fake"]
        assert set(p.ALL_OPS) == set(hello.ops)

        c.set_local_node_id(7)
        node_key = _key()
        c.set_local_wg_pubkey(node_key)
        _setup(c)
        # Idempotent: the second setup answers the same device.
        _setup(c)

        shared = c.setup_service_overlay("web", "auto")
        assert shared.mode == "shared"
        assert shared.name == "zl-e2e-n1-web-b"
        ded = c.setup_service_overlay("db", "dedicated")
        assert ded.mode == "dedicated"
        assert ded.wg_public_key and ded.wg_port and ded.subnet

        ip = c.allocate_ip("web")
        assert ip.startswith("10.200.1.")
        assert any(lease.ip == ip for lease in c.list_leases("service:web"))
        c.release_ip(ip)
        assert not any(lease.ip == ip for lease in c.list_leases())

        attached = c.attach_container(p.LinuxPidHandle(pid=4242), "web", join_global=True)
        assert isinstance(attached, p.AttachedResponse)
        again = c.attach_container(p.LinuxPidHandle(pid=4242), "web", join_global=True)
        assert isinstance(again, p.AttachedResponse)
        assert again.ip == attached.ip  # idempotent per handle
        netns = c.attach_container(p.NetnsHandle(path="/run/netns/x1"), "web")
        assert isinstance(netns, p.AttachedResponse)
        guest = c.attach_container(
            p.GuestManagedHandle(id="vm-1"), "web", dns_server="10.200.1.1", dns_domain="e2e.local"
        )
        assert isinstance(guest, p.GuestConfigResponse)
        assert guest.dns_domain == "e2e.local"
        assert guest.peers and guest.peers[0].public_key == c.status().public_key

        atts = c.list_attachments()
        assert {a.handle.platform for a in atts} == {"linux_pid", "netns", "guest_managed"}
        assert [a.ip for a in c.list_attachments("web") if a.handle == p.LinuxPidHandle(pid=4242)]
        assert c.list_attachments("nosuch") == []

        peer = _key()
        c.add_peer(peer, "node2.example.internal:51820", "10.200.2.0/24,10.200.3.0/24", 25)
        c.add_allowed_ip(peer, "10.200.4.0/24")
        c.remove_allowed_ip(peer, "10.200.3.0/24")
        st = c.status()
        row = next(x for x in st.peers if x.public_key == peer)
        assert row.allowed_ips.split(",") == ["10.200.2.0/24", "10.200.4.0/24"]
        assert row.endpoint == "node2.example.internal:51820"
        assert st.interface == "zl-e2e-n1-g"
        assert st.node_ip == "10.200.1.1"
        assert st.service_count == 2
        assert [d.service for d in st.dedicated_services] == ["db"]

        dpeer = _key()
        c.add_peer(dpeer, "", "10.250.0.0/24", service="db")
        assert c.status().dedicated_services[0].peer_count == 1
        c.remove_peer(dpeer, service="db")

        other = _key()
        c.apply_peers(
            [
                p.PeerChange(
                    public_key=other, endpoint="10.9.0.2:51820", allowed_ips="10.200.9.0/24"
                ),
                p.PeerChange(public_key=peer, remove=True),
            ]
        )
        keys = {x.public_key for x in c.status().peers}
        assert other in keys and peer not in keys
        c.remove_peer(other)
        assert c.status().peer_count == len(guest.peers) - 1 + 1  # only the guest remains

        c.register_dns("api", "10.200.1.50")
        c.unregister_dns("api")
        c.nat_tick()

        report = c.gc([p.LinuxPidHandle(pid=4242), p.GuestManagedHandle(id="vm-1")], dry_run=True)
        assert report.released == [p.NetnsHandle(path="/run/netns/x1")]
        assert len(c.list_attachments()) == 3
        report = c.gc([p.LinuxPidHandle(pid=4242), p.GuestManagedHandle(id="vm-1")])
        assert report.released == [p.NetnsHandle(path="/run/netns/x1")]
        assert report.kept == 2

        summary = c.reconcile()
        assert summary.errors == []

        c.detach_container(p.LinuxPidHandle(pid=4242))
        c.detach_container(p.GuestManagedHandle(id="vm-1"))
        assert c.list_attachments() == []
        c.teardown_service_overlay("web")
        c.teardown_service_overlay("db")
        c.teardown_global_overlay()
        assert c.status().interface is None

        with pytest.raises(RemoteError, match=r"10\.77\.0\.1"):
            c.release_ip("10.77.0.1")
        with pytest.raises(RemoteError):
            c.allocate_ip("nosuch")

        c.shutdown()
    assert daemon.proc.wait(15) == 0
    assert not daemon.socket.exists()


def test_state_survives_a_restart(root: Path) -> None:
    fake_state = root / "fake-host.json"
    config = f'[drivers]\nenabled = ["fake"]\n[drivers.fake]\nstate_file = "{fake_state}"\n'
    with _running(root, config=config) as d, Client(str(d.socket), timeout=10) as c:
        _setup(c)
        c.setup_service_overlay("web", "shared")
        ip = c.attach_container(p.LinuxPidHandle(pid=99), "web", join_global=False)
        assert isinstance(ip, p.AttachedResponse)
        key = c.status().public_key
    with _running(root, config=config) as d, Client(str(d.socket), timeout=10) as c:
        assert c.status().public_key == key
        atts = c.list_attachments()
        assert [(a.handle, a.ip) for a in atts] == [(p.LinuxPidHandle(pid=99), ip.ip)]


# -- malformed input ------------------------------------------------------------


def test_bad_requests_get_err_and_the_connection_stays_open(daemon: DaemonProcess) -> None:
    with raw_connect(daemon.socket) as s:
        _send(s, _request(5, {"op": "frobnicate"}))
        answer = _recv(s)
        assert answer is not None
        assert answer["id"] == 5
        assert answer["response"] == {
            "result": "err",
            "message": "request 5: unknown op 'frobnicate'",
        }
        _send(s, _request(6, {"op": "remove_peer", "pubkey": _key(), "scope": "global"}))
        answer = _recv(s)
        assert answer is not None
        assert answer["id"] == 6
        assert "scope must be an object" in str(answer["response"])
        _send(s, _request(7, {"op": "setup_service_overlay", "service": "web"}))
        answer = _recv(s)
        assert answer is not None
        assert answer["id"] == 7
        assert "needs field 'mode'" in str(answer["response"])
        _send(s, b"{not json")
        answer = _recv(s)
        assert answer is not None
        assert answer["id"] == 0
        assert "not valid JSON" in str(answer["response"])
        _send(s, json.dumps({"frame": "response", "id": 9, "response": {"result": "ok"}}).encode())
        answer = _recv(s)
        assert answer is not None
        assert answer["id"] == 9
        assert "only send request frames" in str(answer["response"])
        _send(s, _request(8, {"op": "status"}))
        answer = _recv(s)
        assert answer is not None
        assert answer == {
            "frame": "response",
            "id": 8,
            "response": {"result": "status", "peer_count": 0, "service_count": 0},
        }


def test_framing_errors_close_only_that_connection(daemon: DaemonProcess) -> None:
    with raw_connect(daemon.socket) as s:
        s.sendall(_HDR.pack(p.MAX_FRAME + 1))
        assert _recv(s) is None  # closed without an answer
    with raw_connect(daemon.socket) as s:
        s.sendall(_HDR.pack(100) + b'{"frame":')
        s.shutdown(socket.SHUT_WR)
        assert _recv(s) is None
    with raw_connect(daemon.socket) as s:
        s.sendall(b"\x01\x00")  # half a header
        s.shutdown(socket.SHUT_WR)
        assert _recv(s) is None
    assert "closing connection" in daemon.log_text()
    with Client(str(daemon.socket), timeout=10) as c:
        assert c.status().peer_count == 0


# -- concurrency ------------------------------------------------------------------


def test_concurrent_clients(daemon: DaemonProcess) -> None:
    with Client(str(daemon.socket), timeout=10) as c:
        _setup(c)
        c.setup_service_overlay("web", "shared")
    ips: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            with Client(str(daemon.socket), timeout=20) as c:
                for i in range(6):
                    assert c.status().service_count == 1
                    att = c.attach_container(p.LinuxPidHandle(pid=1000 + n * 100 + i), "web")
                    assert isinstance(att, p.AttachedResponse)
                    with lock:
                        ips.append(att.ip)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(ips) == 48
    assert len(set(ips)) == 48  # no address handed out twice
    with Client(str(daemon.socket), timeout=10) as c:
        assert len(c.list_attachments("web")) == 48


def test_pipelined_requests_answered_by_id(daemon: DaemonProcess) -> None:
    with Client(str(daemon.socket), timeout=10) as c:
        _setup(c)
        c.setup_service_overlay("web", "shared")
    requests: list[bytes] = []
    for i in range(1, 61):
        if i % 3 == 0:
            req: dict[str, object] = {"op": "allocate_ip", "service": "web", "join_global": False}
        elif i % 3 == 1:
            req = {"op": "status"}
        else:
            req = {"op": "hello"}
        body = _request(i, req)
        requests.append(_HDR.pack(len(body)) + body)
    with raw_connect(daemon.socket) as s:
        s.sendall(b"".join(requests))  # all 60 in flight at once
        answers: dict[int, dict[str, object]] = {}
        for _ in range(60):
            frame = _recv(s)
            assert frame is not None
            fid, response = frame["id"], frame["response"]
            assert isinstance(fid, int)
            assert isinstance(response, dict)
            answers[fid] = response
    assert set(answers) == set(range(1, 61))
    for i, response in answers.items():
        expected = {0: "ip", 1: "status", 2: "hello"}[i % 3]
        assert response["result"] == expected
    ips = {r["ip"] for i, r in answers.items() if i % 3 == 0}
    assert len(ips) == 20


# -- events ----------------------------------------------------------------------------


def test_health_events_reach_every_listening_client(root: Path) -> None:
    config = "[engine]\nhealth_interval_secs = 0.2\npeer_stale_secs = 1\n"
    with _running(root, config=config) as d:
        received: dict[int, list[p.AnyEvent]] = {0: [], 1: []}
        ready = threading.Barrier(3)

        def listen(n: int) -> None:
            with Client(str(d.socket), timeout=10) as c:
                events = c.subscribe()  # subscribed before the barrier
                ready.wait(10)
                for event in events:
                    received[n].append(event)
                    break

        threads = [threading.Thread(target=listen, args=(n,), daemon=True) for n in (0, 1)]
        for t in threads:
            t.start()
        ready.wait(10)
        key = _key()
        with Client(str(d.socket), timeout=10) as c:
            _setup(c)
            # The fake reports no handshake ever; with a keepalive traffic is expected,
            # so the checker marks the peer unhealthy after the stale window.
            c.add_peer(key, "10.9.0.2:51820", "10.200.2.0/24", 25)
        for t in threads:
            t.join(15)
        for n in (0, 1):
            assert received[n] == [p.PeerHealthChangedEvent(pubkey=key, healthy=False)]


# -- security ----------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to uid 65534")
def test_unauthorised_uid_is_refused(daemon: DaemonProcess) -> None:
    # Make the socket reachable so only SO_PEERCRED refuses.
    os.chmod(daemon.socket.parent, 0o755)
    os.chmod(daemon.socket, 0o666)
    response, closed = request_as_nobody(daemon.socket, "status")
    assert closed is True
    assert response["result"] == "err"
    assert "permission denied" in response["message"]
    assert "uid 65534" in response["message"]
    assert "refused connection from" in daemon.log_text()
    # root is still served
    with Client(str(daemon.socket), timeout=10) as c:
        assert c.status().service_count == 0


def test_socket_mode_is_0660(daemon: DaemonProcess) -> None:
    mode = daemon.socket.stat().st_mode & 0o777
    assert mode == 0o660


# -- lifecycle ---------------------------------------------------------------------------


def test_sigterm_during_load_answers_every_request(root: Path) -> None:
    with _running(root) as d:
        with Client(str(d.socket), timeout=10) as c:
            _setup(c)
            c.setup_service_overlay("web", "shared")
        stop_at: list[float] = []
        results: list[tuple[int, int, float, bool]] = []  # client, id, sent at, answered
        lock = threading.Lock()
        go = threading.Event()

        def client(n: int) -> None:
            # Bursts of 4 pipelined requests (attach, status, list_leases, hello): at
            # the SIGTERM some are running, some are queued, some unread.
            s = raw_connect(d.socket)
            try:
                go.wait(10)
                i = 0
                while i < 20000:
                    burst = []
                    for op in ("attach_container", "status", "list_leases", "hello"):
                        i += 1
                        req: dict[str, object] = {"op": op}
                        if op == "attach_container":
                            req = {
                                "op": op,
                                "handle": {"platform": "linux_pid", "pid": n * 100000 + i},
                                "service": "web",
                                "join_global": False,
                            }
                        body = _request(i, req)
                        burst.append((i, _HDR.pack(len(body)) + body))
                    sent = time.monotonic()
                    answered: set[object] = set()
                    try:
                        s.sendall(b"".join(frame for _, frame in burst))
                        while len(answered) < len(burst):
                            frame = _recv(s)
                            if frame is None:
                                break
                            answered.add(frame["id"])
                    except OSError:
                        pass
                    with lock:
                        results.extend((n, rid, sent, rid in answered) for rid, _ in burst)
                    if len(answered) < len(burst):
                        return
            finally:
                s.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        go.set()
        time.sleep(1.0)
        stop_at.append(time.monotonic())
        d.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert d.proc.wait(20) == 0
        assert not d.socket.exists()
        before = [r for r in results if r[2] < stop_at[0]]
        assert len(before) > 50
        lost = [r for r in before if not r[3]]
        assert lost == [], f"requests sent before SIGTERM without an answer: {lost}"
        assert "overlayd stopped after" in d.log_text()


def test_second_daemon_refuses_a_live_socket(daemon: DaemonProcess, root: Path) -> None:
    out = subprocess.run(
        _serve_cmd(daemon.socket, root / "data2"), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 3
    assert f"another overlayd is serving on {daemon.socket}" in out.stderr
    # The first one is untouched.
    with Client(str(daemon.socket), timeout=10) as c:
        assert c.status().service_count == 0


def test_a_foreign_live_listener_is_not_stolen(root: Path) -> None:
    sock = root / "overlayd.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))
    listener.listen(1)
    try:
        out = subprocess.run(
            _serve_cmd(sock, root / "data"), capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 3
        assert "another daemon is serving" in out.stderr
        assert sock.exists()
    finally:
        listener.close()


def test_stale_socket_file_is_replaced(root: Path) -> None:
    sock = root / "overlayd.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()  # the file stays, nobody listens
    assert sock.exists()
    with _running(root) as d:
        with Client(str(d.socket), timeout=10) as c:
            assert c.status().peer_count == 0
        assert "removing stale socket" in d.log_text()
    assert not sock.exists()


def test_a_regular_file_on_the_socket_path_is_refused(root: Path) -> None:
    sock = root / "overlayd.sock"
    sock.write_text("precious")
    out = subprocess.run(
        _serve_cmd(sock, root / "data"), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "is not a socket" in out.stderr
    assert sock.read_text() == "precious"


def test_json_logs(root: Path) -> None:
    with _running(root, "--log-format", "json") as d, Client(str(d.socket), timeout=10) as c:
        c.status()
    lines = [json.loads(line) for line in d.log_text().splitlines() if line.strip()]
    assert any(x["msg"].startswith("serving on") and x["socket"] == str(d.socket) for x in lines)
    assert all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_registered_names_are_served_by_the_daemon_dns(root: Path) -> None:
    import dns.message
    import dns.query
    import dns.rcode

    port = _free_udp_port()
    config = (
        f'[dns]\nenabled = true\nlisten = ["127.0.0.1:{port}"]\n'
        "listen_on_gateways = false\nforward = false\n"
    )
    with _running(root, config=config, dns=True) as d, Client(str(d.socket), timeout=10) as c:
        _setup(c)  # zone: e2e.local.
        c.register_dns("api", "10.200.1.50")

        def ask() -> list[str]:
            query = dns.message.make_query("api.e2e.local.", "A")
            answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=5)
            return [r.address for rrset in answer.answer for r in rrset]

        assert ask() == ["10.200.1.50"]
        c.unregister_dns("api")
        assert ask() == []


def test_port_mapping_ops_reach_the_driver(daemon: DaemonProcess) -> None:
    """The map_port / unmap_port extension ops program the NAT driver."""
    with Client(str(daemon.socket)) as client:
        _setup(client)  # a port maps to an overlay address
        client.map_port("tcp", 18080, "10.200.4.2", 80)
        client.map_port("tcp", 18080, "10.200.4.2", 80)  # idempotent
        with pytest.raises(RemoteError, match="already mapped"):
            client.map_port("tcp", 18080, "10.200.4.3", 80)
        client.unmap_port("tcp", 18080, "10.200.4.2", 80)
        client.unmap_port("tcp", 18080, "10.200.4.2", 80)
        client.map_port("tcp", 18080, "10.200.4.3", 80)
