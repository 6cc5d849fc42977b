"""The ``[drivers.wireguard]`` options: one typed field per key (``docs/configuration.rst``)."""

from __future__ import annotations

import shlex
from typing import Literal

from pydantic import Field
from pydantic import field_validator

from overlayd.driver_options import DriverOptions
from overlayd.errors import InvalidRequest
from overlayd_wireguard.tuning import DEFAULT_SOCKET_BUFFER
from overlayd_wireguard.tuning import MAX_SOCKET_BUFFER
from overlayd_wireguard.tuning import Tuning
from overlayd_wireguard.uapi import DEFAULT_SOCKET_DIR

__all__ = ["WireGuardOptions", "split_host_port"]


def split_host_port(endpoint: str) -> tuple[str, int]:
    """``host:port``, ``[IPv6]:port`` or ``IP:port`` -> (host, port); else InvalidRequest."""
    if endpoint.startswith("["):
        host, sep, port = endpoint[1:].partition("]:")
    else:
        host, sep, port = endpoint.rpartition(":")
        if ":" in host:
            sep = ""
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InvalidRequest(f"endpoint {endpoint!r} must be host:port, [IPv6]:port or IP:port")
    return host, int(port)


class WireGuardOptions(DriverOptions):
    """What ``[drivers.wireguard]`` may set."""

    backend: Literal["auto", "kernel", "userspace"] = Field(
        "auto", description="kernel WireGuard, userspace (wireguard-go), or auto"
    )
    userspace_command: str | list[str] = Field(
        "wireguard-go",
        description="the userspace implementation: a command line or program and arguments",
    )
    socket_dir: str = Field(
        DEFAULT_SOCKET_DIR, min_length=1, description="directory of the UAPI sockets"
    )
    netns: str | None = Field(
        None, min_length=1, description="named network namespace the devices run in"
    )
    endpoint: str | None = Field(None, description="this node's host:port given to guests")
    userspace_socket_buffer: int = Field(
        DEFAULT_SOCKET_BUFFER,
        ge=0,
        le=MAX_SOCKET_BUFFER,
        description="bytes asked for each wireguard-go UDP socket buffer; 0 leaves them",
    )
    userspace_nice: int | None = Field(
        None, ge=-20, le=19, description="nice value of every wireguard-go thread"
    )

    @field_validator("userspace_command")
    @classmethod
    def _command_not_empty(cls, value: str | list[str]) -> str | list[str]:
        if not (shlex.split(value) if isinstance(value, str) else value):
            raise ValueError("must not be empty")
        return value

    @field_validator("netns")
    @classmethod
    def _netns_is_a_name(cls, value: str | None) -> str | None:
        if value is not None and "/" in value:
            raise ValueError("give the name of a namespace under /var/run/netns, not a path")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_host_port(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                split_host_port(value)
            except InvalidRequest as exc:
                raise ValueError(str(exc)) from None
        return value

    @property
    def command(self) -> tuple[str, ...]:
        """The userspace command as program and arguments."""
        cmd = self.userspace_command
        return tuple(shlex.split(cmd) if isinstance(cmd, str) else cmd)

    @property
    def tuning(self) -> Tuning:
        """What the userspace backend applies to each wireguard-go process."""
        return Tuning(socket_buffer=self.userspace_socket_buffer, nice=self.userspace_nice)
