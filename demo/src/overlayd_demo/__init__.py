"""``overlayd demo``: two nodes, one encrypted overlay, containers that find and reach each other.

As root, with the ``linux_bridge`` and ``wireguard`` drivers and ``wireguard-go``
installed, the demo builds everything for real inside network namespaces it
creates (never touching the host's own interfaces): two "nodes" joined by an
underlay veth, an overlayd daemon per node, the global WireGuard overlay with
peers exchanged over the IPC, a service with two "containers" (a namespace
holding a ``sleep`` process) per node, DNS records for them; then a container
on node A resolves a container on node B through overlayd's DNS server and
pings it across the tunnel. Everything is torn down at the end, also on Ctrl-C
(SIGINT) or SIGTERM, unless ``--keep`` is given; ``--cleanup PREFIX`` removes
what ``--keep`` left.

Without root (or with ``--fake``) it runs the same scenario on two ``overlayd
serve`` daemons with the fake driver, says so, and shows what it can without a
data plane: keys, addresses, peers and real DNS answers from overlayd's DNS
server.

The demo installs nothing; when something is missing it names it and how to get it.

It is a distribution of its own (``overlayd-demo``), outside core: it drives
the daemons only through :class:`overlayd.client.Client` and uses
:mod:`overlayd_linux` for namespaces and ICMP. Core's ``overlayd demo``
imports :mod:`overlayd_demo.cli` lazily (docs/design-notes.rst, "The demo is
a distribution of its own").

Modules: :mod:`~overlayd_demo.cli` (arguments, which demo runs),
:mod:`~overlayd_demo.real`, :mod:`~overlayd_demo.fake`,
:mod:`~overlayd_demo.cluster` (``--cluster``), :mod:`~overlayd_demo.cleanup`
(``--cleanup``) and :mod:`~overlayd_demo.common`.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
