"""Linux mechanism shared by overlayd's Linux drivers and the demo.

* :mod:`overlayd_linux.netns`: opening a network namespace safely and running
  code in a thread moved into it (``setns(2)`` moves only the calling thread);
* :mod:`overlayd_linux.netlink`: pyroute2 ``IPRoute`` objects bound to a
  namespace through such a thread, and the mapping of netlink errors;
* :mod:`overlayd_linux.rtnl`: the lean synchronous rtnetlink requests of the
  attach hot path;
* :mod:`overlayd_linux.icmp`: ICMP(v6) echo over a raw socket.

Core never imports this package (core must not import pyroute2); drivers and
the demo do. docs/design-notes.rst, "One home for Linux mechanism", says why
it is a distribution of its own.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
