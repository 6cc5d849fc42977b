"""Cluster mode: nodes form the overlay themselves through etcd (``docs/cluster.rst``).

With a ``[cluster]`` table, ``overlayd serve`` registers the node in etcd under
a lease, claims a slice of the cluster CIDR with a transaction, sets up its
global overlay, and keeps its WireGuard peers equal to the live nodes. The
orchestrated mode (no ``[cluster]``) does none of this.

Modules:

* :mod:`~overlayd.cluster.config` — the ``[cluster]`` table (no etcd import);
* :mod:`~overlayd.cluster.engine_api` — the engine surface cluster mode uses;
* :mod:`~overlayd.cluster.store` — the etcd adapter (``etcd3gw``);
* :mod:`~overlayd.cluster.records` — key layout, record shapes, validation;
* :mod:`~overlayd.cluster.claim` — slice claims by transaction;
* :mod:`~overlayd.cluster.membership` — live nodes and the peer differences;
* :mod:`~overlayd.cluster.dns` — cluster DNS (publish and serve);
* :mod:`~overlayd.cluster.exchange` — NAT candidates through the node records;
* :mod:`~overlayd.cluster.agent` — the session loop tying it together;
* :mod:`~overlayd.cluster.view` — ``cluster_status`` and ``overlayctl cluster``;
* :mod:`~overlayd.cluster.daemon` — the hooks ``overlayd serve`` calls.

Only :mod:`config` is imported by the rest of overlayd without cluster mode;
everything else needs the ``cluster`` extra (``pip install 'overlayd[cluster]'``).
"""

from __future__ import annotations

from overlayd.cluster.config import ClusterSettings

__all__ = ["ClusterSettings"]
