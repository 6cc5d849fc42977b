"""Forwarding names outside the zone to the upstream resolvers.

:class:`Forwarding` is the half of :class:`~overlayd.dns.DnsServer` that
relays a :class:`ForwardJob` to the configured upstreams in order (UDP,
then TCP when the answer is truncated), checks that each reply answers the
question asked, and shapes what the client gets back (its own ID, ``RA``,
``SERVFAIL`` when no upstream answered). Each job runs as a task of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
from typing import Final

from overlayd.dns import _wire
from overlayd.dns._config import DnsConfig
from overlayd.dns._config import HostPort

if TYPE_CHECKING:
    from overlayd.dns._answer import DnsStats

__all__ = ["ForwardJob", "Forwarding", "UpstreamFailed"]

logger = logging.getLogger(__name__)

_LEN: Final = struct.Struct("!H")


@dataclass(frozen=True)
class ForwardJob:
    """A query to relay upstream; the reply is sent by a task."""

    query: bytes
    #: Lower-case question section (name, type, class) in wire form.
    question: bytes
    #: The same with the client's spelling, for replies we make ourselves.
    question_orig: bytes
    #: Largest reply the client accepts (UDP), 65535 on TCP.
    limit: int


class UpstreamFailed(Exception):
    """An upstream gave no usable answer (internal to the forwarder)."""


class Forwarding:
    """Forwarding of the DNS server (a mixin: the server holds the state)."""

    config: DnsConfig
    stats: DnsStats
    _live: list[HostPort]
    _tasks: set[asyncio.Task[None]]
    _forwarding: int

    def _spawn_forward(self, job: ForwardJob, send: Callable[[bytes], None]) -> None:
        task = asyncio.get_running_loop().create_task(self._forward_and_send(job, send))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward_and_send(self, job: ForwardJob, send: Callable[[bytes], None]) -> None:
        started = time.perf_counter()
        reply = await self._forward(job)
        self.stats.forward_seconds.observe(time.perf_counter() - started)
        self.stats.by_query.inc(_wire.qtype_name(job.query), _wire.rcode_name(reply))
        try:
            send(reply)
        except (OSError, RuntimeError) as exc:
            self.stats.dropped += 1
            logger.debug("could not send a forwarded answer: %s", exc)

    async def _forward(self, job: ForwardJob) -> bytes:
        """Relay ``job`` to the upstreams in order; SERVFAIL when none answers."""
        self._forwarding += 1
        try:
            reply = await self._ask_upstreams(job)
        finally:
            self._forwarding -= 1
        st = self.stats
        st.answered += 1
        if reply is None:
            st.servfail += 1
            qid, flags = struct.unpack_from("!HH", job.query, 0)
            return (
                _wire.header(
                    qid,
                    _wire.QR | (flags & (_wire.RD | _wire.CD)) | _wire.RA | _wire.RCODE_SERVFAIL,
                    0,
                    0,
                    0,
                )
                + job.question_orig
            )
        # Our ID back, and RA: we offer recursion even if the upstream did not.
        reply = job.query[:2] + bytes((reply[2], reply[3] | 0x80)) + reply[4:]
        rcode = reply[3] & 0xF
        if rcode == _wire.RCODE_NXDOMAIN:
            st.nxdomain += 1
        if len(reply) > job.limit:
            st.truncated += 1
            return _wire.truncated(reply, 12 + len(job.question))
        return reply

    async def _ask_upstreams(self, job: ForwardJob) -> bytes | None:
        timeout = self.config.upstream_timeout
        for up in list(self._live):
            qid = secrets.randbits(16)
            query = struct.pack("!H", qid) + job.query[2:]
            try:
                async with asyncio.timeout(timeout):
                    reply = await udp_exchange(up, query, qid, job.question)
                    if reply[2] & 0x02:  # TC: ask again over TCP
                        reply = await tcp_exchange(up, query, qid, job.question)
            except (TimeoutError, OSError, UpstreamFailed) as exc:
                logger.debug("upstream %s failed: %r", up, exc)
                continue
            if reply[3] & 0xF in (_wire.RCODE_SERVFAIL, _wire.RCODE_REFUSED):
                logger.debug("upstream %s answered rcode %d", up, reply[3] & 0xF)
                continue
            return reply
        return None


def check_reply(reply: bytes, qid: int, question: bytes) -> bool:
    """True when ``reply`` answers our query: same ID, QR set, same question."""
    if len(reply) < 12 or _LEN.unpack_from(reply, 0)[0] != qid or not reply[2] & 0x80:
        return False
    if _LEN.unpack_from(reply, 4)[0] == 0:
        # FORMERR/NOTIMP-style answers may carry no question; take them as failures.
        raise UpstreamFailed(f"upstream answered rcode {reply[3] & 0xF} without a question")
    return reply[12 : 12 + len(question)].lower() == question


class _UpstreamUdp(asyncio.DatagramProtocol):
    def __init__(self, qid: int, question: bytes, done: asyncio.Future[bytes]) -> None:
        self._qid = qid
        self._question = question
        self._done = done

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self._done.done():
            return
        try:
            if check_reply(data, self._qid, self._question):
                self._done.set_result(data)
        except UpstreamFailed as exc:
            self._done.set_exception(exc)

    def error_received(self, exc: Exception) -> None:
        if not self._done.done():
            self._done.set_exception(exc)  # e.g. ICMP port unreachable: next upstream now

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(exc or ConnectionError("upstream socket closed"))


async def udp_exchange(up: HostPort, query: bytes, qid: int, question: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    family = socket.AF_INET6 if up.version == 6 else socket.AF_INET
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UpstreamUdp(qid, question, done),
        remote_addr=(up.host, up.port),
        family=family,
    )
    try:
        transport.sendto(query)
        return await done
    finally:
        transport.close()


async def tcp_exchange(up: HostPort, query: bytes, qid: int, question: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(up.host, up.port)
    try:
        writer.write(_LEN.pack(len(query)) + query)
        await writer.drain()
        while True:
            (length,) = _LEN.unpack(await reader.readexactly(2))
            reply = await reader.readexactly(length)
            if check_reply(reply, qid, question):
                return reply
    except asyncio.IncompleteReadError as exc:
        raise UpstreamFailed("upstream closed the TCP connection early") from exc
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
