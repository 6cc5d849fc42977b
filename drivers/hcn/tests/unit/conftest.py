"""Fixtures for the hcn mechanism tests.

``FakeComputeNetworkDll`` is the docs/reference/hcn.rst §6 proposal: for each of the 21 exports a
``ctypes.CFUNCTYPE`` callback with the exact C prototype, backed by the simulator,
so the real :class:`~overlayd_hcn._hcn_ctypes.HcnLibrary` marshalling (GUID
structs, out-pointers, ``wstring_at``, ``CoTaskMemFree``) runs on Linux.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlayd_hcn._hcn_ctypes import GUID
from overlayd_hcn._hcn_ctypes import PROTOTYPES
from overlayd_hcn._hcn_ctypes import HcnLibrary
from overlayd_hcn._hcn_ctypes import prototype
from overlayd_hcn.errors import HcnError
from overlayd_hcn.simulator import SimulatedHcn
from overlayd_hcn.simulator import SimulatedService


def _signed(hresult: int) -> int:
    return hresult - (1 << 32) if hresult & 0x80000000 else hresult


class FakeComputeNetworkDll:
    """CFUNCTYPE callbacks named like the exports, plus a fake ``CoTaskMemFree``."""

    def __init__(self, service: SimulatedService) -> None:
        self.service = service
        #: Strings handed out and not yet freed: address -> buffer.
        self.live_strings: dict[int, ctypes.Array[ctypes.c_wchar]] = {}
        #: Addresses freed that were never handed out (double free, wrong pointer).
        self.bad_frees: list[int] = []
        self._keep: list[object] = []
        for name in PROTOTYPES:
            callback = prototype(name)(self._make(name))
            self._keep.append(callback)
            setattr(self, name, callback)
        self.CoTaskMemFree = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self._free)

    def _alloc(self, text: str) -> int:
        buffer = ctypes.create_unicode_buffer(text)
        address = ctypes.addressof(buffer)
        self.live_strings[address] = buffer
        return address

    def _free(self, address: int | None) -> None:
        if address is None or self.live_strings.pop(address, None) is None:
            self.bad_frees.append(address or 0)

    def _make(self, name: str) -> Callable[..., int]:
        service = self.service
        method = _METHODS[name]
        shape = _shape(name)

        def call(*args: Any) -> int:
            error_out = args[-1]
            try:
                if shape == "enumerate":
                    text = getattr(service, method)(args[0])
                    args[1][0] = self._alloc(text)
                elif shape == "query":
                    text = getattr(service, method)(args[0], args[1])
                    args[2][0] = self._alloc(text)
                elif shape == "create_endpoint":
                    handle = service.create_endpoint(args[0], args[1].contents.to_uuid(), args[2])
                    args[3][0] = handle
                elif shape == "create":
                    handle = getattr(service, method)(args[0].contents.to_uuid(), args[1])
                    args[2][0] = handle
                elif shape == "open":
                    args[1][0] = getattr(service, method)(args[0].contents.to_uuid())
                elif shape == "modify":
                    getattr(service, method)(args[0], args[1])
                elif shape == "delete":
                    getattr(service, method)(args[0].contents.to_uuid())
                else:  # close: no ErrorRecord parameter
                    getattr(service, method)(args[0])
            except HcnError as exc:
                if shape != "close" and error_out:
                    error_out[0] = self._alloc(exc.error_record)
                return _signed(exc.hresult)
            return 0

        return call


def _shape(name: str) -> str:
    for prefix, shape in (
        ("HcnEnumerate", "enumerate"),
        ("HcnQuery", "query"),
        ("HcnCreateEndpoint", "create_endpoint"),
        ("HcnCreate", "create"),
        ("HcnOpen", "open"),
        ("HcnModify", "modify"),
        ("HcnDelete", "delete"),
        ("HcnClose", "close"),
    ):
        if name.startswith(prefix):
            return shape
    raise AssertionError(name)


def _snake(name: str) -> str:
    body = name.removeprefix("Hcn")
    out = "".join("_" + c.lower() if c.isupper() else c for c in body).lstrip("_")
    return out


_METHODS = {name: _snake(name) for name in PROTOTYPES}


@pytest.fixture
def service() -> SimulatedService:
    """Name: service. Scope: function. Depends: nothing. An in-memory simulator."""
    return SimulatedService()


@pytest.fixture
def sim(service: SimulatedService) -> Iterator[SimulatedHcn]:
    """Name: sim. Scope: function. Depends: service. Checks no handle leaked."""
    client = SimulatedHcn(service=service)
    yield client
    assert service.live_handles == {}, "a test left HCN handles open"


@pytest.fixture
def fake_dll(service: SimulatedService) -> Iterator[FakeComputeNetworkDll]:
    """Name: fake_dll. Scope: function. Depends: service. Checks no string leaked."""
    dll = FakeComputeNetworkDll(service)
    yield dll
    assert dll.live_strings == {}, "a returned string was never freed"
    assert dll.bad_frees == []


@pytest.fixture
def library(fake_dll: FakeComputeNetworkDll) -> HcnLibrary:
    """Name: library. Scope: function. Depends: fake_dll. The real binding over it."""
    return HcnLibrary.from_dll(fake_dll, fake_dll.CoTaskMemFree)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """Name: state_dir. Scope: function. Depends: tmp_path."""
    return tmp_path / "hcn"


__all__ = ["GUID", "FakeComputeNetworkDll"]
