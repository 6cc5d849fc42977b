"""Fixtures for privileged linux_bridge tests (helpers: overlayd_linux_bridge.testing).

Every namespace is created by the test that uses it, with a random suffix, and
removed on teardown even when the test fails. The adapters under test are
bound to a "host" namespace of their own, so the machine's real interfaces,
routes, sysctls and firewall are never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator

import pytest

from overlayd_linux_bridge.netlink import PyrouteNetlink
from overlayd_linux_bridge.testing import Netns
from overlayd_linux_bridge.testing import throwaway_netns


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], Netns]]:
    """Factory of throwaway namespaces.

    * Name: ``make_netns``
    * Scope: function
    * Depends: root / CAP_NET_ADMIN; removes every namespace it made.
    """
    with throwaway_netns() as make:
        yield make


@pytest.fixture
def host_ns(make_netns: Callable[[str], Netns]) -> Netns:
    """The namespace that plays the node's host namespace."""
    return make_netns("host")


@pytest.fixture
def linger() -> float:
    """Seconds the ``netlink`` adapter's deleter waits to batch deletions (parametrise it)."""
    return 0.01


@pytest.fixture
def netlink(host_ns: Netns, linger: float) -> Iterator[PyrouteNetlink]:
    """A real adapter bound to ``host_ns``; closed (deletions flushed) on teardown."""
    adapter = PyrouteNetlink(host_ns.path, linger=linger)
    try:
        yield adapter
    finally:
        adapter.close()
