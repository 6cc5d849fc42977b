"""Candidate priorities and the interface through which candidates travel.

A node offers candidates for its WireGuard port; every other node needs them
to find a path. How they travel is not the agent's business: it talks to a
:class:`CandidateExchange`. :class:`IpcExchange` is the one used without
cluster mode: ``status`` publishes this node's candidates and the
orchestrator hands a peer's candidates back with the ``nat_peer_candidates``
op. In cluster mode :class:`overlayd.cluster.exchange.ClusterExchange` takes
its place: it publishes into the node record's ``candidates`` and feeds the
candidates of the other nodes' records in (both build on
:class:`MemoryExchange`).
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from collections.abc import Sequence
from typing import Final
from typing import Literal
from typing import Protocol

from overlayd.model import NatCandidate
from overlayd.nat.config import split_host_port

__all__ = [
    "CandidateExchange",
    "IpcExchange",
    "MemoryExchange",
    "endpoint_of",
    "parse_endpoint",
    "priority",
    "rank",
]

#: RFC 8445 §5.1.2.2 type preferences; a guessed reflexive candidate ranks
#: below a verified one, a relay last.
TYPE_PREFERENCE: Final = {"host": 126, "reflexive": 100, "guessed": 90, "relay": 0}

Kind = Literal["host", "reflexive", "relay"]


def priority(kind: Kind, endpoint: str, *, guessed: bool = False, index: int = 0) -> int:
    """RFC 8445 §5.1.2.1: ``2^24 * type + 2^8 * local + (256 - component)``.

    The local preference puts IPv4 before IPv6 (NATs and firewalls pass IPv4
    more often between nodes of one cluster) and then keeps the gathering
    order (``index``); the component is always 1 (WireGuard has one port).
    """
    type_pref = TYPE_PREFERENCE["guessed" if guessed and kind == "reflexive" else kind]
    host, _ = parse_endpoint(endpoint)
    family_pref = 1 if host.version == 4 else 0
    local = max(0, 0x7FFF + family_pref * 0x8000 - min(index, 0x7FFF))
    return (type_pref << 24) + (local << 8) + 255


def parse_endpoint(endpoint: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """A numeric ``IP:port`` / ``[IPv6]:port`` -> (address, port); ValueError otherwise."""
    host, port = split_host_port(endpoint)
    try:
        return ipaddress.ip_address(host), port
    except ValueError:
        raise ValueError(f"candidate endpoint {endpoint!r} must be a numeric IP:port") from None


def endpoint_of(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    """``IP:port`` with brackets around IPv6 addresses."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return f"[{ip.compressed}]:{port}"
    return f"{ip}:{port}"


def rank(candidates: Sequence[NatCandidate]) -> list[NatCandidate]:
    """Candidates with a priority filled in where it is 0, best first, duplicates dropped."""
    out: dict[str, NatCandidate] = {}
    for index, cand in enumerate(candidates):
        if cand.endpoint in out:
            continue
        ranked = cand
        if cand.priority == 0:
            value = priority(cand.kind, cand.endpoint, guessed=cand.guessed, index=index)
            ranked = cand.model_copy(update={"priority": value})
        out[cand.endpoint] = ranked
    return sorted(out.values(), key=lambda c: c.priority, reverse=True)


class CandidateExchange(Protocol):
    """How this node's candidates reach other nodes and theirs reach this one.

    Implementations are thread-safe. ``publish`` is called whenever this
    node's candidates change; ``peer_candidates`` is read when a peer's path
    is chosen; the listener registered with ``on_change`` is called (from any
    thread) with the public key of a peer whose candidates changed.
    """

    def publish(self, public_key: str, candidates: Sequence[NatCandidate]) -> None:
        """Make this node's (``public_key``) candidates known to the other nodes."""
        ...

    def local(self) -> tuple[NatCandidate, ...]:
        """What was last published."""
        ...

    def peer_candidates(self, public_key: str) -> tuple[NatCandidate, ...] | None:
        """The candidates another node published; ``None`` when none are known."""
        ...

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(public_key)`` when a peer's candidates change."""
        ...


class MemoryExchange:
    """A :class:`CandidateExchange` that keeps everything in memory.

    Something outside feeds the peers' candidates in with
    :meth:`set_peer_candidates`; subclasses say where this node's go.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local: tuple[NatCandidate, ...] = ()
        self._peers: dict[str, tuple[NatCandidate, ...]] = {}
        self._listeners: list[Callable[[str], None]] = []

    def publish(self, public_key: str, candidates: Sequence[NatCandidate]) -> None:
        with self._lock:
            self._local = tuple(candidates)

    def local(self) -> tuple[NatCandidate, ...]:
        with self._lock:
            return self._local

    def peer_candidates(self, public_key: str) -> tuple[NatCandidate, ...] | None:
        with self._lock:
            return self._peers.get(public_key)

    def on_change(self, listener: Callable[[str], None]) -> None:
        with self._lock:
            if listener not in self._listeners:
                self._listeners.append(listener)

    def set_peer_candidates(self, public_key: str, candidates: Sequence[NatCandidate]) -> bool:
        """Record a peer's candidates (an empty list forgets them); True when they changed."""
        ranked = tuple(rank(candidates))
        with self._lock:
            before = self._peers.get(public_key)
            if ranked:
                self._peers[public_key] = ranked
            else:
                self._peers.pop(public_key, None)
            listeners = list(self._listeners)
        changed = before != (ranked or None)
        if changed:
            for listener in listeners:
                listener(public_key)
        return changed

    def known_peers(self) -> list[str]:
        with self._lock:
            return list(self._peers)

    def forget(self, public_key: str) -> None:
        with self._lock:
            self._peers.pop(public_key, None)


class IpcExchange(MemoryExchange):
    """Candidates exchanged through the orchestrator over IPC.

    ``status`` reads :meth:`local`; the ``nat_peer_candidates`` op calls
    :meth:`set_peer_candidates`.
    """
