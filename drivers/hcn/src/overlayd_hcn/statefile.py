"""The JSON files the hcn package keeps (the driver's segment file, the simulator's state)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from overlayd.errors import StateError

__all__ = ["reading"]


@contextmanager
def reading(path: Path, what: str, remedy: str) -> Iterator[Any]:
    """The JSON document in ``path``, for the block to restore state from.

    Reading it, or a missing key or bad value met in the block, raises
    :class:`~overlayd.errors.StateError`: "``what`` ``path`` cannot be read
    (reason); move it away ``remedy``."
    """
    try:
        yield json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(f"{what} {path} cannot be read ({exc}); move it away {remedy}.") from exc
