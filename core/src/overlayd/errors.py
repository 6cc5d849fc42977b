"""Exceptions raised by overlayd.

Every message is a complete sentence a person can act on: the IPC server sends
``str(exc)`` to clients as ``err {message}``.

::

    OverlaydError
    ├── InvalidRequest            bad input: malformed CIDR, unknown service, wrong state
    │   ├── NotFound              a named object (service, handle, peer, pool) does not exist
    │   └── Conflict              the request contradicts existing state
    ├── NotSupported              a capability no loaded driver provides
    ├── NoDriverError             no driver answered a dispatching hook
    ├── ConfigError               invalid configuration / driver loading failure
    ├── AllocationError           IPAM refused
    │   └── PoolExhausted         no free address / subnet / port left
    ├── DriverError               a driver failed (cause kept as __cause__)
    │   ├── DeviceError
    │   ├── PeerError
    │   ├── AttachError
    │   ├── DnsError
    │   └── NatError
    ├── StateError                the durable store failed
    └── TeardownError             teardown finished but some steps failed (aggregate)
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "QUOTE_LIMIT",
    "AllocationError",
    "AttachError",
    "ConfigError",
    "Conflict",
    "DeviceError",
    "DnsError",
    "DriverError",
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
    "clip",
    "quote",
]


class OverlaydError(Exception):
    """Base class of every error overlayd raises on purpose.

    When the failed operation could not undo every step it had already done,
    ``rollback_failures`` names them (``"<step>: <error>"``) and ``str(exc)``
    (the client's ``err`` message) ends with them: the host may hold leftovers.
    """

    #: Short machine-readable code, sent to clients that asked for codes (``hello``).
    code = "error"
    #: Steps whose undo failed while rolling this operation back.
    rollback_failures: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = super().__str__()
        if self.rollback_failures:
            text += "; rolling back also failed, so objects may be left behind: " + "; ".join(
                self.rollback_failures
            )
        return text


class InvalidRequest(OverlaydError):
    """The request is malformed or not valid in the current state; nothing changed."""

    code = "invalid"


class NotFound(InvalidRequest):
    """A named object (service, handle, peer, pool, device) does not exist."""

    code = "not_found"


class Conflict(InvalidRequest):
    """The request contradicts existing state (e.g. a different mode)."""

    code = "conflict"


class NotSupported(OverlaydError):
    """The capability is not provided by any loaded driver or not implemented."""

    code = "not_supported"


class NoDriverError(NotSupported):
    """No loaded driver answered a dispatching hook."""

    code = "no_driver"

    def __init__(self, op: str, kind: str, *, loaded: tuple[str, ...] | None = None) -> None:
        self.op = op
        self.kind = kind
        if loaded is None:
            what = f"no loaded driver handles {op} for {kind!r}"
        else:
            # Owner dispatch: the object names its driver and that driver is absent.
            have = ", ".join(loaded) or "none"
            what = (
                f"{op}: the object belongs to driver {kind!r}, which is not loaded (loaded: {have})"
            )
        super().__init__(f"{what}; check the `drivers` list in the configuration")


class ConfigError(OverlaydError):
    """The configuration is invalid or a configured driver cannot be loaded."""

    code = "config"


class AllocationError(OverlaydError):
    """IPAM refused an allocation, reservation or release."""

    code = "allocation"


class PoolExhausted(AllocationError):
    """No free address, subnet or port is left in a pool."""

    code = "exhausted"


class DriverError(OverlaydError):
    """A driver failed while performing an operation; ``__cause__`` keeps the reason."""

    code = "driver"

    def __init__(self, message: str, *, op: str = "", driver: str = "") -> None:
        self.op = op
        self.driver = driver
        super().__init__(message)


class DeviceError(DriverError):
    """Creating, deleting or reading a network device failed."""


class PeerError(DriverError):
    """Applying or reading WireGuard peers failed."""


class AttachError(DriverError):
    """Attaching or detaching a workload failed."""


class DnsError(DriverError):
    """The DNS server or an endpoint's resolver configuration failed."""


class NatError(DriverError):
    """Programming NAT (masquerade, port mappings, traversal) failed."""


class StateError(OverlaydError):
    """The durable state store could not be read or written."""

    code = "state"


class TeardownError(OverlaydError):
    """A teardown ran every step but some failed; ``errors`` lists them in order."""

    code = "teardown"

    def __init__(self, what: str, errors: Sequence[BaseException]) -> None:
        self.errors = list(errors)
        detail = "; ".join(str(e) for e in self.errors)
        super().__init__(f"{what} finished with {len(self.errors)} error(s): {detail}")


#: How many characters of a client's value an error message quotes.
QUOTE_LIMIT = 64


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters.

    Messages quote what the client sent so that it can see the problem, but a
    megabyte-long op name or address must not come back whole in the answer
    (nor fill the log): longer values are cut and their length is given.
    """
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    if len(text) > limit:
        return f"{text[:limit]}... ({len(text)} characters)"
    return text
