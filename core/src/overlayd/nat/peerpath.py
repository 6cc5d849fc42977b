"""What the NAT agent (:mod:`overlayd.nat.agent`) knows and decided about one peer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from dataclasses import field
from typing import Literal

from overlayd.model import NatCandidate
from overlayd.nat.turn import RelayMode

__all__ = ["PathKind", "PeerPath"]

PathKind = Literal["pending", "direct", "guessed", "relayed"]


@dataclass
class PeerPath:
    """What the agent knows and decided about one peer."""

    public_key: str
    candidates: tuple[NatCandidate, ...] = ()
    path: PathKind = "pending"
    #: The peer's endpoint as the orchestrator sees it (the relayed address when relayed).
    endpoint: str | None = None
    #: What WireGuard is pointed at (the local relay endpoint when relayed).
    wg_endpoint: str | None = None
    #: Direct candidates that answered a check: endpoint -> monotonic time.
    valid: dict[str, float] = field(default_factory=dict)
    rx_bytes: int = -1
    quiet_since: float | None = None
    task: asyncio.Task[None] | None = None
    #: Monotonic time of the last path change.
    changed_at: float = 0.0
    #: Check transactions in flight: transaction id -> candidate endpoint.
    pending_checks: dict[bytes, str] = field(default_factory=dict)
    success: asyncio.Event = field(default_factory=asyncio.Event)
    #: How the relayed path runs (while ``path`` is ``relayed``).
    relay_mode: RelayMode | None = None
    #: Both relay did not confirm with the current candidates: one allocation
    #: relays the pair until the candidates change.
    single_relay: bool = False

    def direct_candidates(self) -> list[NatCandidate]:
        return [c for c in self.candidates if c.kind != "relay"]

    def relay_candidate(self) -> NatCandidate | None:
        return next((c for c in self.candidates if c.kind == "relay"), None)
