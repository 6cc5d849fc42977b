"""The example driver of ``docs/writing-a-driver.rst`` (``tests/example_driver``),
type-checked against overlayd's public API with this file (not run).

If this stops type-checking, a change in overlayd broke what driver authors rely on.
"""

from __future__ import annotations

from overlayd_example.driver import ExampleDriver

from overlayd.testing.conformance import check_driver

problems: list[str] = check_driver(ExampleDriver())
