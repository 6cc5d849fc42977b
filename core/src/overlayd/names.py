"""Interface names: ZLayer-compatible link names and overlayd's own veth names.

Linux limits interface names to ``IFNAMSIZ - 1 = 15`` bytes. ZLayer derives the
names of the links it owns with ``make_interface_name`` (zlayer-agent
``overlay_manager.rs`` and its private copy in zlayer-overlayd); overlayd must
produce byte-identical names so that a ZLayer daemon and overlayd agree on
which link is which (``SetupGlobalOverlay`` answers with the name, and the
ZLayer daemon sweeps ``zl-*`` links at boot).

The rule, copied as a fact (not code) from ZLayer:

* the candidate is ``"zl-" + "-".join(parts)``, plus ``"-" + suffix`` when the
  suffix is non-empty; when it fits in 15 bytes it is the name;
* otherwise every part and then the suffix are fed to Rust's
  ``std::collections::hash_map::DefaultHasher`` (SipHash-1-3, keys ``(0, 0)``)
  through ``str::hash``, which writes the UTF-8 bytes followed by one ``0xFF``
  byte; the ``u64`` result is formatted with ``{:x}`` (lowercase, *no* zero
  padding) and truncated to the byte budget that is left.

overlayd's own veth host-side names do not go through ZLayer's rule (see
:func:`veth_host_name`): they use the ``zv`` prefix, and links waiting for
batched deletion the ``zx`` prefix, so that reconcile recognises them without
confusing them with ZLayer's ``zl-`` links. The container end of a veth is
created directly inside the workload's namespace with its final name
(``eth0``/``eth1``), so it never needs a temporary host-side name.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Final

__all__ = [
    "MAX_IFNAME",
    "TOMBSTONE_PREFIX",
    "VETH_HOST_PREFIX",
    "check_attachment_id",
    "check_workload_ifname",
    "dedicated_device_name",
    "global_device_name",
    "interface_name",
    "is_overlayd_veth",
    "is_tombstone",
    "service_bridge_name",
    "service_overlay_name",
    "siphash13",
    "tombstone_name",
    "veth_host_name",
    "veth_names",
]

#: Longest interface name Linux accepts, in bytes (``IFNAMSIZ - 1``).
MAX_IFNAME: Final = 15
#: Prefix of the host end of every veth overlayd creates.
VETH_HOST_PREFIX: Final = "zv"
#: Prefix of links renamed for deferred, batched deletion.
TOMBSTONE_PREFIX: Final = "zx"

_MASK: Final = 0xFFFF_FFFF_FFFF_FFFF
_ZL_PREFIX: Final = "zl-"
# Hex digits after "zv"/"zp": 15 - 2 = 13 digits = 52 bits of the hash.
_VETH_HEX: Final = MAX_IFNAME - len(VETH_HOST_PREFIX)


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    """SipHash-1-3 of ``data`` (what Rust's ``DefaultHasher`` computes today)."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def sipround() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    length = len(data)
    whole = length - length % 8
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        sipround()  # c = 1 compression round
        v0 ^= m
    # Last block: the remaining bytes, with the message length (mod 256) in the
    # top byte.
    m = int.from_bytes(data[whole:], "little") | ((length & 0xFF) << 56)
    v3 ^= m
    sipround()
    v0 ^= m
    v2 ^= 0xFF
    for _ in range(3):  # d = 3 finalisation rounds
        sipround()
    return v0 ^ v1 ^ v2 ^ v3


def _rust_str_hash_input(strings: Sequence[str]) -> bytes:
    # Rust's `impl Hash for str` writes the bytes then a 0xFF terminator, so that
    # ("ab", "c") and ("a", "bc") hash differently; SipHasher streams the writes.
    return b"".join(s.encode() + b"\xff" for s in strings)


def interface_name(parts: Sequence[str], suffix: str) -> str:
    """Return ZLayer's ``make_interface_name(parts, suffix)``, at most 15 bytes.

    Lengths are counted in UTF-8 bytes as Rust's ``str::len`` does. The hashed
    fallback slices an ASCII hex string, so it never splits a character.
    """
    candidate = _ZL_PREFIX + "-".join(parts)
    if suffix:
        candidate = f"{candidate}-{suffix}"
    if len(candidate.encode()) <= MAX_IFNAME:
        return candidate
    digest = format(siphash13(_rust_str_hash_input([*parts, suffix])), "x")
    if suffix:
        hash_budget = MAX_IFNAME - len(_ZL_PREFIX) - 1 - len(suffix.encode())
        if hash_budget > 0:
            return f"{_ZL_PREFIX}{digest[:hash_budget]}-{suffix}"
        # NOTE: ZLayer drops a suffix that leaves no room for the hash and
        # hashes everything (the suffix still feeds the hash above).
    return _ZL_PREFIX + digest[: MAX_IFNAME - len(_ZL_PREFIX)]


def global_device_name(deployment: str, instance_id: str) -> str:
    """Name of the global overlay device (ZLayer ``SetupGlobalOverlay``)."""
    return interface_name([deployment, instance_id], "g")


def service_overlay_name(deployment: str, instance_id: str, service: str) -> str:
    """Name of a service's overlay (WireGuard) device, ZLayer suffix ``s``."""
    return interface_name([deployment, instance_id, service], "s")


def service_bridge_name(deployment: str, instance_id: str, service: str) -> str:
    """Name of a service's Linux bridge."""
    return interface_name([deployment, instance_id, service], "b")


def dedicated_device_name(deployment: str, instance_id: str, service: str) -> str:
    """Name of a service's dedicated device."""
    return interface_name([deployment, instance_id, service], "d")


@functools.lru_cache(maxsize=256)
def veth_host_name(attachment_key: str, index: int) -> str:
    """Deterministic host-side veth name for interface ``index`` of an attachment.

    Scheme: ``"zv"`` followed by the 13 low hex digits (zero padded) of
    SipHash-1-3 (keys 0, 0) over ``attachment_key`` and ``index`` in decimal,
    each framed like Rust's ``str::hash`` (bytes then ``0xFF``). Always exactly
    15 ASCII bytes, so reconcile recognises overlayd's veths by prefix and
    shape (:func:`is_overlayd_veth`), and the same attachment always maps to
    the same names: a re-attach finds the old pair instead of leaking a second.
    52 bits of hash make a collision between two live attachments on one node
    negligible (about 1e-8 with 10 000 attachments). The last names are kept:
    an attach names its host ends when it plans and again when it plugs in,
    and the hash, in Python, costs tens of microseconds each time.
    """
    if index < 0:
        raise ValueError(f"interface index must be >= 0, got {index}")
    digest = siphash13(_rust_str_hash_input([attachment_key, str(index)]))
    hex13 = format(digest & ((1 << (4 * _VETH_HEX)) - 1), f"0{_VETH_HEX}x")
    return VETH_HOST_PREFIX + hex13


def veth_names(attachment_key: str, count: int) -> list[str]:
    """Host-side veth names of interfaces ``0 .. count-1`` of an attachment."""
    return [veth_host_name(attachment_key, i) for i in range(count)]


def tombstone_name(token: int) -> str:
    """Name a link takes while it waits for batched deletion (``zx`` + 13 hex)."""
    return TOMBSTONE_PREFIX + format(token & ((1 << (4 * _VETH_HEX)) - 1), "013x")


def _has_shape(name: str, prefix: str) -> bool:
    return (
        len(name) == MAX_IFNAME
        and name.startswith(prefix)
        and all(c in "0123456789abcdef" for c in name[len(prefix) :])
    )


def is_overlayd_veth(name: str) -> bool:
    """Whether ``name`` has the shape of a veth host end overlayd creates."""
    return _has_shape(name, VETH_HOST_PREFIX)


def is_tombstone(name: str) -> bool:
    """Whether ``name`` is a link overlayd renamed for deferred deletion."""
    return _has_shape(name, TOMBSTONE_PREFIX)


#: A CNI container id or network name: an alphanumeric first character, then
#: alphanumerics, ``_``, ``.`` and ``-`` (the CNI specification's rule).
_ATTACHMENT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_workload_ifname(name: str) -> str:
    """Return ``name`` if Linux accepts it as an interface name, else raise ``ValueError``.

    At most :data:`MAX_IFNAME` bytes, not empty, not ``.`` or ``..``, and no
    ``/``, ``:`` or whitespace (the kernel's ``dev_valid_name`` plus the CNI
    specification's ban on ``:``).
    """
    problem = ""
    if not name or name in (".", ".."):
        problem = "it is empty, '.' or '..'"
    elif len(name.encode()) > MAX_IFNAME:
        problem = f"it is longer than {MAX_IFNAME} bytes"
    elif any(c in "/:" or c.isspace() for c in name):
        problem = "it contains '/', ':' or whitespace"
    if problem:
        raise ValueError(f"{name!r} is not a valid interface name: {problem}")
    return name


def check_attachment_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid CNI container id or network name (``kind``).

    Raises ``ValueError`` naming ``kind`` otherwise. The rule keeps attachment
    keys built from these values unambiguous (no ``:`` inside).
    """
    if len(value) > 1024 or not _ATTACHMENT_ID.fullmatch(value):
        raise ValueError(
            f"{kind} {value!r} is invalid: it must start with a letter or digit, "
            "continue with letters, digits, '_', '.' or '-', and be at most 1024 characters"
        )
    return value
