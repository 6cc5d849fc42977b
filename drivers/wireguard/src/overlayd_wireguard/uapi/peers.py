"""Desired peer configuration and the minimal UAPI peer operations reaching it."""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from overlayd.errors import Conflict
from overlayd.errors import InvalidRequest
from overlayd_wireguard.keys import PresharedKey
from overlayd_wireguard.keys import validate_key
from overlayd_wireguard.uapi.protocol import U16
from overlayd_wireguard.uapi.protocol import PeerOp
from overlayd_wireguard.uapi.protocol import PeerState
from overlayd_wireguard.uapi.protocol import check_range
from overlayd_wireguard.uapi.protocol import normalize_allowed_ip
from overlayd_wireguard.uapi.protocol import normalize_endpoint

__all__ = ["PeerConfig", "diff_peers"]


# --------------------------------------------------------------------------- diff


@dataclass(frozen=True)
class PeerConfig:
    """The desired configuration of one peer (input of :func:`diff_peers`)."""

    public_key: str
    allowed_ips: tuple[str, ...] = ()
    #: None = leave whatever the device has (UAPI cannot clear an endpoint).
    endpoint: str | None = None
    #: None = leave; 0 = off.
    persistent_keepalive_interval: int | None = None
    #: None = no preshared key.
    preshared_key: PresharedKey | None = None

    def __post_init__(self) -> None:
        validate_key(self.public_key, "peer public key")
        if isinstance(cast("object", self.allowed_ips), str):
            raise InvalidRequest("allowed_ips must be a sequence of CIDRs, not a str")
        norm: list[str] = []
        for a in self.allowed_ips:
            n = normalize_allowed_ip(a)
            if n not in norm:
                norm.append(n)
        object.__setattr__(self, "allowed_ips", tuple(norm))
        if self.endpoint is not None:
            object.__setattr__(self, "endpoint", normalize_endpoint(self.endpoint))
        if self.persistent_keepalive_interval is not None:
            check_range(self.persistent_keepalive_interval, U16, "persistent keepalive")
        if self.preshared_key is not None and self.preshared_key.is_zero():
            object.__setattr__(self, "preshared_key", None)

    @classmethod
    def from_state(cls, state: PeerState) -> PeerConfig:
        """The configuration reproducing ``state`` (to re-apply after a restart)."""
        return cls(
            public_key=state.public_key,
            allowed_ips=state.allowed_ips,
            endpoint=state.endpoint,
            persistent_keepalive_interval=state.persistent_keepalive_interval,
            preshared_key=state.preshared_key,
        )

    def create_op(self, *, replace_allowed_ips: bool = True) -> PeerOp:
        """The operation that creates (or fully overwrites) this peer.

        ``replace_allowed_ips=False`` for a peer the device does not have yet:
        it has no allowed IPs to replace.
        """
        return PeerOp(
            public_key=self.public_key,
            preshared_key=self.preshared_key,
            endpoint=self.endpoint,
            persistent_keepalive_interval=self.persistent_keepalive_interval,
            replace_allowed_ips=replace_allowed_ips,
            allowed_ips=self.allowed_ips,
        )


def _check_desired(desired: Sequence[PeerConfig]) -> None:
    keys: set[str] = set()
    owners: dict[str, str] = {}
    for p in desired:
        if p.public_key in keys:
            raise InvalidRequest(f"peer {p.public_key} is listed twice")
        keys.add(p.public_key)
        for a in p.allowed_ips:
            other = owners.setdefault(a, p.public_key)
            if other != p.public_key:
                raise Conflict(
                    f"allowed IP {a} is claimed by peers {other} and {p.public_key}; "
                    "a prefix can route to one peer only"
                )


def diff_peers(
    desired: Iterable[PeerConfig],
    current: Iterable[PeerState],
    *,
    update_only: bool = True,
) -> tuple[PeerOp, ...]:
    """The minimal peer operations turning ``current`` into ``desired``.

    Removals come first, then updates of existing peers (``update_only``), then new
    peers. Unchanged peers produce nothing. A changed allowed-IP list is sent as an
    append when only prefixes were added, else as ``replace_allowed_ips`` plus the
    full list (single-prefix removal is not available on Debian 12,
    docs/reference/wireguard.rst §1).
    Pass ``update_only=False`` for boringtun, which rejects that key.
    """
    want = list(desired)
    _check_desired(want)
    have = {p.public_key: p for p in current}
    want_keys = {p.public_key for p in want}
    removes = [PeerOp(public_key=k, remove=True) for k in sorted(have.keys() - want_keys)]
    updates: list[PeerOp] = []
    adds: list[PeerOp] = []
    for p in want:
        cur = have.get(p.public_key)
        if cur is None:
            adds.append(p.create_op(replace_allowed_ips=False))
            continue
        psk: PresharedKey | None = None
        if p.preshared_key != cur.preshared_key:
            psk = p.preshared_key or PresharedKey.none()
        endpoint = p.endpoint if p.endpoint not in (None, cur.endpoint) else None
        keepalive = (
            p.persistent_keepalive_interval
            if p.persistent_keepalive_interval not in (None, cur.persistent_keepalive_interval)
            else None
        )
        cur_ips = set(cur.allowed_ips)
        want_ips = set(p.allowed_ips)
        replace = False
        add_ips: tuple[str, ...] = ()
        if want_ips != cur_ips:
            if cur_ips <= want_ips:
                add_ips = tuple(a for a in p.allowed_ips if a not in cur_ips)
            else:
                replace = True
                add_ips = p.allowed_ips
        if psk is None and endpoint is None and keepalive is None and not (replace or add_ips):
            continue
        updates.append(
            PeerOp(
                public_key=p.public_key,
                update_only=update_only,
                preshared_key=psk,
                endpoint=endpoint,
                persistent_keepalive_interval=keepalive,
                replace_allowed_ips=replace,
                allowed_ips=add_ips,
            )
        )
    return (*removes, *updates, *adds)
