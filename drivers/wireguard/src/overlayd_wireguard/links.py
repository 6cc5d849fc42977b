"""Link mechanism for WireGuard devices: MTU, addresses, state, creation (pyroute2).

Addresses and link state are set over rtnetlink with pyroute2, never by running
``ip``. Each call opens one ``IPRoute`` and closes it when it returns;
``netns`` names a namespace under ``/var/run/netns``, whose socket is opened by
a thread that entered it (:func:`overlayd_linux.netlink.iproute_in`), not by
pyroute2's forked helper. The netlink error helpers come from
:mod:`overlayd_linux.netlink` and are re-exported here for the driver's modules.
"""

from __future__ import annotations

import errno
import ipaddress
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any
from typing import Protocol

from overlayd.errors import DeviceError
from overlayd.errors import NotSupported
from overlayd_linux.netlink import NETLINK_ERRORS
from overlayd_linux.netlink import error_code
from overlayd_linux.netlink import iproute_in
from overlayd_linux.netlink import link_index
from overlayd_linux.netlink import mapped_errors

__all__ = [
    "NETLINK_ERRORS",
    "LinkAdapter",
    "PyRoute2Links",
    "error_code",
    "existing_link",
    "netlink_errors",
]


class LinkAdapter(Protocol):
    """What the WireGuard backends need from rtnetlink."""

    def wait_link(self, name: str, *, netns: str | None, timeout: float) -> None:
        """Block until link ``name`` exists, or raise ``DeviceError``."""
        ...

    def configure(
        self,
        name: str,
        *,
        mtu: int,
        addresses: Sequence[str],
        netns: str | None,
    ) -> None:
        """Set MTU, make the addresses exactly ``addresses``, set the link up."""
        ...

    def ensure_wireguard_link(self, name: str, *, netns: str | None) -> None:
        """Create a kernel ``wireguard`` link if absent (kernel backend only)."""
        ...

    def delete_link(self, name: str, *, netns: str | None) -> bool:
        """Delete link ``name``; return whether it existed."""
        ...


def netlink_errors(action: str, name: str) -> AbstractContextManager[None]:
    """Map pyroute2/OS errors to ``DeviceError`` keeping the cause."""
    return mapped_errors(
        lambda exc: DeviceError(
            f"{action} for WireGuard device {name} failed: {exc}",
            op=action,
            driver="wireguard",
        )
    )


def existing_link(ipr: Any, name: str, doing: str, op: str) -> int:
    """The index of link ``name``; ``DeviceError`` (``cannot <doing> <name>``) when
    it is gone, which for a WireGuard device means its process may have exited."""
    idx = link_index(ipr, name)
    if idx is None:
        raise DeviceError(
            f"cannot {doing} {name}: the link does not exist; "
            "the WireGuard process may have exited",
            op=op,
            driver="wireguard",
        )
    return idx


def _iproute(netns: str | None) -> AbstractContextManager[Any]:
    return iproute_in(netns)


class PyRoute2Links:
    """:class:`LinkAdapter` over pyroute2 ``IPRoute``."""

    def wait_link(self, name: str, *, netns: str | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.01
        with netlink_errors("looking up the link", name), _iproute(netns) as ipr:
            while link_index(ipr, name) is None:
                if time.monotonic() > deadline:
                    raise DeviceError(
                        f"link {name} did not appear in "
                        f"{'netns ' + netns if netns else 'the host namespace'} "
                        f"within {timeout} s",
                        op="wait_link",
                        driver="wireguard",
                    )
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def configure(
        self,
        name: str,
        *,
        mtu: int,
        addresses: Sequence[str],
        netns: str | None,
    ) -> None:
        want = [ipaddress.ip_interface(a) for a in addresses]
        with netlink_errors("configuring the link", name), _iproute(netns) as ipr:
            idx = existing_link(ipr, name, "configure", "configure")
            ipr.link("set", index=idx, mtu=mtu)
            have = set()
            for msg in ipr.get_addr(index=idx):
                have.add(
                    ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
                )
            for iface in have - set(want):
                if iface.version == 6 and iface.ip.is_link_local:
                    continue  # the kernel's own fe80:: address
                ipr.addr(
                    "del",
                    index=idx,
                    address=str(iface.ip),
                    prefixlen=iface.network.prefixlen,
                )
            for iface in want:
                if iface in have:
                    continue
                try:
                    ipr.addr(
                        "add",
                        index=idx,
                        address=str(iface.ip),
                        prefixlen=iface.network.prefixlen,
                    )
                except NETLINK_ERRORS as exc:
                    if error_code(exc) != errno.EEXIST:
                        raise
            ipr.link("set", index=idx, state="up")

    def ensure_wireguard_link(self, name: str, *, netns: str | None) -> None:
        with _iproute(netns) as ipr:
            if link_index(ipr, name) is not None:
                return
            try:
                ipr.link("add", ifname=name, kind="wireguard")
            except NETLINK_ERRORS as exc:
                if error_code(exc) == errno.EEXIST:
                    return
                if error_code(exc) in {errno.EOPNOTSUPP, errno.ENOENT}:
                    raise NotSupported(
                        "this kernel has no wireguard link type; use the userspace "
                        "backend (wireguard-go)"
                    ) from exc
                raise DeviceError(
                    f"creating kernel WireGuard link {name} failed: {exc}",
                    op="ensure_device",
                    driver="wireguard",
                ) from exc

    def delete_link(self, name: str, *, netns: str | None) -> bool:
        with netlink_errors("deleting the link", name), _iproute(netns) as ipr:
            idx = link_index(ipr, name)
            if idx is None:
                return False
            try:
                ipr.link("del", index=idx)
            except NETLINK_ERRORS as exc:
                if error_code(exc) != errno.ENODEV:
                    raise
                return False
            return True
