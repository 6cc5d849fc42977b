"""Kernel (netlink) and userspace (UAPI) WireGuard for overlayd."""

from __future__ import annotations

__version__ = "0.1.0"
