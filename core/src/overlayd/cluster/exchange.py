"""NAT candidates through the cluster store (``docs/cluster.rst``, ``docs/nat.rst``).

In cluster mode the NAT agent (:mod:`overlayd.nat.agent`) publishes and reads
candidates through a :class:`ClusterExchange` instead of the IPC:

* this node's candidates go into its own node record (``candidates``), which
  the cluster agent rewrites under the node's lease whenever they change;
* another node's candidates come from its record as the watch delivers it:
  :meth:`ClusterExchange.sync` hands the NAT agent the candidates of exactly
  the peers a change touched, as the ``nat_peer_candidates`` op would.

Only peers programmed on the device get candidates (the agent points their
endpoint); a node whose record goes away, or carries no candidates (an older
node, NAT traversal off there), is forgotten and keeps the endpoint its
record advertises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Container
from collections.abc import Iterable
from collections.abc import Sequence

from overlayd.cluster.membership import Membership
from overlayd.model import NatCandidate
from overlayd.nat.candidates import MemoryExchange

__all__ = ["ClusterExchange"]

log = logging.getLogger("overlayd.cluster")


class ClusterExchange(MemoryExchange):
    """A :class:`~overlayd.nat.candidates.CandidateExchange` backed by the node records.

    :param on_publish: called (from the publishing thread) when this node's
        candidates changed and its record must be written again.
    """

    def __init__(self, on_publish: Callable[[], None]) -> None:
        super().__init__()
        self._on_publish = on_publish

    def publish(self, public_key: str, candidates: Sequence[NatCandidate]) -> None:
        new = tuple(candidates)
        with self._lock:
            changed = new != self._local
            self._local = new
        if changed:
            self._on_publish()

    def sync(
        self,
        touched: Iterable[str],
        membership: Membership,
        programmed: Container[str],
    ) -> int:
        """Feed the ``touched`` peers' candidates from their records; returns how many changed.

        :param programmed: the public keys programmed on the global device.
        """
        changed = 0
        for key in sorted(set(touched)):
            name = membership.by_key.get(key)
            record = membership.nodes.get(name) if name is not None else None
            if record is None or name == membership.self_name or key not in programmed:
                cands: tuple[NatCandidate, ...] = ()
            else:
                cands = record.candidates
            if self.set_peer_candidates(key, cands):
                changed += 1
                log.debug(
                    "cluster: NAT candidates of peer %s: %s",
                    key,
                    ", ".join(c.endpoint for c in cands) or "none",
                )
        return changed
