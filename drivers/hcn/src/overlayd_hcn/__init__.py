"""Windows HCN v2 networks, endpoints and namespaces for overlayd (with a simulator)."""

from __future__ import annotations

__version__ = "0.1.0"
