"""Test tooling for overlayd and its drivers: a pytest plugin and the conformance kit.

Opt in with ``-p overlayd.testing.plugin`` (or ``pytest_plugins`` in a top-level
conftest). Needs the ``overlayd[testing]`` extra.
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("overlayd.testing.conformance")
