"""Windows HCN v2 networks, endpoints and namespaces for overlayd (with a simulator)."""

from __future__ import annotations

__version__ = "0.1.0"

# After __version__: the driver module reads it while this package initialises.
from overlayd_hcn.driver import HcnDriver

__all__ = ["HcnDriver", "__version__"]
