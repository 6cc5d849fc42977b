"""Errors of cluster mode."""

from __future__ import annotations

from overlayd.errors import ConfigError
from overlayd.errors import OverlaydError

__all__ = ["ClusterConflict", "ClusterError", "StoreUnavailable"]


class ClusterError(OverlaydError):
    """Cluster mode could not do what it had to."""

    code = "cluster"


class StoreUnavailable(ClusterError):
    """No etcd endpoint answered; the node keeps its last known peers and retries."""

    code = "unavailable"


class ClusterConflict(ClusterError, ConfigError):
    """The cluster disagrees with this node (its slice is held by another node, ...)."""

    code = "conflict"
