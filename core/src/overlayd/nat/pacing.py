"""The pace of path selection: check intervals, the direct checks' head start, resends.

:class:`overlayd.nat.agent.NatAgent` measures the round trip to its STUN or
TURN server at every refresh; the head start and the resend interval follow
it, so a LAN is not held to a continent's timing nor a continent hurried to
a LAN's (docs/design-notes.rst, "NAT traversal: relay first only when direct
is slow").
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CHECK_INTERVAL",
    "DIRECT_HEAD_START",
    "MAX_HEAD_START",
    "MAX_RESEND",
    "MIN_HEAD_START",
    "MIN_RESEND",
    "RESEND",
    "UPGRADE_INTERVAL",
    "UPGRADE_WINDOW",
    "head_start",
    "resend_interval",
]

#: How long direct checks run alone before a relayed path is set up beside them,
#: while no round trip to a STUN or TURN server is known (see :func:`head_start`).
DIRECT_HEAD_START: Final = 0.2
#: Bounds of the head start measured from the round trip to the servers.
MIN_HEAD_START: Final = 0.1
MAX_HEAD_START: Final = 1.0
#: Pace of connectivity checks towards each candidate (seconds).
CHECK_INTERVAL: Final = 0.05
#: A relayed peer is offered a direct path at every refresh with a short,
#: slower burst of checks: the relay carries the traffic meanwhile, and the
#: peer's own bursts keep the NAT entries on its side open for 30 s or more.
UPGRADE_INTERVAL: Final = 0.2
UPGRADE_WINDOW: Final = 1.0
#: Seconds after which an unconfirmed path gets a new initiation while no
#: round trip to a server is known (see :func:`resend_interval`).
RESEND: Final = 0.5
MIN_RESEND: Final = 0.2
MAX_RESEND: Final = 2.0


def head_start(server_rtt: float | None) -> float:
    """Seconds the direct checks run alone before the relayed path is set up beside them.

    A direct check is answered once each node has sent one towards the other
    (each opens its own NAT for the other): a check interval plus one round
    trip between the nodes, which seldom exceeds twice a node's round trip to
    the STUN or TURN server both reach. The head start allows that twice
    over, two intervals and four server round trips, within
    :data:`MIN_HEAD_START` and :data:`MAX_HEAD_START`; with no round trip
    measured, :data:`DIRECT_HEAD_START` (docs/design-notes.rst, "NAT
    traversal: relay first only when direct is slow").
    """
    if server_rtt is None:
        return DIRECT_HEAD_START
    return min(MAX_HEAD_START, max(MIN_HEAD_START, 2 * CHECK_INTERVAL + 4 * server_rtt))


def resend_interval(server_rtt: float | None) -> float:
    """Seconds before an unconfirmed path gets a new initiation (``NatAgent._confirm``).

    A new initiation re-creates the peer, which drops the handshake under
    way, so the interval must outlast one: a round trip between the nodes,
    which seldom exceeds twice the round trip to the server. Four server
    round trips, within :data:`MIN_RESEND` and :data:`MAX_RESEND`;
    :data:`RESEND` while none is measured.
    """
    if server_rtt is None:
        return RESEND
    return min(MAX_RESEND, max(MIN_RESEND, 4 * server_rtt))
