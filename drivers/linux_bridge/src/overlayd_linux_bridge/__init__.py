"""Linux bridges, veth/netns attach, routes and nftables NAT for overlayd."""

from __future__ import annotations

__version__ = "0.1.0"
