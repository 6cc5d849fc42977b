"""In-memory overlayd driver implementing every hook, for tests."""

from __future__ import annotations

__version__ = "0.1.0"
