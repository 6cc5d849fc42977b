"""overlayd: the overlay network plane engine.

Embed it::

    from overlayd import Engine, EngineConfig

    async with Engine(EngineConfig(drivers=["fake"])) as engine:
        await engine.setup_global_overlay(
            deployment="prod", instance_id="n1", cluster_cidr="10.200.0.0/16",
            slice_cidr="10.200.1.0/24", wg_port=51820,
        )

Write a driver: implement hooks from :mod:`overlayd.hookspecs` with
:data:`hookimpl` and register the class under the ``overlayd.drivers`` entry
point group.
"""

from __future__ import annotations

from overlayd.config import DaemonConfig
from overlayd.config import EngineConfig
from overlayd.errors import AllocationError
from overlayd.errors import AttachError
from overlayd.errors import ConfigError
from overlayd.errors import Conflict
from overlayd.errors import DeviceError
from overlayd.errors import DnsError
from overlayd.errors import DriverError
from overlayd.errors import InvalidRequest
from overlayd.errors import NatError
from overlayd.errors import NoDriverError
from overlayd.errors import NotFound
from overlayd.errors import NotSupported
from overlayd.errors import OverlaydError
from overlayd.errors import PeerError
from overlayd.errors import PoolExhausted
from overlayd.errors import StateError
from overlayd.errors import TeardownError
from overlayd.hookspecs import hookimpl
from overlayd.hookspecs import hookspec
from overlayd.model import DRIVER_API

__version__ = "0.1.0"

__all__ = [
    "DRIVER_API",
    "AllocationError",
    "AttachError",
    "ConfigError",
    "Conflict",
    "DaemonConfig",
    "DeviceError",
    "DnsError",
    "DriverError",
    "Engine",
    "EngineConfig",
    "InvalidRequest",
    "NatError",
    "NoDriverError",
    "NotFound",
    "NotSupported",
    "OverlaydError",
    "PeerError",
    "PoolExhausted",
    "StateError",
    "TeardownError",
    "__version__",
    "hookimpl",
    "hookspec",
]


def __getattr__(name: str) -> object:
    # The engine pulls in the IPAM, state and plugin machinery; import it lazily
    # so `import overlayd` stays cheap for drivers that only need hookimpl.
    if name == "Engine":
        from overlayd.engine import Engine

        return Engine
    raise AttributeError(name)
