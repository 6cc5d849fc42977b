"""A driver whose dependency is missing: loading it must fail with a clear message."""

from __future__ import annotations

import overlayd_missing_dependency  # type: ignore[import-not-found]  # noqa: F401


class BrokenDriver:
    name = "example_broken"
