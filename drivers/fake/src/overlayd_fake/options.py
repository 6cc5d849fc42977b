"""The ``[drivers.fake]`` options: one typed field per key (``docs/configuration.rst``)."""

from __future__ import annotations

import ipaddress
from typing import Final

from pydantic import Field
from pydantic import field_validator

from overlayd.driver_options import DriverOptions

__all__ = ["UNDERLAY_ADDRESS", "FakeOptions"]

#: The fake host's underlay address (a documentation address, RFC 5737).
UNDERLAY_ADDRESS: Final = "192.0.2.1"


class FakeOptions(DriverOptions):
    """What ``[drivers.fake]`` may set."""

    state_file: str | None = Field(
        None, min_length=1, description="JSON file keeping the fake host across restarts"
    )
    underlay_address: str = Field(
        UNDERLAY_ADDRESS, description="the fake host's underlay address, given to guests"
    )

    @field_validator("underlay_address")
    @classmethod
    def _is_an_address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError("not an IP address") from None
