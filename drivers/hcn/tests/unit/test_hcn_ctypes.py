"""The computenetwork.dll binding: declarations, GUID layout, marshalling on a fake DLL."""

from __future__ import annotations

import ctypes
import sys
import uuid
from ctypes import POINTER
from ctypes import c_int32
from ctypes import c_void_p
from ctypes import c_wchar_p

import pytest

from overlayd.errors import NotSupported
from overlayd_hcn import _hcn_ctypes
from overlayd_hcn._hcn_ctypes import GUID
from overlayd_hcn._hcn_ctypes import PROTOTYPES
from overlayd_hcn._hcn_ctypes import HcnLibrary
from overlayd_hcn._hcn_ctypes import check_hresult
from overlayd_hcn._hcn_ctypes import prototype
from overlayd_hcn.api import NativeHcn
from overlayd_hcn.errors import ERROR_NOT_FOUND
from overlayd_hcn.errors import HCN_E_NETWORK_ALREADY_EXISTS
from overlayd_hcn.errors import HcnAlreadyExistsError
from overlayd_hcn.errors import HcnNotFoundError
from overlayd_hcn.errors import HcnOtherError
from overlayd_hcn.errors import error_record
from overlayd_hcn.schema import HostComputeEndpoint
from overlayd_hcn.schema import HostComputeNamespace
from overlayd_hcn.schema import HostComputeNetwork
from overlayd_hcn.schema import HostComputeQuery
from overlayd_hcn.schema import Ipam
from overlayd_hcn.schema import IpConfig
from overlayd_hcn.schema import Subnet
from overlayd_hcn.simulator import SimulatedService

# docs/reference/hcn.rst §1 C prototypes, translated by the recipe: REFGUID -> POINTER(GUID),
# PCWSTR -> c_wchar_p, PWSTR* and PHCN_* -> POINTER(c_void_p), HCN_* -> c_void_p.
G, W, OUT, H = "REFGUID", "PCWSTR", "OUT", "HANDLE"


def _exports(kind: str, create: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The seven exports of one object kind: the same prototypes but for Create's."""
    return {
        f"HcnEnumerate{kind}s": (W, OUT, OUT),
        f"HcnCreate{kind}": create,
        f"HcnOpen{kind}": (G, OUT, OUT),
        f"HcnModify{kind}": (H, W, OUT),
        f"HcnQuery{kind}Properties": (H, W, OUT, OUT),
        f"HcnDelete{kind}": (G, OUT),
        f"HcnClose{kind}": (H,),
    }


EXPECTED = {
    **_exports("Network", (G, W, OUT, OUT)),
    # An endpoint is created on a network: the network's handle comes first.
    **_exports("Endpoint", (H, G, W, OUT, OUT)),
    **_exports("Namespace", (G, W, OUT, OUT)),
}
CTYPE = {G: POINTER(GUID), W: c_wchar_p, OUT: POINTER(c_void_p), H: c_void_p}


def test_binding_declares_exactly_the_21_exports() -> None:
    assert set(PROTOTYPES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_prototype_matches_the_c_declaration(name: str) -> None:
    """Built without loading any DLL: restype c_int32, argtypes per docs/reference/hcn.rst §1."""
    fn_type = prototype(name)
    assert fn_type._restype_ is c_int32
    assert list(fn_type._argtypes_) == [CTYPE[kind] for kind in EXPECTED[name]]


def test_guid_is_16_bytes_and_round_trips_bytes_le() -> None:
    value = uuid.UUID("55fedb88-4b11-4a5e-9d3c-0123456789ab")
    guid = GUID.from_uuid(value)
    assert ctypes.sizeof(GUID) == 16
    assert guid.Data1 == 0x55FEDB88
    assert guid.Data2 == 0x4B11
    assert bytes(guid) == value.bytes_le
    assert guid.to_uuid() == value


def test_error_record_with_success_hresult_is_a_failure() -> None:
    """hcsshim checkForErrors: a non-empty ErrorRecord fails even with S_OK."""
    with pytest.raises(HcnAlreadyExistsError) as info:
        check_hresult("HcnCreateNetwork", 0, error_record(HCN_E_NETWORK_ALREADY_EXISTS))
    assert info.value.hresult_hex == "0x803B0010"
    with pytest.raises(HcnOtherError):
        check_hresult("HcnCreateNetwork", 0, "garbage")
    check_hresult("HcnCreateNetwork", 0, "")


def test_negative_signed_hresult_is_read_unsigned() -> None:
    with pytest.raises(HcnNotFoundError) as info:
        check_hresult("HcnOpenNamespace", ERROR_NOT_FOUND - (1 << 32), "")
    assert info.value.hresult == 0x80070490


@pytest.mark.skipif(sys.platform == "win32", reason="checks the non-Windows refusal")
def test_native_backend_refuses_off_windows() -> None:
    with pytest.raises(NotSupported, match=r'backend = "simulator"'):
        NativeHcn()
    with pytest.raises(NotSupported, match="only on Windows"):
        _hcn_ctypes.load()


def test_from_dll_reports_missing_exports() -> None:
    class Partial:
        pass

    with pytest.raises(NotSupported, match="HcnCreateNetwork"):
        HcnLibrary.from_dll(Partial(), lambda p: None)


def test_library_marshals_create_query_and_frees_every_string(
    library: HcnLibrary,
) -> None:
    """GUID by reference, settings as wide string, handle out, result freed."""
    network_id = uuid.uuid4()
    settings = HostComputeNetwork(
        name="t-net",
        type="Internal",
        ipams=[Ipam(subnets=[Subnet(ip_address_prefix="10.250.0.0/24")])],
    ).to_json()
    handle = library.create_network(network_id, settings)
    text = library.query_network_properties(handle, HostComputeQuery().to_json())
    library.close_network(handle)
    parsed = HostComputeNetwork.from_json(text)
    assert parsed.id == network_id
    assert parsed.name == "t-net"
    assert library.enumerate_networks("{}") == f'["{str(network_id).upper()}"]'


def test_library_raises_typed_error_and_frees_error_record(library: HcnLibrary) -> None:
    network_id = uuid.uuid4()
    settings = HostComputeNetwork(name="dup", type="Internal").to_json()
    library.close_network(library.create_network(network_id, settings))
    with pytest.raises(HcnAlreadyExistsError) as info:
        library.create_network(uuid.uuid4(), settings)
    assert info.value.hresult == HCN_E_NETWORK_ALREADY_EXISTS
    assert '"ErrorCode":2151350288' in info.value.error_record


def test_native_client_over_fake_dll_attaches_endpoint(
    library: HcnLibrary, service: SimulatedService
) -> None:
    """The whole NativeHcn path (client + binding) against the fake DLL."""
    hcn = NativeHcn(library, call_timeout=None)
    net = hcn.create_network(
        HostComputeNetwork(
            name="n1",
            type="Internal",
            ipams=[Ipam(subnets=[Subnet(ip_address_prefix="10.251.0.0/24")])],
        )
    )
    assert net.id is not None
    ep = hcn.create_endpoint(
        net.id,
        HostComputeEndpoint(ip_configurations=[IpConfig(ip_address="10.251.0.9")]),
    )
    ns = hcn.create_namespace(HostComputeNamespace())
    assert ep.id is not None
    assert ns.id is not None
    hcn.add_namespace_endpoint(ns.id, ep.id)
    assert hcn.open_endpoint(ep.id).host_compute_namespace == ns.id
    assert hcn.open_namespace(ns.id).endpoint_ids() == [ep.id]
    hcn.delete_endpoint(ep.id)
    hcn.delete_namespace(ns.id)
    hcn.delete_network(net.id)
    with pytest.raises(HcnNotFoundError):
        hcn.open_network(net.id)
    assert service.live_handles == {}
