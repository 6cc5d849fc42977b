"""overlayd-cni: a CNI plugin that hands container attach to a running overlayd.

A container runtime (containerd, CRI-O, podman with its CNI backend) executes
``overlayd-cni`` once per container and operation, with the operation in
``CNI_COMMAND``, the container in ``CNI_CONTAINERID``/``CNI_NETNS``/``CNI_IFNAME``
and the network configuration on standard input (CNI specification 1.0.0 and
1.1.0). The plugin turns each into one request to the daemon over its socket,
through :class:`overlayd.rawclient.RawClient`, and prints the CNI result or a
CNI error object.

Modules: :mod:`~overlayd_cni.main` (the executable), :mod:`~overlayd_cni.invocation`
(environment and configuration), :mod:`~overlayd_cni.commands` (the six
operations), :mod:`~overlayd_cni.result` (CNI results), :mod:`~overlayd_cni.probe`
(what ``CHECK`` reads inside the namespace), :mod:`~overlayd_cni.launcher`
(a faster executable for a runtime's plugin directory, and the compiled front
end ``native/overlayd-cni.c``), :mod:`~overlayd_cni.inprocess` (the client when
the daemon runs the plugin, op ``cni_exec``). See docs/cni.rst.

Everything imported on the way to ``ADD`` uses the standard library only:
a runtime pays the interpreter's start and this package's import for each
container.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: CNI specification versions this plugin speaks.
SUPPORTED_VERSIONS = ("1.0.0", "1.1.0")
