"""Test doubles of the linux_bridge driver's nft backend and namespace resolver.

Shipped in the package, like :mod:`overlayd_linux_bridge.fakenetlink`, so that
the driver's unit tests (and third parties testing against the driver) can run
its policy without nftables, namespaces or privileges:

* :class:`FakeNft` is an nft backend that models table ``inet overlayd``
  (existence, sets and map keys, one transaction per command batch) and table
  ``bridge overlayd`` (its last definition); :meth:`FakeNft.wipe` is what a
  firewall reload (``nft flush ruleset``) does to them;
* :class:`FakeNamespaces` is a namespace resolver over
  :class:`~overlayd_linux_bridge.fakenetlink.FakeNetlink`'s fake namespaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from collections.abc import Iterator

from overlayd_linux_bridge.fakenetlink import FakeNetlink
from overlayd_linux_bridge.namespaces import PinnedNamespace
from overlayd_linux_bridge.nft import NftCommandError

__all__ = ["FakeNamespaces", "FakeNft"]


class FakeNft:
    """nft backend modelling table ``inet overlayd`` (existence, sets and map keys)
    and table ``bridge overlayd`` (its last definition)."""

    name = "fake"

    def __init__(self) -> None:
        self.exists = False
        self.elements: dict[str, dict[str, str]] = {}
        self.commands: list[str] = []
        self.full_applies = 0
        #: The commands that last defined table ``bridge overlayd``.
        self.bridge_table: str | None = None
        #: Set to make the next ``bridge overlayd`` definition fail.
        self.refuse_bridge_table = False

    def run(self, commands: str, *, json_output: bool = False) -> str:
        self.commands.append(commands)
        if commands.startswith("add table bridge overlayd"):
            if self.refuse_bridge_table:
                raise NftCommandError("refused", nft_message="Operation not supported")
            self.bridge_table = commands
            return ""
        if commands.startswith("add table inet overlayd"):
            self.exists = True
            self.full_applies += 1
            self.elements = {}
            for _kind, name, body in re.findall(r"(set|map) (\w+) \{([^\n]*)\}", commands):
                found = re.search(r"elements = \{ (.*) \};", body)
                items = found.group(1).split(", ") if found else []
                self.elements[name] = dict(_split(item) for item in items)
            return ""
        if commands.startswith("list table bridge overlayd"):
            if self.bridge_table is None:
                raise NftCommandError("missing", nft_message="No such file or directory")
            return json.dumps({"nftables": []})
        if commands.startswith("list table"):
            if not self.exists:
                raise NftCommandError("missing", nft_message="No such file or directory")
            sets = [
                {"set": {"name": name, "elem": sorted(items)}}
                for name, items in self.elements.items()
                if name.startswith(("masq", "exempt")) and items
            ]
            return json.dumps({"nftables": sets})
        if commands.startswith("delete table"):
            if not self.exists:
                raise NftCommandError("missing", nft_message="No such file or directory")
            self.exists = False
            return ""
        if not self.exists:
            raise NftCommandError("missing", nft_message="No such file or directory")
        staged = {name: dict(items) for name, items in self.elements.items()}
        for line in commands.strip().splitlines():  # one transaction: all or nothing
            verb, _, _, _, name, rest = line.split(" ", 5)
            bucket = staged.setdefault(name, {})
            key, value = _split(rest.strip().strip("{}").strip())
            if verb == "add":
                if key in bucket and bucket[key] != value:
                    raise NftCommandError("exists", nft_message="File exists")
                if name.startswith(("masq", "exempt")) and any(
                    key != other and _overlap(key, other) for other in bucket
                ):
                    raise NftCommandError("overlap", nft_message="interval overlaps")
                bucket[key] = value
            elif key in bucket:
                del bucket[key]
            else:
                raise NftCommandError("missing", nft_message="No such file or directory")
        self.elements = staged
        return ""

    def close(self) -> None:
        return None

    def wipe(self) -> None:
        """What ``nft flush ruleset`` (a firewall reload) does to our tables."""
        self.exists = False
        self.elements = {}
        self.bridge_table = None


def _overlap(a: str, b: str) -> bool:
    return ipaddress.ip_network(a).overlaps(ipaddress.ip_network(b))


def _split(item: str) -> tuple[str, str]:
    key, _, value = item.partition(" : ")
    return key.strip(), value.strip()


class FakeNamespaces:
    """Paths of live namespaces -> (fake fd, inode)."""

    def __init__(self, netlink: FakeNetlink) -> None:
        self.netlink = netlink
        self.paths: dict[str, tuple[int, int]] = {}
        self.opened: list[str] = []
        self._inode = 4026531000

    def add(self, path: str) -> int:
        fd = self.netlink.new_netns()
        self._inode += 1
        self.paths[path] = (fd, self._inode)
        return fd

    def kill(self, path: str) -> None:
        fd, _ = self.paths.pop(path)
        self.netlink.remove_netns(fd)

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[PinnedNamespace]:
        self.opened.append(path)
        if path not in self.paths:
            raise FileNotFoundError(2, f"network namespace {path} does not exist")
        fd, inode = self.paths[path]
        yield PinnedNamespace(fd, inode)

    def inode(self, path: str) -> int | None:
        entry = self.paths.get(path)
        return entry[1] if entry else None
