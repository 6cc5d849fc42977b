"""Plain-text rendering of ``status.nat`` for ``overlayctl status``."""

from __future__ import annotations

from collections.abc import Sequence

from overlayd.protocol import NatCandidateInfo
from overlayd.protocol import NatStatusInfo

__all__ = ["render_nat"]


def _candidate(c: NatCandidateInfo) -> str:
    label = "reflexive, guessed" if c.guessed else c.kind
    return f"{c.endpoint} ({label})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def render_nat(nat: NatStatusInfo) -> list[str]:
    """Lines: this node's candidates, then each peer's path and candidates, then warnings."""
    lines = ["NAT candidates of this node:"]
    lines += [f"  {_candidate(c)}" for c in nat.candidates] or ["  (none)"]
    if nat.peers:
        lines.append("")
        rows = [
            [
                peer.public_key,
                peer.path,
                peer.endpoint or "-",
                ", ".join(_candidate(c) for c in peer.candidates) or "-",
            ]
            for peer in nat.peers
        ]
        lines += _table(["PEER", "PATH", "VIA", "CANDIDATES"], rows)
    for warning in nat.warnings:
        lines.append(f"warning: {warning}")
    return lines
