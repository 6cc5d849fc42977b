"""Linux bridges, veth/netns attach, routes and nftables NAT for overlayd."""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

__version__ = "0.1.0"

__all__ = ["LinuxBridgeDriver", "__version__"]

if TYPE_CHECKING:
    from overlayd_linux_bridge.driver import LinuxBridgeDriver


def __getattr__(name: str) -> Any:
    # Lazy, so that importing a mechanism module does not load the driver.
    if name == "LinuxBridgeDriver":
        from overlayd_linux_bridge.driver import LinuxBridgeDriver

        return LinuxBridgeDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
