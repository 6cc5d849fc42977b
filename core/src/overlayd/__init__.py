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

# Not ``typing.TYPE_CHECKING``: importing typing costs a CNI plugin's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from overlayd.config import DaemonConfig
    from overlayd.config import EngineConfig
    from overlayd.engine import Engine
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


#: Where the heavier public names live; imported on first use (PEP 562), so
#: that ``import overlayd.rawclient`` (the CNI plugin) does not pay for
#: pydantic, pluggy and the engine (docs/design-notes.rst, "Measured choices
#: in core"). The errors import only the standard library and are imported at once.
_LAZY: dict[str, str] = {
    "DaemonConfig": "overlayd.config",
    "EngineConfig": "overlayd.config",
    "hookimpl": "overlayd.hookspecs",
    "hookspec": "overlayd.hookspecs",
    "DRIVER_API": "overlayd.model",
    "Engine": "overlayd.engine",
}


def lazy_attributes(
    module: str, table: dict[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) importing each name of ``table`` on first use.

    ``table`` maps a public name to the module that defines it; the value is
    kept in ``namespace`` (the package's ``globals()``), so a name is looked
    up once. Used by packages whose entry points must start light.
    """

    def __getattr__(name: str) -> Any:
        source = table.get(name)
        if source is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(source), name)
        namespace[name] = value
        return value

    return __getattr__


__getattr__ = lazy_attributes(__name__, _LAZY, globals())
