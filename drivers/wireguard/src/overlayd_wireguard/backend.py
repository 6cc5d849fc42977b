"""The WireGuard backend contract and backend selection.

A backend owns the *mechanism* of a WireGuard device: creating it, programming
keys and peers, reading it back, deleting it. Two implementations exist:

* :class:`~overlayd_wireguard.kernel.KernelBackend` -- the Linux module over
  generic netlink (pyroute2 ``WireGuard``);
* :class:`~overlayd_wireguard.userspace.UserspaceBackend` -- ``wireguard-go``
  processes programmed over UAPI, supervised and restarted.

Both speak the same typed values (:class:`~overlayd_wireguard.uapi.SetRequest`,
:class:`~overlayd_wireguard.uapi.DeviceState`), so the driver's policy code does
not care which one runs.
"""

from __future__ import annotations

import abc
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from typing import Literal

from overlayd.errors import ConfigError
from overlayd.errors import NotSupported
from overlayd_wireguard.keys import PrivateKey
from overlayd_wireguard.uapi import DeviceState
from overlayd_wireguard.uapi import PeerConfig
from overlayd_wireguard.uapi import SetRequest
from overlayd_wireguard.uapi import validate_ifname

__all__ = ["BackendName", "DeviceConfig", "WgBackend", "select_backend"]

BackendName = Literal["auto", "kernel", "userspace"]


@dataclass(frozen=True)
class DeviceConfig:
    """The settings :meth:`WgBackend.ensure_device` gives a device (its parameters)."""

    private_key: PrivateKey
    listen_port: int | None
    mtu: int
    addresses: tuple[str, ...]
    netns: str | None
    fwmark: int | None


class WgBackend(abc.ABC):
    """Mechanism for one node's WireGuard devices.

    The public methods are the contract the driver uses; they check the
    interface name and hand over to the ``_``-prefixed ones each backend
    implements.
    """

    #: "kernel" or "userspace".
    kind: str

    def ensure_device(
        self,
        name: str,
        *,
        private_key: PrivateKey,
        listen_port: int | None = None,
        mtu: int = 1420,
        addresses: Sequence[str] = (),
        netns: str | None = None,
        fwmark: int | None = None,
    ) -> DeviceState:
        """Create ``name`` if needed, set key/port/fwmark, MTU, exact addresses, up.

        Idempotent; peers already on the device are kept. Returns the state read
        back. Raises ``Conflict`` if ``name`` exists in another namespace.
        """
        validate_ifname(name)
        config = DeviceConfig(
            private_key=private_key,
            listen_port=listen_port,
            mtu=mtu,
            addresses=tuple(addresses),
            netns=netns,
            fwmark=fwmark,
        )
        return self._ensure_device(name, config)

    def delete_device(self, name: str) -> bool:
        """Remove the device (and its process); return whether it existed."""
        validate_ifname(name)
        return self._delete_device(name)

    def apply(
        self,
        name: str,
        request: SetRequest,
        *,
        peers: Sequence[PeerConfig] | None = None,
    ) -> None:
        """Apply one batch of device settings and peer operations.

        ``peers``: the device's whole peer configuration after ``request``, when
        the caller tracks it; a backend that records the configuration (to replay
        it after a restart) then needs no read-back of the whole device.
        """
        validate_ifname(name)
        self._apply(name, request, peers)

    @abc.abstractmethod
    def get(self, name: str) -> DeviceState:
        """Read the device's state."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release resources (sockets, supervisor thread); devices keep running."""

    @abc.abstractmethod
    def _ensure_device(self, name: str, config: DeviceConfig) -> DeviceState:
        """:meth:`ensure_device` of a valid interface name."""

    @abc.abstractmethod
    def _delete_device(self, name: str) -> bool:
        """:meth:`delete_device` of a valid interface name."""

    @abc.abstractmethod
    def _apply(self, name: str, request: SetRequest, peers: Sequence[PeerConfig] | None) -> None:
        """:meth:`apply`."""


def select_backend(name: BackendName = "auto", **options: Any) -> WgBackend:
    """Build the backend ``name``; ``auto`` prefers the kernel, then wireguard-go.

    ``options`` go to the backend's constructor (e.g. ``command=`` for userspace).
    """
    from overlayd_wireguard import kernel
    from overlayd_wireguard import userspace

    if name == "kernel":
        if not kernel.probe():
            raise NotSupported(
                "the kernel has no WireGuard support (no wireguard module); "
                "configure backend = 'userspace' to use wireguard-go"
            )
        return kernel.KernelBackend(**options)
    if name == "userspace":
        return userspace.UserspaceBackend(**options)
    if name == "auto":
        if kernel.probe():
            return kernel.KernelBackend(**options)
        command = options.get("command", userspace.DEFAULT_COMMAND)
        if shutil.which(command[0]) is None:
            raise NotSupported(
                "no WireGuard implementation is available: the kernel has no "
                f"wireguard module and {command[0]!r} is not on PATH; install "
                "wireguard-go or load the wireguard module"
            )
        return userspace.UserspaceBackend(**options)
    raise ConfigError(f"unknown WireGuard backend {name!r}; use 'auto', 'kernel' or 'userspace'")
