"""ctypes binding of computenetwork.dll (HCN schema v2): networks, endpoints,
namespaces.

Import-safe everywhere: nothing is loaded at import time. :func:`load` (Windows
only) opens ``computenetwork.dll`` and ``ole32.dll`` and returns an
:class:`HcnLibrary`. :meth:`HcnLibrary.from_dll` accepts any object with the
21 exports as attributes, so the same marshalling code runs on Linux against
``ctypes.CFUNCTYPE`` callbacks (docs/reference/hcn.rst §6).

Binding rules (docs/reference/hcn.rst §1, "The ctypes binding recipe"):

* every function returns ``HRESULT``; declared ``restype = c_int32`` (never
  ``ctypes.HRESULT`` or ``OleDLL``, which raise ``OSError`` themselves and leak
  the ErrorRecord), then read as unsigned; failure iff bit 31 is set;
* ``REFGUID`` is ``POINTER(GUID)``; ``PCWSTR`` in is ``c_wchar_p``; ``PWSTR*``
  out and ``HCN_*`` handles are ``c_void_p`` so the pointer to free is kept;
* every returned string (result and ErrorRecord) is freed with
  ``CoTaskMemFree`` (MSDOC: "The caller must release the buffer using
  CoTaskMemFree"), also on failure;
* a non-empty ErrorRecord with a success HRESULT is a failure (hcsshim
  ``checkForErrors``).
"""

from __future__ import annotations

import ctypes
import json
import sys
from collections.abc import Callable
from ctypes import CFUNCTYPE
from ctypes import POINTER
from ctypes import Structure
from ctypes import byref
from ctypes import c_int32
from ctypes import c_uint8
from ctypes import c_uint16
from ctypes import c_uint32
from ctypes import c_void_p
from ctypes import c_wchar_p
from typing import TYPE_CHECKING
from typing import Any
from typing import Final
from uuid import UUID

from overlayd.errors import NotSupported
from overlayd_hcn.errors import E_FAIL
from overlayd_hcn.errors import error_from_hresult
from overlayd_hcn.errors import hresult_failed

if TYPE_CHECKING:
    from ctypes import _CDataType

__all__ = [
    "FREE_PROTOTYPE",
    "GUID",
    "HCN_FUNCTIONS",
    "PROTOTYPES",
    "HcnLibrary",
    "check_hresult",
    "load",
    "prototype",
]


class GUID(Structure):
    """16-byte Win32 GUID; Data1..3 little-endian: ``uuid.bytes_le`` (docs/reference/hcn.rst §1)."""

    _fields_ = (
        ("Data1", c_uint32),
        ("Data2", c_uint16),
        ("Data3", c_uint16),
        ("Data4", c_uint8 * 8),
    )

    @classmethod
    def from_uuid(cls, value: UUID) -> GUID:
        """The GUID struct for ``value``."""
        return cls.from_buffer_copy(value.bytes_le)

    def to_uuid(self) -> UUID:
        """This GUID as a :class:`uuid.UUID`."""
        return UUID(bytes_le=bytes(self))


# Fixed-width types: ctypes.wintypes' DWORD/LONG are 8 bytes on Linux (docs/reference/hcn.rst §1).
HRESULT: Final = c_int32
REFGUID: Final = POINTER(GUID)
PCWSTR: Final = c_wchar_p
PWSTR_OUT: Final = POINTER(c_void_p)  # PWSTR* : kept as void* so we can free it
HCN_HANDLE: Final = c_void_p  # HCN_NETWORK / HCN_ENDPOINT / HCN_NAMESPACE
HANDLE_OUT: Final = POINTER(c_void_p)  # PHCN_NETWORK / ...

_Signature = tuple["type[_CDataType]", tuple["type[_CDataType]", ...]]

#: restype and argtypes of every computenetwork.dll export used, exactly as the C
#: prototypes in docs/reference/hcn.rst §1 (MSDOC ``Reference/<name>.md``).
PROTOTYPES: Final[dict[str, _Signature]] = {
    # networks
    "HcnEnumerateNetworks": (HRESULT, (PCWSTR, PWSTR_OUT, PWSTR_OUT)),
    "HcnCreateNetwork": (HRESULT, (REFGUID, PCWSTR, HANDLE_OUT, PWSTR_OUT)),
    "HcnOpenNetwork": (HRESULT, (REFGUID, HANDLE_OUT, PWSTR_OUT)),
    "HcnModifyNetwork": (HRESULT, (HCN_HANDLE, PCWSTR, PWSTR_OUT)),
    "HcnQueryNetworkProperties": (HRESULT, (HCN_HANDLE, PCWSTR, PWSTR_OUT, PWSTR_OUT)),
    "HcnDeleteNetwork": (HRESULT, (REFGUID, PWSTR_OUT)),
    "HcnCloseNetwork": (HRESULT, (HCN_HANDLE,)),
    # endpoints
    "HcnEnumerateEndpoints": (HRESULT, (PCWSTR, PWSTR_OUT, PWSTR_OUT)),
    "HcnCreateEndpoint": (
        HRESULT,
        (HCN_HANDLE, REFGUID, PCWSTR, HANDLE_OUT, PWSTR_OUT),
    ),
    "HcnOpenEndpoint": (HRESULT, (REFGUID, HANDLE_OUT, PWSTR_OUT)),
    "HcnModifyEndpoint": (HRESULT, (HCN_HANDLE, PCWSTR, PWSTR_OUT)),
    "HcnQueryEndpointProperties": (HRESULT, (HCN_HANDLE, PCWSTR, PWSTR_OUT, PWSTR_OUT)),
    "HcnDeleteEndpoint": (HRESULT, (REFGUID, PWSTR_OUT)),
    "HcnCloseEndpoint": (HRESULT, (HCN_HANDLE,)),
    # namespaces
    "HcnEnumerateNamespaces": (HRESULT, (PCWSTR, PWSTR_OUT, PWSTR_OUT)),
    "HcnCreateNamespace": (HRESULT, (REFGUID, PCWSTR, HANDLE_OUT, PWSTR_OUT)),
    "HcnOpenNamespace": (HRESULT, (REFGUID, HANDLE_OUT, PWSTR_OUT)),
    "HcnModifyNamespace": (HRESULT, (HCN_HANDLE, PCWSTR, PWSTR_OUT)),
    "HcnQueryNamespaceProperties": (
        HRESULT,
        (HCN_HANDLE, PCWSTR, PWSTR_OUT, PWSTR_OUT),
    ),
    "HcnDeleteNamespace": (HRESULT, (REFGUID, PWSTR_OUT)),
    "HcnCloseNamespace": (HRESULT, (HCN_HANDLE,)),
}

#: Names of the computenetwork.dll exports the binding resolves.
HCN_FUNCTIONS: Final = tuple(PROTOTYPES)

#: ``void CoTaskMemFree(LPVOID pv)`` (ole32; docs/reference/hcn.rst §1 memory rules).
FREE_PROTOTYPE: Final[tuple[None, tuple[type[c_void_p]]]] = (None, (c_void_p,))


def prototype(name: str) -> type[ctypes._CFunctionType]:
    """The ctypes function type of export ``name`` (``CFUNCTYPE``; no DLL needed).

    On x64 Windows there is one calling convention, so this equals the
    ``WINFUNCTYPE`` prototype (docs/reference/hcn.rst §1).
    """
    restype, argtypes = PROTOTYPES[name]
    return CFUNCTYPE(restype, *argtypes)


_RawFunction = Callable[..., Any]


def check_hresult(function: str, hresult: int, record: str) -> None:
    """Raise the typed :class:`~overlayd_hcn.errors.HcnError` for a failed call.

    A non-empty ErrorRecord with a success HRESULT is a failure too (hcsshim
    ``checkForErrors``); its ``ErrorCode`` is used when it is a failure code.
    """
    unsigned = hresult & 0xFFFFFFFF
    if hresult_failed(unsigned):
        raise error_from_hresult(function, unsigned, record)
    if record.strip():
        code = E_FAIL
        try:
            parsed = json.loads(record)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            record_code = parsed.get("ErrorCode")
            if isinstance(record_code, int) and hresult_failed(record_code & 0xFFFFFFFF):
                code = record_code & 0xFFFFFFFF
        raise error_from_hresult(function, code, record)


class HcnLibrary:
    """Typed, exception-raising wrappers over the computenetwork.dll exports.

    Handles are returned as plain ints (the pointer value) and must be closed with
    the matching ``close_*`` (closing never deletes: docs/reference/hcn.rst §1).
    """

    def __init__(self, functions: dict[str, _RawFunction], free: _RawFunction) -> None:
        missing = sorted(set(HCN_FUNCTIONS) - set(functions))
        if missing:
            raise NotSupported(
                "computenetwork.dll lacks the HCN v2 exports "
                f"{', '.join(missing)}; HCN v2 needs Windows 10 1809 / Server 2019 "
                "or later."
            )
        self._fn = functions
        self._free = free

    @classmethod
    def from_dll(cls, dll: object, free: _RawFunction) -> HcnLibrary:
        """Declare argtypes/restype on every export of ``dll`` and wrap them."""
        functions: dict[str, _RawFunction] = {}
        missing: list[str] = []
        for name, (restype, argtypes) in PROTOTYPES.items():
            try:
                fn = getattr(dll, name)
            except AttributeError:
                missing.append(name)
                continue
            fn.restype = restype
            fn.argtypes = argtypes
            functions[name] = fn
        if missing:
            raise NotSupported(
                f"computenetwork.dll lacks the HCN v2 exports {', '.join(missing)}; "
                "HCN v2 needs Windows 10 1809 / Server 2019 or later."
            )
        free_restype, free_argtypes = FREE_PROTOTYPE
        free_fn: Any = free
        # A real ctypes function gets its declaration; a Python callable is used as is.
        if hasattr(free_fn, "argtypes"):
            free_fn.restype = free_restype
            free_fn.argtypes = free_argtypes
        return cls(functions, free_fn)

    # -- marshalling ---------------------------------------------------------------

    def _take_string(self, pointer: c_void_p) -> str:
        """Read a service-allocated wide string and free it with CoTaskMemFree."""
        if not pointer.value:
            return ""
        try:
            return ctypes.wstring_at(pointer.value)
        finally:
            self._free(pointer)

    def _call(
        self, name: str, *args: object, out: c_void_p | None = None, string: bool = True
    ) -> str:
        """Call ``name`` with ``args``, ``out`` and the ErrorRecord; return the string.

        ``out`` is a string out-parameter (``PWSTR*``) when ``string`` is true, else a
        handle out-parameter (``PHCN_*``) the caller reads itself.
        """
        record = c_void_p()
        full: list[object] = list(args)
        if out is not None:
            full.append(byref(out))
        full.append(byref(record))
        text = ""
        try:
            hresult = int(self._fn[name](*full))
        finally:
            # Free both buffers before raising, whatever happened (docs/reference/hcn.rst §1).
            try:
                if out is not None and string:
                    text = self._take_string(out)
            finally:
                error_text = self._take_string(record)
        check_hresult(name, hresult, error_text)
        return text

    def _open_like(self, name: str, *args: object) -> int:
        handle = c_void_p()
        self._call(name, *args, out=handle, string=False)
        if not handle.value:
            raise error_from_hresult(name, E_FAIL, "The service returned a NULL handle.")
        return int(handle.value)

    def _close(self, name: str, handle: int) -> None:
        hresult = int(self._fn[name](c_void_p(handle)))
        check_hresult(name, hresult, "")

    # -- networks ------------------------------------------------------------------

    def enumerate_networks(self, query: str) -> str:
        """``HcnEnumerateNetworks``: a JSON array of network GUIDs."""
        return self._call("HcnEnumerateNetworks", query, out=c_void_p())

    def create_network(self, id: UUID, settings: str) -> int:
        """``HcnCreateNetwork``: a handle to the new network."""
        return self._open_like("HcnCreateNetwork", byref(GUID.from_uuid(id)), settings)

    def open_network(self, id: UUID) -> int:
        """``HcnOpenNetwork``: a handle to an existing network."""
        return self._open_like("HcnOpenNetwork", byref(GUID.from_uuid(id)))

    def modify_network(self, handle: int, settings: str) -> None:
        """``HcnModifyNetwork``."""
        self._call("HcnModifyNetwork", c_void_p(handle), settings)

    def query_network_properties(self, handle: int, query: str) -> str:
        """``HcnQueryNetworkProperties``: the network's JSON document."""
        return self._call("HcnQueryNetworkProperties", c_void_p(handle), query, out=c_void_p())

    def delete_network(self, id: UUID) -> None:
        """``HcnDeleteNetwork`` (by GUID, no handle needed)."""
        self._call("HcnDeleteNetwork", byref(GUID.from_uuid(id)))

    def close_network(self, handle: int) -> None:
        """``HcnCloseNetwork`` (does not delete)."""
        self._close("HcnCloseNetwork", handle)

    # -- endpoints -----------------------------------------------------------------

    def enumerate_endpoints(self, query: str) -> str:
        """``HcnEnumerateEndpoints``: a JSON array of endpoint GUIDs."""
        return self._call("HcnEnumerateEndpoints", query, out=c_void_p())

    def create_endpoint(self, network: int, id: UUID, settings: str) -> int:
        """``HcnCreateEndpoint`` on the network behind handle ``network``."""
        return self._open_like(
            "HcnCreateEndpoint", c_void_p(network), byref(GUID.from_uuid(id)), settings
        )

    def open_endpoint(self, id: UUID) -> int:
        """``HcnOpenEndpoint``."""
        return self._open_like("HcnOpenEndpoint", byref(GUID.from_uuid(id)))

    def modify_endpoint(self, handle: int, settings: str) -> None:
        """``HcnModifyEndpoint``."""
        self._call("HcnModifyEndpoint", c_void_p(handle), settings)

    def query_endpoint_properties(self, handle: int, query: str) -> str:
        """``HcnQueryEndpointProperties``: the endpoint's JSON document."""
        return self._call("HcnQueryEndpointProperties", c_void_p(handle), query, out=c_void_p())

    def delete_endpoint(self, id: UUID) -> None:
        """``HcnDeleteEndpoint``."""
        self._call("HcnDeleteEndpoint", byref(GUID.from_uuid(id)))

    def close_endpoint(self, handle: int) -> None:
        """``HcnCloseEndpoint``."""
        self._close("HcnCloseEndpoint", handle)

    # -- namespaces ----------------------------------------------------------------

    def enumerate_namespaces(self, query: str) -> str:
        """``HcnEnumerateNamespaces``: a JSON array of namespace GUIDs."""
        return self._call("HcnEnumerateNamespaces", query, out=c_void_p())

    def create_namespace(self, id: UUID, settings: str) -> int:
        """``HcnCreateNamespace``."""
        return self._open_like("HcnCreateNamespace", byref(GUID.from_uuid(id)), settings)

    def open_namespace(self, id: UUID) -> int:
        """``HcnOpenNamespace``."""
        return self._open_like("HcnOpenNamespace", byref(GUID.from_uuid(id)))

    def modify_namespace(self, handle: int, settings: str) -> None:
        """``HcnModifyNamespace`` (attach/detach endpoints)."""
        self._call("HcnModifyNamespace", c_void_p(handle), settings)

    def query_namespace_properties(self, handle: int, query: str) -> str:
        """``HcnQueryNamespaceProperties``: the namespace's JSON document."""
        return self._call("HcnQueryNamespaceProperties", c_void_p(handle), query, out=c_void_p())

    def delete_namespace(self, id: UUID) -> None:
        """``HcnDeleteNamespace``."""
        self._call("HcnDeleteNamespace", byref(GUID.from_uuid(id)))

    def close_namespace(self, handle: int) -> None:
        """``HcnCloseNamespace``."""
        self._close("HcnCloseNamespace", handle)


def load() -> HcnLibrary:
    """Load computenetwork.dll and ole32.dll (Windows only) and declare every export."""
    if sys.platform == "win32":
        try:
            dll = ctypes.WinDLL("computenetwork.dll")
            ole32 = ctypes.WinDLL("ole32.dll")
        except OSError as exc:
            raise NotSupported(
                f"computenetwork.dll could not be loaded ({exc}); HCN v2 needs Windows "
                "10 1809 / Server 2019 or later with the Host Network Service."
            ) from exc
        return HcnLibrary.from_dll(dll, ole32.CoTaskMemFree)
    else:  # the explicit else keeps both mypy platforms free of unreachable code
        raise NotSupported(
            "computenetwork.dll exists only on Windows; the native HCN backend cannot "
            'load here. Set [drivers.hcn] backend = "simulator" to use the simulator.'
        )
