"""The ``[drivers.linux_bridge]`` options: one typed field per key (``docs/configuration.rst``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from overlayd.driver_options import DriverOptions

__all__ = ["LinuxBridgeOptions"]


class LinuxBridgeOptions(DriverOptions):
    """What ``[drivers.linux_bridge]`` may set."""

    nat_backend: Literal["auto", "library", "cli"] = Field(
        "auto",
        description="libnftables in process (library), the nft program (cli), or auto",
    )
    host_netns: str | None = Field(
        None,
        min_length=1,
        description="path of a network namespace to manage instead of the daemon's own",
    )
