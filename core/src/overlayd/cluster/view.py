"""``overlayctl cluster``: what the ``cluster_status`` op answers and how it is shown."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING
from typing import TextIO

from overlayd import protocol as p
from overlayd.cluster.errors import StoreUnavailable

if TYPE_CHECKING:
    from overlayd.cluster.agent import ClusterAgent

__all__ = ["cluster_status", "print_cluster"]

log = logging.getLogger("overlayd.cluster")

#: Lease time-to-live is asked per node; above this many nodes it is not shown.
MAX_LEASE_QUERIES = 1000


async def _lease_ttls(agent: ClusterAgent, leases: dict[str, int]) -> dict[str, int]:
    if not agent.connected or len(leases) > MAX_LEASE_QUERIES:
        return {}
    distinct = sorted({lease for lease in leases.values() if lease})
    sem = asyncio.Semaphore(8)

    async def one(lease: int) -> tuple[int, int | None]:
        async with sem:
            try:
                return lease, await agent._io(agent.store.time_to_live, lease)
            except StoreUnavailable:
                return lease, None

    answers = dict(await asyncio.gather(*(one(lease) for lease in distinct)))
    return {
        name: ttl
        for name, lease in leases.items()
        if (ttl := answers.get(lease)) is not None and ttl >= 0
    }


async def cluster_status(agent: ClusterAgent) -> p.ClusterStatusResponse:
    """This node's view: every valid node, the handshake with it, its lease time left."""
    handshakes: dict[str, int] = {}
    try:
        status = await agent.engine.status()
        handshakes = {peer.public_key: peer.last_handshake_unix_secs for peer in status.peers}
    except Exception as exc:  # noqa: BLE001 - handshake ages are best effort here
        log.debug("cluster status: no peer status: %s", exc)
    records = dict(agent.membership.nodes)
    if agent.record is not None:
        records[agent.name] = agent.record
    leases = {name: agent.membership.leases.get(name, 0) for name in records}
    if agent.record is not None and agent.lease_id is not None:
        leases[agent.name] = agent.lease_id
    ttls = await _lease_ttls(agent, leases)
    nodes = [
        p.ClusterNodeInfo(
            name=rec.name,
            slices=[str(s) for s in rec.slices],
            endpoint=rec.endpoint,
            public_key=rec.public_key,
            node_ip=str(rec.node_ip),
            local=rec.name == agent.name,
            last_handshake_unix_secs=(
                None if rec.name == agent.name else handshakes.get(rec.public_key, 0)
            ),
            lease_ttl_secs=ttls.get(rec.name),
        )
        for rec in sorted(records.values(), key=lambda r: r.name)
    ]
    st = agent.stats
    return p.ClusterStatusResponse(
        name=agent.name,
        prefix=agent.settings.prefix,
        connected=agent.connected,
        nodes=nodes,
        stats=p.ClusterStats(
            sessions=st.sessions,
            peer_batches=st.peer_batches,
            peers_added=st.peers_added,
            peers_updated=st.peers_updated,
            peers_removed=st.peers_removed,
            events=st.events,
            bad_records=agent.membership.bad_records,
            etcd_requests=agent.store.requests,
        ),
        last_error=agent.last_error,
    )


def _age(unix: int | None, now: float) -> str:
    if unix is None:
        return "-"
    if unix <= 0:
        return "never"
    return f"{max(0, int(now) - unix)}s"


def print_cluster(resp: p.ClusterStatusResponse, out: TextIO | None = None) -> None:
    """The table ``overlayctl cluster`` prints."""
    out = out or sys.stdout
    state = "connected to etcd" if resp.connected else "NOT connected to etcd"
    print(f"node {resp.name}, prefix {resp.prefix}: {state}", file=out)
    if resp.last_error and not resp.connected:
        print(f"last error: {resp.last_error}", file=out)
    headers = ["NAME", "SLICE", "ENDPOINT", "PUBLIC KEY", "HANDSHAKE", "LEASE"]
    now = time.time()
    rows = [
        [
            n.name + (" *" if n.local else ""),
            ",".join(n.slices),
            n.endpoint,
            n.public_key,
            _age(n.last_handshake_unix_secs, now) + (" ago" if n.last_handshake_unix_secs else ""),
            "-" if n.lease_ttl_secs is None else f"{n.lease_ttl_secs}s",
        ]
        for n in resp.nodes
    ]
    if not rows:
        print("(no nodes)", file=out)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
