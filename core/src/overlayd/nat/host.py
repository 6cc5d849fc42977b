"""The engine's side of NAT traversal: one agent for the global device.

The engine calls four functions from here (start, stop, status, peer
candidates), so NAT traversal stays out of the engine's module; cluster mode
calls :func:`use_exchange` to carry candidates through the store.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Protocol

from overlayd.errors import InvalidRequest
from overlayd.errors import NotFound
from overlayd.model import NatCandidate
from overlayd.model import validate_wg_key
from overlayd.nat.agent import NatAgent
from overlayd.nat.candidates import CandidateExchange
from overlayd.nat.candidates import IpcExchange
from overlayd.nat.candidates import MemoryExchange
from overlayd.nat.candidates import parse_endpoint
from overlayd.nat.checks import CheckKeys

if TYPE_CHECKING:
    from overlayd.engine.base import EngineBase

__all__ = [
    "NatPeerStatus",
    "NatStatus",
    "nat_status",
    "set_peer_candidates",
    "start_nat",
    "stop_nat",
    "use_exchange",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NatPeerStatus:
    """One peer's path as ``status`` shows it."""

    public_key: str
    #: ``pending``, ``direct``, ``guessed`` or ``relayed``.
    path: str
    #: Where the peer is reached (its relayed address when relayed).
    endpoint: str | None
    candidates: tuple[NatCandidate, ...]


@dataclass(frozen=True)
class NatStatus:
    """This node's candidates and every managed peer's path, for ``status``."""

    candidates: tuple[NatCandidate, ...]
    peers: tuple[NatPeerStatus, ...]
    warnings: tuple[str, ...]


def _keepalive(engine: EngineBase, public_key: str) -> int:
    """The peer's recorded keepalive, at most the refresh period (NAT mappings time out)."""
    refresh = max(1, int(engine.config.nat.refresh))
    g = engine.global_
    table = engine.peers.get(g.device.name) if g else None
    recorded = table.get(public_key) if table is not None else None
    wanted = recorded.persistent_keepalive_secs if recorded else 0
    return min(wanted, refresh) if wanted > 0 else refresh


async def start_nat(engine: EngineBase) -> None:
    """Start the agent when the global overlay asks for NAT traversal and ``[nat]`` allows it."""
    g = engine.global_
    if engine.nat is not None or g is None or not g.nat_enabled or not engine.config.nat.enabled:
        return
    device = g.device
    if device.public_key is None:
        log.warning("NAT traversal needs the device's public key; %s has none", device.name)
        return
    private = engine.identity_private_key()
    exchange = engine.nat_exchange
    agent = NatAgent(
        engine.config.nat,
        device,
        engine.hooks,
        engine.run_blocking,
        engine.emit,
        exchange,
        CheckKeys(private, device.public_key),
        lambda key: _keepalive(engine, key),
    )
    engine.nat = agent
    await agent.start()
    _known_peers(agent, exchange)


def _known_peers(agent: NatAgent, exchange: CandidateExchange) -> None:
    """Peers whose candidates arrived before the agent (or the exchange) was in place."""
    if isinstance(exchange, MemoryExchange):
        for key in exchange.known_peers():
            agent._on_candidates(key)


class ExchangeHolder(Protocol):
    """The engine as :func:`use_exchange` sees it."""

    nat: NatAgent | None
    nat_exchange: CandidateExchange


def use_exchange(engine: ExchangeHolder, exchange: CandidateExchange) -> None:
    """Carry NAT candidates through ``exchange`` instead of the IPC (cluster mode).

    Takes effect at once when the agent already runs (a global overlay
    restored at start-up); otherwise the agent uses it when it starts.
    """
    engine.nat_exchange = exchange
    agent = engine.nat
    if agent is not None and agent.exchange is not exchange:
        agent.use_exchange(exchange)
        _known_peers(agent, exchange)


async def stop_nat(engine: EngineBase) -> None:
    agent, engine.nat = engine.nat, None
    if agent is not None:
        await agent.close()


def nat_status(engine: EngineBase) -> NatStatus | None:
    agent = engine.nat
    if agent is None:
        return None
    local, peers, warnings = agent.snapshot()
    return NatStatus(
        local,
        tuple(
            NatPeerStatus(p.public_key, p.path, p.endpoint, p.candidates)
            for p in sorted(peers, key=lambda p: p.public_key)
        ),
        tuple(warnings),
    )


async def set_peer_candidates(
    engine: EngineBase, public_key: str, candidates: Sequence[NatCandidate]
) -> None:
    """Record a peer's candidates (the ``nat_peer_candidates`` op)."""
    try:
        validate_wg_key(public_key)
    except ValueError as exc:
        raise InvalidRequest(f"public_key: {exc}") from None
    for cand in candidates:
        try:
            parse_endpoint(cand.endpoint)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
    if not engine.config.nat.enabled:
        raise InvalidRequest("NAT traversal is off on this node ([nat] enabled = false)")
    g = engine.global_
    if g is None:
        raise InvalidRequest("set up the global overlay before passing peer candidates")
    if candidates and public_key not in engine.peers.get(g.device.name, ()):
        raise NotFound(f"peer {public_key} is not a peer of {g.device.name}; add_peer it first")
    exchange = engine.nat_exchange
    if not isinstance(exchange, IpcExchange):
        raise InvalidRequest("peer candidates come from the cluster store on this node")
    exchange.set_peer_candidates(public_key, candidates)
