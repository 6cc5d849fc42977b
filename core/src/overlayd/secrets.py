"""The secret store as the engine and drivers see it: private keys by name.

:class:`overlayd.state.SecretStore` keeps them in mode 0600 files under the
data directory; :class:`MemorySecrets` keeps them in memory for an engine
without one (tests, embedders).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["MemorySecrets", "Secrets"]


class Secrets(Protocol):
    """Private keys (base64 text) by name."""

    def get(self, name: str) -> str | None:
        """The secret ``name``, or ``None``. A file store answers a redacting
        ``str`` subclass whose ``reveal()`` gives the plain value."""
        ...

    def put(self, name: str, value: str) -> None:
        """Store ``name`` (replacing it)."""
        ...

    def delete(self, name: str) -> None:
        """Forget ``name``; absent is not an error."""
        ...


class MemorySecrets:
    """Secrets kept in memory (an engine without a data directory)."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}

    def get(self, name: str) -> str | None:
        return self._data.get(name)

    def put(self, name: str, value: str) -> None:
        self._data[name] = value

    def delete(self, name: str) -> None:
        self._data.pop(name, None)
