"""What ``overlayd serve`` calls for cluster mode (``run_daemon`` and the IPC server)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from typing import Any

from overlayd.cluster.config import ClusterSettings
from overlayd.errors import ConfigError

if TYPE_CHECKING:
    from overlayd.cluster.agent import ClusterAgent
    from overlayd.cluster.dns import LocalNames
    from overlayd.cluster.engine_api import ClusterEngine
    from overlayd.protocol import ClusterStatusResponse

__all__ = ["ClusterMode", "cluster_mode"]

log = logging.getLogger("overlayd.cluster")


class ClusterMode:
    """Cluster mode of one daemon: the engine plugin, then the agent."""

    def __init__(self, settings: ClusterSettings) -> None:
        try:
            import etcd3gw  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                f"[cluster] needs the etcd client ({exc}); install it with "
                "`pip install 'overlayd[cluster]'`"
            ) from exc
        from overlayd.cluster.dns import LocalNames

        self.settings = settings
        self.local: LocalNames = LocalNames()
        self.agent: ClusterAgent | None = None

    def plugins(self) -> list[object]:
        """Engine plugins to register before the engine starts."""
        return [self.local]

    async def start(self, engine: ClusterEngine) -> None:
        from overlayd.cluster.agent import ClusterAgent

        self.agent = ClusterAgent(self.settings, engine, self.local)
        await self.agent.start()
        log.info(
            "cluster mode: node %s, etcd %s, prefix %s",
            self.settings.name,
            ", ".join(self.settings.endpoints),
            self.settings.prefix,
        )

    async def stop(self) -> None:
        if self.agent is not None:
            await self.agent.stop()

    async def status(self) -> ClusterStatusResponse:
        from overlayd.cluster.view import cluster_status

        assert self.agent is not None
        return await cluster_status(self.agent)


def cluster_mode(config: Any) -> ClusterMode | None:
    """The cluster mode of a daemon configuration, ``None`` without ``[cluster]``."""
    settings: ClusterSettings | None = getattr(config, "cluster", None)
    if settings is None:
        return None
    if getattr(config, "data_dir", None) is None:
        log.warning(
            "cluster mode without data_dir: this node gets a new WireGuard key on every "
            "start (its slice is kept, by name)"
        )
    return ClusterMode(settings)
