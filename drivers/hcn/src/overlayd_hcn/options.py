"""The ``[drivers.hcn]`` options: one typed field per key (``docs/configuration.rst``)."""

from __future__ import annotations

from typing import Final
from typing import Literal

from pydantic import Field
from pydantic import model_validator

from overlayd.driver_options import DriverOptions

__all__ = ["DEFAULT_NETWORK_NAME", "HcnOptions"]

#: ZLayer's base network name; overlayd's default so both find the same network.
DEFAULT_NETWORK_NAME: Final = "zlayer-overlay"


class HcnOptions(DriverOptions):
    """What ``[drivers.hcn]`` may set."""

    backend: Literal["native", "simulator"] = Field(
        "native",
        description="native (Windows only) or simulator (documents in memory, on disk)",
    )
    state_dir: str | None = Field(
        None, min_length=1, description="where the simulator keeps its objects"
    )
    network_type: Literal["Internal", "Transparent"] = Field(
        "Internal", description="the HCN network type of the node's networks"
    )
    uplink_adapter: str | None = Field(
        None, min_length=1, description="the host adapter a Transparent network binds to"
    )
    network_name: str = Field(
        DEFAULT_NETWORK_NAME, min_length=1, description="name of the node's base network"
    )
    call_timeout: float = Field(
        60.0, gt=0, description="seconds allowed to one HCN call before it times out"
    )

    @model_validator(mode="after")
    def _transparent_needs_uplink(self) -> HcnOptions:
        if self.network_type == "Transparent" and self.uplink_adapter is None:
            raise ValueError(
                'network_type = "Transparent" needs uplink_adapter, the name of the host '
                'network adapter to bridge (e.g. "Ethernet 2")'
            )
        return self
