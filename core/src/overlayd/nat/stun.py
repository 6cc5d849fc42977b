"""STUN on the WireGuard port: transactions, reflexive candidates, mapping behaviour.

:class:`StunPort` runs STUN transactions (RFC 8489) from the WireGuard port
through :class:`~overlayd.nat.rawport.WgPort` and hands requests that arrive
there (connectivity checks from peers) to a callback. Messages are encoded
and parsed by :mod:`aioice.stun`.

:func:`gather_reflexive` asks each configured STUN server for the port's
mapping, and, when the server names an alternate address (RFC 5780
``OTHER-ADDRESS``) or several servers are configured, compares the mappings
seen from two destinations. Equal mappings show an endpoint-independent
mapping, so the reflexive candidate holds for any peer. Different mappings
(a symmetric NAT), or a single observation that proves nothing, make the
candidate ``guessed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Final

from aioice import stun

from overlayd.model import NatCandidate
from overlayd.nat.candidates import endpoint_of
from overlayd.nat.config import STUN_PORT
from overlayd.nat.config import split_host_port
from overlayd.nat.rawport import WgPort

__all__ = ["Observation", "ReflexiveResult", "StunPort", "gather_reflexive"]

log = logging.getLogger(__name__)

#: Retransmission times (seconds after the first send) of one transaction.
RETRANSMIT: Final = (0.0, 0.1, 0.3, 0.7, 1.5)

Address = tuple[str, int]
RequestHandler = Callable[[stun.Message, Address], None]


class StunPort:
    """STUN transactions on a :class:`WgPort`, driven by the event loop."""

    def __init__(self, port: WgPort) -> None:
        self.port = port
        self.on_request: RequestHandler | None = None
        self._waiters: dict[bytes, asyncio.Future[tuple[stun.Message, Address]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Messages that reached the port but did not parse as STUN.
        self.garbage = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for family, sock in self.port.sockets.items():
            loop.add_reader(sock.fileno(), self._readable, family)

    def close(self) -> None:
        if self._loop is not None:
            for sock in self.port.sockets.values():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()
        self.port.close()

    def _readable(self, family: int) -> None:
        for payload, addr in self.port.receive(family):
            try:
                message = stun.parse_message(payload)
            except ValueError:
                self.garbage += 1
                continue
            if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
                waiter = self._waiters.get(message.transaction_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result((message, addr))
            elif message.message_class == stun.Class.REQUEST and self.on_request is not None:
                try:
                    self.on_request(message, addr)
                except Exception:  # a bad request must not stop the reader
                    log.exception("handling a STUN request from %s failed", addr)

    def expect(self, tid: bytes, waiter: asyncio.Future[tuple[stun.Message, Address]]) -> None:
        """Complete ``waiter`` with the answer to transaction ``tid`` when it arrives."""
        self._waiters[tid] = waiter

    def forget(self, tid: bytes) -> None:
        self._waiters.pop(tid, None)

    def send(self, message: stun.Message, addr: Address) -> None:
        try:
            self.port.send(bytes(message), addr)
        except OSError as exc:
            log.debug("STUN send to %s failed: %s", addr, exc)

    async def transact(
        self,
        message: stun.Message,
        addr: Address,
        *,
        within: float,
        schedule: Sequence[float] = RETRANSMIT,
    ) -> tuple[stun.Message, Address] | None:
        """Send ``message`` to ``addr`` with retransmissions; the answer, or None on timeout."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[stun.Message, Address]] = loop.create_future()
        tid = message.transaction_id
        self._waiters[tid] = waiter
        start = loop.time()
        try:
            for at in schedule:
                if at >= within:
                    break
                delay = start + at - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        return await asyncio.wait_for(asyncio.shield(waiter), delay)
                self.send(message, addr)
            remaining = start + within - loop.time()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(waiter), remaining)
            return None
        finally:
            self._waiters.pop(tid, None)
            if not waiter.done():
                waiter.cancel()


@dataclass(frozen=True)
class Observation:
    """One mapping seen by one STUN destination."""

    server: Address
    mapped: Address
    #: RFC 5780 alternate address of the server, when it named one.
    other: Address | None = None
    #: Seconds from the request to its answer (retransmissions included).
    rtt: float | None = None


@dataclass
class ReflexiveResult:
    candidates: list[NatCandidate] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: "independent", "dependent" or "unknown" per address family seen.
    mapping: dict[int, str] = field(default_factory=dict)


async def _resolve(host: str, port: int) -> list[Address]:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [(str(ip), port)]
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    out: list[Address] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            addr = (str(sockaddr[0]), int(sockaddr[1]))
            if addr not in out:
                out.append(addr)
    return out


def _binding_request() -> stun.Message:
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    msg.add_fingerprint()
    return msg


async def _observe(port: StunPort, server: Address, within: float) -> Observation | str:
    """One Binding transaction; an Observation or a warning sentence."""
    started = time.monotonic()
    answer = await port.transact(_binding_request(), server, within=within)
    rtt = time.monotonic() - started
    where = endpoint_of(server[0], server[1])
    if answer is None:
        return (
            f"STUN server {where} did not answer a Binding request from the WireGuard "
            f"port {port.port.port} within {within:.1f} s (unreachable, filtered or not STUN)"
        )
    message, _ = answer
    if message.message_class != stun.Class.RESPONSE:
        code = message.attributes.get("ERROR-CODE")
        return f"STUN server {where} refused the Binding request: {code}"
    mapped = message.attributes.get("XOR-MAPPED-ADDRESS") or message.attributes.get(
        "MAPPED-ADDRESS"
    )
    if not isinstance(mapped, tuple) or len(mapped) != 2:
        return f"STUN server {where} answered without a mapped address; ignored"
    other = message.attributes.get("OTHER-ADDRESS")
    return Observation(
        server=server,
        mapped=(str(mapped[0]), int(mapped[1])),
        other=(str(other[0]), int(other[1])) if isinstance(other, tuple) else None,
        rtt=rtt,
    )


async def gather_reflexive(
    port: StunPort, servers: Sequence[str], *, within: float, local: Sequence[str] = ()
) -> ReflexiveResult:
    """Ask ``servers`` for the WireGuard port's mapping and judge the NAT's behaviour.

    ``local`` lists the host candidates' endpoints: a mapping equal to one of
    them means no NAT on that path, and no reflexive candidate is added.
    """
    result = ReflexiveResult()
    targets: list[Address] = []
    for text in servers:
        host, port_no = split_host_port(text, STUN_PORT)
        try:
            resolved = await _resolve(host, port_no)
        except OSError as exc:
            result.warnings.append(f"STUN server {text}: cannot resolve {host!r}: {exc}")
            continue
        targets.extend(a for a in resolved if a not in targets)
    started = time.monotonic()
    first = await asyncio.gather(*(_observe(port, t, within) for t in targets))
    for item in first:
        if isinstance(item, str):
            result.warnings.append(item)
        else:
            result.observations.append(item)
    # RFC 5780: ask the alternate address of the first server that names one,
    # when no two servers of one family answered already.
    seen_families = [ipaddress.ip_address(o.server[0]).version for o in result.observations]
    for obs in list(result.observations):
        family = ipaddress.ip_address(obs.server[0]).version
        if seen_families.count(family) >= 2 or obs.other is None:
            continue
        extra = await _observe(port, obs.other, within)
        if isinstance(extra, Observation):
            result.observations.append(extra)
            seen_families.append(family)
        else:
            result.warnings.append(extra)
    by_family: dict[int, list[Observation]] = {}
    for obs in result.observations:
        by_family.setdefault(ipaddress.ip_address(obs.mapped[0]).version, []).append(obs)
    for version, observations in sorted(by_family.items()):
        mappings = {o.mapped for o in observations}
        if len(mappings) > 1:
            result.mapping[version] = "dependent"
        elif len(observations) >= 2:
            result.mapping[version] = "independent"
        else:
            result.mapping[version] = "unknown"
        guessed = result.mapping[version] != "independent"
        mapped = observations[0].mapped
        endpoint = endpoint_of(mapped[0], mapped[1])
        if endpoint in local:
            continue
        result.candidates.append(NatCandidate(kind="reflexive", endpoint=endpoint, guessed=guessed))
    log.debug(
        "reflexive gathering on port %d took %.3f s: %s",
        port.port.port,
        time.monotonic() - started,
        result.mapping,
    )
    return result
