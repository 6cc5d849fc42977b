"""How a batch of peer changes becomes a device's peer set: one merge for everyone.

The engine records the peers it asked for, and each driver that keeps peers
(the ``wireguard`` driver's cache, the ``fake`` driver's device) tracks what
the device holds. Both must come out of a batch of
:class:`~overlayd.model.PeerChange` with the same answer, or the recorded state
drifts away from the device's. So the rules live here, once, and every caller
uses :func:`merge` (directly or through :class:`PeerTable`):

* changes apply in order; a later change of a peer sees the earlier ones;
* ``remove`` deletes the peer;
* otherwise the peer is created when absent, ``endpoint`` and
  ``persistent_keepalive_secs`` replace the old values when given,
  ``allowed_ips`` (when not ``None``) replaces the whole list,
  ``add_allowed_ips`` appends what is missing and ``remove_allowed_ips`` drops;
  a prefix is listed once per peer, in first-seen order;
* a change that only edits the allowed IPs of a peer that does not exist is
  refused (:class:`~overlayd.errors.NotFound`): it is a stale edit, not a new
  peer;
* **an allowed IP routes to exactly one peer**: when a peer is given a prefix
  another peer holds, the prefix moves to the peer named last, and the other
  peer loses it. This is what WireGuard itself does (the kernel and
  wireguard-go move an exact prefix to the peer that sets it), so a batch
  giving peers A and B the same /24 leaves it on B only, in the records as on
  the device.

The merge is generic over how a caller spells an allowed IP (the engine and
the fake keep :class:`ipaddress.IPv4Network` objects, the ``wireguard`` driver
normalised strings): ``ip`` converts a change's networks into the caller's
form, and equality of that form is what "the same prefix" means. Its cost is
proportional to the batch and the prefixes it touches, never to the number of
peers the device holds.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Hashable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Generic
from typing import TypeVar

from overlayd.errors import NotFound
from overlayd.model import IPNetwork
from overlayd.model import PeerChange
from overlayd.model import PeerConfig

__all__ = ["Merge", "Peer", "PeerTable", "change_from", "merge"]

A = TypeVar("A", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Peer(Generic[A]):
    """One peer's configuration, in the caller's spelling of allowed IPs."""

    public_key: str
    endpoint: str | None = None
    allowed_ips: tuple[A, ...] = ()
    persistent_keepalive_secs: int = 0


@dataclass(slots=True)
class Merge(Generic[A]):
    """The outcome of a batch: only what changed.

    ``peers`` holds the new configuration of every peer whose configuration
    the batch changes (``None`` for a removed peer), in the order they were
    first touched; a peer that lost a prefix to a later peer is among them.
    ``owners`` maps every prefix whose holder changed to its new holder
    (``None``: nobody holds it any more). ``gained`` are prefixes nobody held
    before and someone holds now, ``lost`` those held before and by nobody now.
    """

    peers: dict[str, Peer[A] | None] = field(default_factory=dict)
    owners: dict[A, str | None] = field(default_factory=dict)
    gained: set[A] = field(default_factory=set)
    lost: set[A] = field(default_factory=set)


def merge(
    changes: Iterable[PeerChange],
    current: Callable[[str], Peer[A] | None],
    owner: Callable[[A], str | None],
    ip: Callable[[IPNetwork], A],
    *,
    device: str = "the device",
) -> Merge[A]:
    """Merge ``changes`` into a device's peers (see the module docstring for the rules).

    :param current: The peer of a public key on the device before the batch, or ``None``.
    :param owner: The public key holding an allowed IP before the batch, or ``None``.
    :param ip: Converts a change's network into the caller's spelling of an allowed IP.
    :param device: The device's name, for error messages.
    :raises NotFound: a change only edits the allowed IPs of a peer that does not exist.
    """
    out: Merge[A] = Merge()
    peers = out.peers
    owners = out.owners
    before_owner: dict[A, str | None] = {}

    def now(public_key: str) -> Peer[A] | None:
        return peers[public_key] if public_key in peers else current(public_key)

    def holder(prefix: A) -> str | None:
        if prefix in owners:
            return owners[prefix]
        return owner(prefix)

    def set_holder(prefix: A, public_key: str | None) -> None:
        if prefix not in before_owner:
            before_owner[prefix] = owner(prefix)
        owners[prefix] = public_key

    for change in changes:
        pk = change.public_key
        old = now(pk)
        if change.remove:
            if old is not None:
                for prefix in old.allowed_ips:
                    if holder(prefix) == pk:
                        set_holder(prefix, None)
                peers[pk] = None
            elif pk in peers:
                peers[pk] = None
            continue
        if old is None:
            edits_only = change.endpoint is None and change.allowed_ips is None
            if edits_only and (change.add_allowed_ips or change.remove_allowed_ips):
                raise NotFound(f"peer {pk} is not on {device}; add it with add_peer first")
            old = Peer(public_key=pk)
        if change.allowed_ips is not None:
            wanted = [ip(n) for n in change.allowed_ips]
        else:
            wanted = list(old.allowed_ips)
        wanted += [ip(n) for n in change.add_allowed_ips]
        dropped = {ip(n) for n in change.remove_allowed_ips}
        ips: list[A] = []
        seen: set[A] = set()
        for prefix in wanted:
            if prefix not in seen and prefix not in dropped:
                seen.add(prefix)
                ips.append(prefix)
        for prefix in old.allowed_ips:
            if prefix not in seen and holder(prefix) == pk:
                set_holder(prefix, None)
        for prefix in ips:
            previous = holder(prefix)
            if previous is not None and previous != pk:
                # WireGuard routes a prefix to one peer: the one named last wins.
                loser = now(previous)
                if loser is not None:
                    peers[previous] = Peer(
                        public_key=previous,
                        endpoint=loser.endpoint,
                        allowed_ips=tuple(a for a in loser.allowed_ips if a != prefix),
                        persistent_keepalive_secs=loser.persistent_keepalive_secs,
                    )
            if previous != pk:
                set_holder(prefix, pk)
        peers[pk] = Peer(
            public_key=pk,
            endpoint=change.endpoint if change.endpoint is not None else old.endpoint,
            allowed_ips=tuple(ips),
            persistent_keepalive_secs=(
                change.persistent_keepalive_secs
                if change.persistent_keepalive_secs is not None
                else old.persistent_keepalive_secs
            ),
        )
    for prefix, holder_now in list(owners.items()):
        was = before_owner.get(prefix)
        if was == holder_now:
            del owners[prefix]
        elif was is None:
            out.gained.add(prefix)
        elif holder_now is None:
            out.lost.add(prefix)
    # A peer removed in the batch that did not exist before is no change at all.
    for pk in [k for k, v in peers.items() if v is None and current(k) is None]:
        del peers[pk]
    return out


class PeerTable(Mapping[str, PeerConfig]):
    """A device's peers as the engine records them, with the holder of each prefix.

    A read-only mapping of public key to :class:`~overlayd.model.PeerConfig`;
    change it with :meth:`preview` then :meth:`commit` (so a caller can write
    the result durably in between), or :meth:`put` when loading records.
    """

    __slots__ = ("_owner", "_peers", "name", "version")

    def __init__(self, name: str, peers: Iterable[PeerConfig] = ()) -> None:
        self.name = name
        #: Bumped by every change: equal versions of one table hold the same peers,
        #: which a reader can check without comparing them one by one.
        self.version = 0
        self._peers: dict[str, PeerConfig] = {}
        self._owner: dict[IPNetwork, str] = {}
        for peer in peers:
            self.put(peer)

    def __getitem__(self, public_key: str) -> PeerConfig:
        return self._peers[public_key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._peers)

    def __len__(self) -> int:
        return len(self._peers)

    def owner_of(self, prefix: IPNetwork) -> str | None:
        """The public key that holds ``prefix`` (an exact allowed IP), if any."""
        return self._owner.get(prefix)

    def put(self, peer: PeerConfig) -> None:
        """Record ``peer`` as it is (loading stored records; no prefix moves)."""
        old = self._peers.get(peer.public_key)
        if old is not None:
            for prefix in old.allowed_ips:
                if self._owner.get(prefix) == old.public_key:
                    del self._owner[prefix]
        self._peers[peer.public_key] = peer
        for prefix in peer.allowed_ips:
            self._owner[prefix] = peer.public_key
        self.version += 1

    def preview(self, changes: Sequence[PeerChange]) -> Merge[IPNetwork]:
        """What ``changes`` would do, without changing the table."""

        def current(public_key: str) -> Peer[IPNetwork] | None:
            cfg = self._peers.get(public_key)
            if cfg is None:
                return None
            return Peer(
                public_key=cfg.public_key,
                endpoint=cfg.endpoint,
                allowed_ips=cfg.allowed_ips,
                persistent_keepalive_secs=cfg.persistent_keepalive_secs,
            )

        return merge(changes, current, self._owner.get, _same, device=f"device {self.name}")

    def configs(self, result: Merge[IPNetwork]) -> dict[str, PeerConfig | None]:
        """The records ``result`` leaves: a :class:`PeerConfig` per changed peer."""
        return {
            pk: None
            if peer is None
            else PeerConfig.model_construct(
                public_key=pk,
                endpoint=peer.endpoint,
                allowed_ips=peer.allowed_ips,
                persistent_keepalive_secs=peer.persistent_keepalive_secs,
            )
            for pk, peer in result.peers.items()
        }

    def commit(self, result: Merge[IPNetwork]) -> None:
        """Apply a :meth:`preview` result to the table."""
        for pk, cfg in self.configs(result).items():
            if cfg is None:
                self._peers.pop(pk, None)
            else:
                self._peers[pk] = cfg
        for prefix, holder in result.owners.items():
            if holder is None:
                self._owner.pop(prefix, None)
            else:
                self._owner[prefix] = holder
        self.version += 1

    def undo_changes(self, result: Merge[IPNetwork]) -> list[PeerChange]:
        """Changes that put a device back as this table records it, after ``result``.

        Call before :meth:`commit` (for example when writing the records failed
        after the device already took the batch).
        """
        out = [PeerChange(public_key=k, remove=True) for k in result.peers if k not in self]
        out += [change_from(self._peers[k]) for k in result.peers if k in self]
        return out


def _same(net: IPNetwork) -> IPNetwork:
    return net


def change_from(peer: PeerConfig) -> PeerChange:
    """The change that sets a device's peer to ``peer`` (every field, full allowed IPs)."""
    return PeerChange(
        public_key=peer.public_key,
        endpoint=peer.endpoint,
        persistent_keepalive_secs=peer.persistent_keepalive_secs,
        allowed_ips=peer.allowed_ips,
    )
