"""HRESULT codes returned by HCN and the typed exceptions they turn into.

Every code and its meaning comes from docs/reference/hcn.rst §3 (MSDOC ``HCNHResult.md``,
the Windows SDK ``winerror.h`` port, and the generic Win32 codes seen in the issues
listed there). Each exception carries the HRESULT (``hresult``, ``hresult_hex``),
the symbolic name, the HCN function that failed and the raw ErrorRecord text.

::

    DriverError
    └── HcnError
        ├── HcnNotFoundError          0x803B0001, 0x803B0002, 0x80070490
        ├── HcnAlreadyExistsError     0x803B0010, 0x800700B7, 0x803B0012-14, 0x803B002B
        ├── HcnAccessDeniedError      0x80070005
        ├── HcnInvalidJsonError       0x803B001B, 0x803B001C
        ├── HcnSubnetConflictError    0x803B0030, 0x803B0032, 0x803B0033
        ├── HcnPolicyInvalidError     0x803B000D, 0x803B000E
        ├── HcnInvalidConfigError     0x80070057, 0x803B000A-0C
        ├── HcnAddressError           0x803B001E, 0x803B002F
        ├── HcnInUseError             0x803B002C
        ├── HcnUnavailableError       0x800706BA, 0x800706D9, 0x803B0020
        ├── HcnTimeoutError           0x800705B4 (our deadline expired)
        └── HcnOtherError             anything else
"""

from __future__ import annotations

import json
from typing import Final

from overlayd.errors import DriverError

__all__ = [
    "EPT_S_NOT_REGISTERED",
    "ERROR_ALREADY_EXISTS",
    "ERROR_NOT_FOUND",
    "ERROR_TIMEOUT",
    "E_ACCESSDENIED",
    "E_FAIL",
    "E_HANDLE",
    "E_INVALIDARG",
    "E_NOTIMPL",
    "HCN_E_ADDR_INVALID_OR_RESERVED",
    "HCN_E_ENDPOINT_ALREADY_ATTACHED",
    "HCN_E_ENDPOINT_NAMESPACE_ALREADY_EXISTS",
    "HCN_E_ENDPOINT_NOT_ATTACHED",
    "HCN_E_ENDPOINT_NOT_FOUND",
    "HCN_E_ENTITY_HAS_REFERENCES",
    "HCN_E_INVALID_ENDPOINT",
    "HCN_E_INVALID_IP",
    "HCN_E_INVALID_IP_SUBNET",
    "HCN_E_INVALID_JSON",
    "HCN_E_INVALID_JSON_REFERENCE",
    "HCN_E_INVALID_NETWORK",
    "HCN_E_INVALID_NETWORK_TYPE",
    "HCN_E_INVALID_POLICY",
    "HCN_E_INVALID_POLICY_TYPE",
    "HCN_E_INVALID_PREFIX",
    "HCN_E_INVALID_SUBNET",
    "HCN_E_MANAGER_STOPPED",
    "HCN_E_NETWORK_ALREADY_EXISTS",
    "HCN_E_NETWORK_NOT_FOUND",
    "HCN_E_POLICY_ALREADY_EXISTS",
    "HCN_E_PORT_ALREADY_EXISTS",
    "HRESULT_NAMES",
    "RPC_S_SERVER_UNAVAILABLE",
    "HcnAccessDeniedError",
    "HcnAddressError",
    "HcnAlreadyExistsError",
    "HcnError",
    "HcnInUseError",
    "HcnInvalidConfigError",
    "HcnInvalidJsonError",
    "HcnNotFoundError",
    "HcnOtherError",
    "HcnPolicyInvalidError",
    "HcnSubnetConflictError",
    "HcnTimeoutError",
    "HcnUnavailableError",
    "error_from_hresult",
    "error_record",
    "hresult_failed",
    "hresult_from_win32",
]


def hresult_from_win32(code: int) -> int:
    """``HRESULT_FROM_WIN32``: facility 7 with the failure bit (docs/reference/hcn.rst §3)."""
    return 0x80070000 | (code & 0xFFFF)


def hresult_failed(hresult: int) -> bool:
    """True when bit 31 (severity) is set (docs/reference/hcn.rst §3)."""
    return bool(hresult & 0x80000000)


# HCN facility 0x3B codes (docs/reference/hcn.rst §3 table; MSDOC HCNHResult.md).
HCN_E_NETWORK_NOT_FOUND: Final = 0x803B0001
HCN_E_ENDPOINT_NOT_FOUND: Final = 0x803B0002
HCN_E_INVALID_NETWORK: Final = 0x803B000A
HCN_E_INVALID_NETWORK_TYPE: Final = 0x803B000B
HCN_E_INVALID_ENDPOINT: Final = 0x803B000C
HCN_E_INVALID_POLICY: Final = 0x803B000D
HCN_E_INVALID_POLICY_TYPE: Final = 0x803B000E
HCN_E_NETWORK_ALREADY_EXISTS: Final = 0x803B0010
HCN_E_POLICY_ALREADY_EXISTS: Final = 0x803B0012
HCN_E_PORT_ALREADY_EXISTS: Final = 0x803B0013
HCN_E_ENDPOINT_ALREADY_ATTACHED: Final = 0x803B0014
HCN_E_INVALID_JSON: Final = 0x803B001B
HCN_E_INVALID_JSON_REFERENCE: Final = 0x803B001C
HCN_E_INVALID_IP: Final = 0x803B001E
HCN_E_MANAGER_STOPPED: Final = 0x803B0020
HCN_E_ENDPOINT_NAMESPACE_ALREADY_EXISTS: Final = 0x803B002B
HCN_E_ENTITY_HAS_REFERENCES: Final = 0x803B002C
HCN_E_ADDR_INVALID_OR_RESERVED: Final = 0x803B002F
HCN_E_INVALID_PREFIX: Final = 0x803B0030
HCN_E_INVALID_SUBNET: Final = 0x803B0032
HCN_E_INVALID_IP_SUBNET: Final = 0x803B0033
HCN_E_ENDPOINT_NOT_ATTACHED: Final = 0x803B0034

# Generic codes seen from HCN (docs/reference/hcn.rst §3 second table).
ERROR_NOT_FOUND: Final = hresult_from_win32(1168)  # 0x80070490 "Element not found."
ERROR_ALREADY_EXISTS: Final = hresult_from_win32(183)  # 0x800700B7
ERROR_TIMEOUT: Final = hresult_from_win32(1460)  # 0x800705B4, used for our own deadline
E_INVALIDARG: Final = 0x80070057
E_ACCESSDENIED: Final = 0x80070005
E_HANDLE: Final = 0x80070006
E_NOTIMPL: Final = 0x80004001
E_FAIL: Final = 0x80004005
RPC_S_SERVER_UNAVAILABLE: Final = 0x800706BA
EPT_S_NOT_REGISTERED: Final = 0x800706D9

#: Symbolic name and Microsoft's description of every code we name (docs/reference/hcn.rst §3).
HRESULT_NAMES: Final[dict[int, tuple[str, str]]] = {
    HCN_E_NETWORK_NOT_FOUND: ("HCN_E_NETWORK_NOT_FOUND", "The network was not found."),
    HCN_E_ENDPOINT_NOT_FOUND: (
        "HCN_E_ENDPOINT_NOT_FOUND",
        "The endpoint was not found.",
    ),
    0x803B0003: (
        "HCN_E_LAYER_NOT_FOUND",
        "The network's underlying layer was not found.",
    ),
    0x803B0004: ("HCN_E_SWITCH_NOT_FOUND", "The virtual switch was not found."),
    0x803B0005: (
        "HCN_E_SUBNET_NOT_FOUND",
        "The network does not have a subnet for this endpoint.",
    ),
    0x803B0006: ("HCN_E_ADAPTER_NOT_FOUND", "An adapter was not found."),
    0x803B0007: ("HCN_E_PORT_NOT_FOUND", "The switch-port was not found."),
    0x803B0008: ("HCN_E_POLICY_NOT_FOUND", "An expected policy was not found."),
    HCN_E_INVALID_NETWORK: (
        "HCN_E_INVALID_NETWORK",
        "The provided network configuration is invalid or missing parameters.",
    ),
    HCN_E_INVALID_NETWORK_TYPE: ("HCN_E_INVALID_NETWORK_TYPE", "Invalid network type."),
    HCN_E_INVALID_ENDPOINT: (
        "HCN_E_INVALID_ENDPOINT",
        "The provided endpoint configuration is invalid or missing parameters.",
    ),
    HCN_E_INVALID_POLICY: (
        "HCN_E_INVALID_POLICY",
        "The provided policy configuration is invalid or missing parameters.",
    ),
    HCN_E_INVALID_POLICY_TYPE: ("HCN_E_INVALID_POLICY_TYPE", "Invalid policy type."),
    HCN_E_NETWORK_ALREADY_EXISTS: (
        "HCN_E_NETWORK_ALREADY_EXISTS",
        "A network with this name already exists.",
    ),
    HCN_E_POLICY_ALREADY_EXISTS: (
        "HCN_E_POLICY_ALREADY_EXISTS",
        "Policy information already exists on this object.",
    ),
    HCN_E_PORT_ALREADY_EXISTS: (
        "HCN_E_PORT_ALREADY_EXISTS",
        "The specified port already exists.",
    ),
    HCN_E_ENDPOINT_ALREADY_ATTACHED: (
        "HCN_E_ENDPOINT_ALREADY_ATTACHED",
        "This endpoint is already attached to the switch.",
    ),
    0x803B0015: ("HCN_E_REQUEST_UNSUPPORTED", "The specified request is unsupported."),
    0x803B0019: (
        "HCN_E_GUID_CONVERSION_FAILURE",
        "Failed to interpret a parameter as a GUID.",
    ),
    HCN_E_INVALID_JSON: ("HCN_E_INVALID_JSON", "Invalid JSON document string."),
    HCN_E_INVALID_JSON_REFERENCE: (
        "HCN_E_INVALID_JSON_REFERENCE",
        "The reference is invalid in the JSON document.",
    ),
    HCN_E_INVALID_IP: (
        "HCN_E_INVALID_IP",
        "IP address is either invalid or not part of any configured subnet(s).",
    ),
    HCN_E_MANAGER_STOPPED: (
        "HCN_E_MANAGER_STOPPED",
        "Operation cannot be performed while service is stopping.",
    ),
    HCN_E_ENDPOINT_NAMESPACE_ALREADY_EXISTS: (
        "HCN_E_ENDPOINT_NAMESPACE_ALREADY_EXISTS",
        "This endpoint is already part of a network namespace.",
    ),
    HCN_E_ENTITY_HAS_REFERENCES: (
        "HCN_E_ENTITY_HAS_REFERENCES",
        "The object cannot be removed while it still has references.",
    ),
    HCN_E_ADDR_INVALID_OR_RESERVED: (
        "HCN_E_ADDR_INVALID_OR_RESERVED",
        "An address provided is invalid or reserved.",
    ),
    HCN_E_INVALID_PREFIX: ("HCN_E_INVALID_PREFIX", "The prefix provided is invalid."),
    HCN_E_INVALID_SUBNET: (
        "HCN_E_INVALID_SUBNET",
        "The subnet configuration is invalid.",
    ),
    HCN_E_INVALID_IP_SUBNET: (
        "HCN_E_INVALID_IP_SUBNET",
        "The IP subnet configuration is invalid.",
    ),
    HCN_E_ENDPOINT_NOT_ATTACHED: (
        "HCN_E_ENDPOINT_NOT_ATTACHED",
        "The endpoint must be attached to complete the operation.",
    ),
    ERROR_NOT_FOUND: ("ERROR_NOT_FOUND", "Element not found."),
    ERROR_ALREADY_EXISTS: (
        "ERROR_ALREADY_EXISTS",
        "Cannot create a file when that file already exists.",
    ),
    ERROR_TIMEOUT: (
        "ERROR_TIMEOUT",
        "This operation returned because the timeout period expired.",
    ),
    E_INVALIDARG: ("E_INVALIDARG", "The parameter is incorrect."),
    E_ACCESSDENIED: ("E_ACCESSDENIED", "Access is denied."),
    E_HANDLE: ("E_HANDLE", "The handle is invalid."),
    E_NOTIMPL: ("E_NOTIMPL", "Not implemented."),
    E_FAIL: ("E_FAIL", "Unspecified error."),
    RPC_S_SERVER_UNAVAILABLE: (
        "RPC_S_SERVER_UNAVAILABLE",
        "The RPC server is unavailable.",
    ),
    EPT_S_NOT_REGISTERED: (
        "EPT_S_NOT_REGISTERED",
        "There are no more endpoints available from the endpoint mapper.",
    ),
}


def error_record(hresult: int, message: str | None = None) -> str:
    """The ErrorRecord JSON HCN writes on failure (docs/reference/hcn.rst §3, MSSCN "ErrorSchema").

    ``{"Success":false,"Error":"<message> ","ErrorCode":<unsigned decimal>}``; the
    service's message carries a trailing space (sig-windows-tools#249).
    """
    text = message if message is not None else HRESULT_NAMES.get(hresult, ("", "Failure."))[1]
    return json.dumps(
        {"Success": False, "Error": text + " ", "ErrorCode": hresult & 0xFFFFFFFF},
        separators=(",", ":"),
    )


class HcnError(DriverError):
    """An HCN function failed; ``hresult`` says how, ``error_record`` is HCN's text."""

    def __init__(self, function: str, hresult: int, record: str = "") -> None:
        #: The HRESULT as an unsigned 32-bit int.
        self.hresult = hresult & 0xFFFFFFFF
        #: The HCN function that failed (``HcnCreateNetwork``, ...).
        self.function = function
        #: The raw ErrorRecord string (JSON or empty).
        self.error_record = record
        name, description = HRESULT_NAMES.get(self.hresult, ("", ""))
        #: Symbolic name (``HCN_E_NETWORK_NOT_FOUND``) or "" for an unnamed code.
        self.name = name
        detail = _record_message(record) or description
        label = f"{self.hresult_hex} ({name})" if name else self.hresult_hex
        message = f"{function} failed with HRESULT {label}"
        if detail:
            message += f": {detail.rstrip().rstrip('.')}."
        else:
            message += "."
        super().__init__(message, op=function, driver="hcn")

    @property
    def hresult_hex(self) -> str:
        """The HRESULT as ``0x803B0001``."""
        return f"0x{self.hresult:08X}"


def _record_message(record: str) -> str:
    """The ``Error`` text of an ErrorRecord, or the raw record when it is not JSON."""
    if not record:
        return ""
    try:
        parsed = json.loads(record)
    except ValueError:
        return record.strip()
    if isinstance(parsed, dict):
        error = parsed.get("Error")
        if isinstance(error, str):
            return error.strip()
    return record.strip()


class HcnNotFoundError(HcnError):
    """The network, endpoint or namespace does not exist."""


class HcnAlreadyExistsError(HcnError):
    """An object with this name, GUID, port or attachment already exists."""


class HcnAccessDeniedError(HcnError):
    """The caller is not an Administrator / Hyper-V Administrator (docs/reference/hcn.rst §3)."""


class HcnInvalidJsonError(HcnError):
    """HCN could not parse the settings or query document."""


class HcnSubnetConflictError(HcnError):
    """A subnet or prefix is invalid or overlaps one that is already in use."""


class HcnPolicyInvalidError(HcnError):
    """A policy has an unknown type or malformed settings."""


class HcnInvalidConfigError(HcnError):
    """The network or endpoint configuration is invalid (bad argument, type)."""


class HcnAddressError(HcnError):
    """An IP address is outside every subnet, reserved, or in use."""


class HcnInUseError(HcnError):
    """The object still has references and cannot be removed yet."""


class HcnUnavailableError(HcnError):
    """The Host Network Service is not running or is stopping."""


class HcnTimeoutError(HcnError):
    """An HCN call did not return within its deadline (moby/moby#40699)."""


class HcnOtherError(HcnError):
    """An HRESULT with no more specific class."""


_CLASSES: Final[dict[int, type[HcnError]]] = {
    # docs/reference/hcn.rst §3, "Not found in practice": all three mean absent.
    HCN_E_NETWORK_NOT_FOUND: HcnNotFoundError,
    HCN_E_ENDPOINT_NOT_FOUND: HcnNotFoundError,
    ERROR_NOT_FOUND: HcnNotFoundError,
    HCN_E_NETWORK_ALREADY_EXISTS: HcnAlreadyExistsError,
    ERROR_ALREADY_EXISTS: HcnAlreadyExistsError,
    HCN_E_POLICY_ALREADY_EXISTS: HcnAlreadyExistsError,
    HCN_E_PORT_ALREADY_EXISTS: HcnAlreadyExistsError,
    HCN_E_ENDPOINT_ALREADY_ATTACHED: HcnAlreadyExistsError,
    HCN_E_ENDPOINT_NAMESPACE_ALREADY_EXISTS: HcnAlreadyExistsError,
    E_ACCESSDENIED: HcnAccessDeniedError,
    HCN_E_INVALID_JSON: HcnInvalidJsonError,
    HCN_E_INVALID_JSON_REFERENCE: HcnInvalidJsonError,
    HCN_E_INVALID_PREFIX: HcnSubnetConflictError,
    HCN_E_INVALID_SUBNET: HcnSubnetConflictError,
    HCN_E_INVALID_IP_SUBNET: HcnSubnetConflictError,
    HCN_E_INVALID_POLICY: HcnPolicyInvalidError,
    HCN_E_INVALID_POLICY_TYPE: HcnPolicyInvalidError,
    E_INVALIDARG: HcnInvalidConfigError,
    HCN_E_INVALID_NETWORK: HcnInvalidConfigError,
    HCN_E_INVALID_NETWORK_TYPE: HcnInvalidConfigError,
    HCN_E_INVALID_ENDPOINT: HcnInvalidConfigError,
    HCN_E_INVALID_IP: HcnAddressError,
    HCN_E_ADDR_INVALID_OR_RESERVED: HcnAddressError,
    HCN_E_ENTITY_HAS_REFERENCES: HcnInUseError,
    RPC_S_SERVER_UNAVAILABLE: HcnUnavailableError,
    EPT_S_NOT_REGISTERED: HcnUnavailableError,
    HCN_E_MANAGER_STOPPED: HcnUnavailableError,
    ERROR_TIMEOUT: HcnTimeoutError,
}


def error_from_hresult(function: str, hresult: int, record: str = "") -> HcnError:
    """The typed exception for a failed HCN call (not raised, returned)."""
    cls = _CLASSES.get(hresult & 0xFFFFFFFF, HcnOtherError)
    return cls(function, hresult, record)
