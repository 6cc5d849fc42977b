"""pytest plugin: ``--run-privileged``, the ``privileged`` marker and engine fixtures."""

from __future__ import annotations

import os
import sys

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("overlayd")
    group.addoption(
        "--run-privileged",
        action="store_true",
        default=False,
        help="run tests marked `privileged` (root / CAP_NET_ADMIN, throwaway netns)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "privileged: needs root/CAP_NET_ADMIN; runs only with --run-privileged, "
        "inside network namespaces the test creates",
    )
    config.addinivalue_line("markers", "windows: runs only on Windows")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def _has_net_admin() -> bool:
    if sys.platform != "linux":
        return False
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 12))
    except OSError:
        return False
    return os.geteuid() == 0


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    run_privileged = config.getoption("--run-privileged")
    capable = _has_net_admin()
    for item in items:
        if "windows" in item.keywords and sys.platform != "win32":
            item.add_marker(pytest.mark.skip(reason="needs Windows"))
        if "privileged" not in item.keywords:
            continue
        if not run_privileged:
            item.add_marker(
                pytest.mark.skip(reason="privileged test: pass --run-privileged")
            )
        elif not capable:
            # With the flag but without the capability, fail loudly: CI must not
            # go green by skipping everything that matters.
            item.user_properties.append(("overlayd_missing_capability", True))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if ("overlayd_missing_capability", True) in item.user_properties:
        pytest.fail("--run-privileged given but this process lacks CAP_NET_ADMIN")
