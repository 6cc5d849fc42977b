"""The mesh as a picture: Graphviz DOT from one or more nodes' ``status``.

Each daemon asked (``overlayctl topology``, ``--node`` for more) is a node,
named by its interface, overlay address and public key; each peer it reports
is a node too (a peer that is also one of the daemons asked is the same
node). A link joins a node and its peer, labelled with the handshake age and
the bytes each way as the node reports them (``status`` peers' ``rx_bytes``
and ``tx_bytes``, an overlayd extension). Links without a handshake are
dashed. SVG and PNG come from Graphviz's ``dot``, which must be installed.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field

from overlayd import protocol as p
from overlayd.errors import NotSupported

__all__ = ["FORMATS", "Link", "Mesh", "build_mesh", "render", "to_dot"]

#: Output formats of :func:`render`.
FORMATS = ("dot", "svg", "png")


@dataclass
class Link:
    """A peering seen from ``a``: the handshake time and ``a``'s traffic counters."""

    a: str
    b: str
    handshake_unix_secs: int
    #: Bytes ``a`` sent to ``b`` and received from ``b`` (``None``: not reported).
    sent: int | None
    received: int | None


@dataclass
class Mesh:
    #: public key -> label lines
    nodes: dict[str, list[str]] = field(default_factory=dict)
    #: public keys of the nodes that answered (drawn bold)
    local: list[str] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)


def _short(key: str) -> str:
    return key[:10] + "…"


def build_mesh(statuses: Sequence[p.StatusResponse]) -> Mesh:
    """The nodes and links the ``statuses`` (one per daemon) describe."""
    mesh = Mesh()
    for st in statuses:
        key = st.public_key or f"(no global overlay on {st.interface or 'a node'})"
        lines = [st.interface or "overlayd", st.node_ip or "", _short(key)]
        mesh.nodes[key] = [line for line in lines if line]
        mesh.local.append(key)
    for st in statuses:
        if not st.public_key:
            continue
        for peer in st.peers:
            if peer.public_key not in mesh.nodes:
                lines = [_short(peer.public_key), peer.endpoint, peer.allowed_ips]
                mesh.nodes[peer.public_key] = [line for line in lines if line]
            mesh.links.append(
                Link(
                    a=st.public_key,
                    b=peer.public_key,
                    handshake_unix_secs=peer.last_handshake_unix_secs,
                    sent=peer.tx_bytes,
                    received=peer.rx_bytes,
                )
            )
    return mesh


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _age(unix: int, now: float) -> str:
    if unix <= 0:
        return "no handshake"
    secs = max(0, int(now - unix))
    if secs < 120:
        return f"handshake {secs}s ago"
    if secs < 7200:
        return f"handshake {secs // 60}m ago"
    return f"handshake {secs // 3600}h ago"


def _quote(lines: Sequence[str]) -> str:
    """A DOT string of ``lines`` (centred, one per line)."""
    escaped = [line.replace("\\", "\\\\").replace('"', '\\"') for line in lines]
    return '"' + "\\n".join(escaped) + '"'


def to_dot(mesh: Mesh, *, now: float | None = None) -> str:
    """The mesh as an undirected Graphviz graph; one edge per pair of nodes.

    When both ends of a link answered, the edge carries both ends' view.
    """
    now = time.time() if now is None else now
    ids = {key: f"n{i}" for i, key in enumerate(mesh.nodes)}
    out = [
        "graph overlay {",
        '  graph [rankdir=LR, fontname="Helvetica", label="overlayd mesh", labelloc=t];',
        '  node [shape=box, style="rounded", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for key, lines in mesh.nodes.items():
        style = ', style="rounded,bold", penwidth=2' if key in mesh.local else ""
        out.append(f"  {ids[key]} [label={_quote(lines)}{style}];")
    pairs: dict[frozenset[str], list[Link]] = {}
    for link in mesh.links:
        pairs.setdefault(frozenset((link.a, link.b)), []).append(link)
    for links in pairs.values():
        first = links[0]
        handshake = max(link.handshake_unix_secs for link in links)
        label = [_age(handshake, now)]
        for link in links:
            a = mesh.nodes[link.a][0]
            label.append(f"{a}: sent {_bytes(link.sent)}, received {_bytes(link.received)}")
        style = "" if handshake > 0 else ", style=dashed"
        out.append(f"  {ids[first.a]} -- {ids[first.b]} [label={_quote(label)}{style}];")
    out.append("}")
    return "\n".join(out) + "\n"


def render(dot_text: str, fmt: str) -> bytes:
    """``dot_text`` in ``fmt`` (``dot``, ``svg`` or ``png``).

    :raises NotSupported: SVG or PNG without Graphviz's ``dot`` on the PATH.
    """
    if fmt == "dot":
        return dot_text.encode()
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    dot = shutil.which("dot")
    if dot is None:
        raise NotSupported(
            f"--format {fmt} needs Graphviz's `dot`, which is not installed "
            "(apt-get install graphviz); --format dot prints the graph as text"
        )
    done = subprocess.run(  # noqa: S603 - dot from PATH, the graph on stdin
        [dot, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise NotSupported(f"dot failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout
