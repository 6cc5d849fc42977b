"""ZLayer-compatible interface names and overlayd's veth names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlayd.names import MAX_IFNAME
from overlayd.names import dedicated_device_name
from overlayd.names import global_device_name
from overlayd.names import interface_name
from overlayd.names import is_overlayd_veth
from overlayd.names import is_tombstone
from overlayd.names import service_bridge_name
from overlayd.names import service_overlay_name
from overlayd.names import siphash13
from overlayd.names import tombstone_name
from overlayd.names import veth_host_name
from overlayd.names import veth_names

# Golden vectors produced by a throwaway Rust program (rustc 1.95) calling
# ZLayer's make_interface_name with std::collections::hash_map::DefaultHasher.
# Columns: parts, suffix, name, full `{:x}` of the hash.
GOLDEN: list[tuple[list[str], str, str, str]] = [
    (["prod"], "g", "zl-prod-g", "19f931ad6db9dd47"),
    (["prod", "n1"], "g", "zl-prod-n1-g", "f961f8ec5ebfbe3f"),
    (["myapp", "abc123"], "g", "zl-ba6360aeca-g", "ba6360aecab2c4f4"),
    (
        ["production-deployment", "instance-7f3a"],
        "g",
        "zl-77a731b9f3-g",
        "77a731b9f39b9782",
    ),
    (
        ["production-deployment", "instance-7f3a", "web"],
        "b",
        "zl-a627ff1492-b",
        "a627ff14927dc8dd",
    ),
    (
        ["production-deployment", "instance-7f3a", "web"],
        "d",
        "zl-1848bc5552-d",
        "1848bc5552ec6623",
    ),
    (
        ["production-deployment", "instance-7f3a", "web"],
        "s",
        "zl-c867e0baf5-s",
        "c867e0baf5d71151",
    ),
    (["a", "b", "c"], "", "zl-a-b-c", "73819b1c5fbd53a"),
    (["averyveryverylongname"], "", "zl-5be33dfd83e3", "5be33dfd83e3c50b"),
    ([], "", "zl-", "30406ea523c53def"),
    ([], "g", "zl--g", "974358e2c2694378"),
    ([""], "", "zl-", "1dcbe1ce95dcba8e"),
    (["déploiement-été", "nœud"], "g", "zl-e914d653b5-g", "e914d653b5339e79"),
    (["日本語", "サービス"], "b", "zl-31d55f9a06-b", "31d55f9a06b9bcb5"),
    (["x"], "0123456789a", "zl-198bff2b1375", "198bff2b13757968"),
    (["xyzxyzxyzxyz"], "abcdef", "zl-91a06-abcdef", "91a06987eba90729"),
    (["a" * 200], "g", "zl-1391317ef6-g", "1391317ef6ea17cd"),
    (["deploy", "inst", "svc"], "h", "zl-809a38c49a-h", "809a38c49a9fb6e7"),
    (["abcdefghij"], "g", "zl-abcdefghij-g", "a18dbc110a644cd4"),
    (["abcdefghijk"], "g", "zl-d41c3bb8de-g", "d41c3bb8de88896f"),
    (["ab", "cd"], "éé", "zl-ab-cd-éé", "d20a95510732cd27"),
    # Hashes whose `{:x}` is shorter than the budget: no zero padding.
    (["deployment-long-2070931"], "", "zl-ed637e28335", "ed637e28335"),
    (["deployment-long-175053027"], "g", "zl-137a02620-g", "137a02620"),
]
GOLDEN_IDS = [
    "short-g",
    "two-parts-fit",
    "just-over-15",
    "global-long",
    "bridge-long",
    "dedicated-long",
    "service-overlay-long",
    "no-suffix-fit",
    "no-suffix-long",
    "no-parts",
    "no-parts-suffix",
    "one-empty-part",
    "latin-unicode",
    "cjk-unicode",
    "suffix-leaves-no-room",
    "long-suffix",
    "200-bytes",
    "three-parts-h",
    "exactly-15",
    "16-bytes",
    "multibyte-suffix-fit",
    "short-hash-no-suffix",
    "short-hash-with-suffix",
]


@pytest.mark.parametrize(("parts", "suffix", "name", "hexhash"), GOLDEN, ids=GOLDEN_IDS)
def test_interface_name_matches_zlayer(
    parts: list[str], suffix: str, name: str, hexhash: str
) -> None:
    assert interface_name(parts, suffix) == name


@pytest.mark.parametrize(("parts", "suffix", "name", "hexhash"), GOLDEN, ids=GOLDEN_IDS)
def test_siphash13_matches_rust_default_hasher(
    parts: list[str], suffix: str, name: str, hexhash: str
) -> None:
    data = b"".join(s.encode() + b"\xff" for s in [*parts, suffix])
    assert format(siphash13(data), "x") == hexhash


# DefaultHasher::new() + Hasher::write(&[0, 1, .., n-1]) + finish(), from Rust:
# covers every tail length 0..7 and the one- and two-block paths.
RAW_VECTORS = [
    (0, 0xD1FBA762150C532C),
    (1, 0x68A914128E01E473),
    (2, 0x010BAC45C41E3669),
    (3, 0x4D4C9A4A8EF6E0AD),
    (4, 0x7CC43F98813E4DBD),
    (5, 0x5ABE2169DFF36275),
    (6, 0xE3C25F87624F1CDB),
    (7, 0x2F098AB0C751325A),
    (8, 0xEAD411E67EBE2EEA),
    (9, 0x75927F9D95124362),
    (10, 0xAF9F77A65AB51A1D),
    (11, 0xFE64CE8B6617FCFF),
    (12, 0xA6BAF4FB0F9FE1C2),
    (13, 0xA0CF3211850F8E0D),
    (14, 0x7F86049379FBFE67),
    (15, 0xF30EB725BB91C9EA),
    (16, 0x8972188433A5C5B7),
    (17, 0x4883C49A2C009C1D),
]


@pytest.mark.parametrize(
    ("length", "expected"), RAW_VECTORS, ids=[f"len{n}" for n, _ in RAW_VECTORS]
)
def test_siphash13_raw_bytes_match_rust(length: int, expected: int) -> None:
    assert siphash13(bytes(range(length))) == expected


def test_helpers_use_zlayer_suffixes() -> None:
    assert global_device_name("prod", "n1") == "zl-prod-n1-g"
    assert global_device_name("production-deployment", "instance-7f3a") == ("zl-77a731b9f3-g")
    web = ("production-deployment", "instance-7f3a", "web")
    assert service_bridge_name(*web) == "zl-a627ff1492-b"
    assert dedicated_device_name(*web) == "zl-1848bc5552-d"
    assert service_overlay_name(*web) == "zl-c867e0baf5-s"


text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40)


@given(parts=st.lists(text, max_size=5), suffix=text)
def test_interface_name_properties(parts: list[str], suffix: str) -> None:
    name = interface_name(parts, suffix)
    assert len(name.encode()) <= MAX_IFNAME
    assert name.startswith("zl-")
    assert interface_name(list(parts), suffix) == name


@given(key=st.text(max_size=200), index=st.integers(min_value=0, max_value=64))
def test_veth_host_name_properties(key: str, index: int) -> None:
    name = veth_host_name(key, index)
    assert len(name) == MAX_IFNAME
    assert name.startswith("zv")
    assert is_overlayd_veth(name)
    assert not is_tombstone(name)
    assert veth_host_name(key, index) == name


def test_veth_host_name_is_pinned() -> None:
    """The scheme is part of on-host state: changing it orphans existing veths."""
    data = b"linux_pid:1234" + b"\xff" + b"0\xff"
    assert veth_host_name("linux_pid:1234", 0) == "zv" + format(
        siphash13(data) & (2**52 - 1), "013x"
    )
    assert veth_host_name("linux_pid:1234", 0) == "zva2763bb5f66eb"


def test_veth_names_lists_each_interface() -> None:
    names = veth_names("linux_pid:1234", 2)
    assert names == [
        veth_host_name("linux_pid:1234", 0),
        veth_host_name("linux_pid:1234", 1),
    ]
    assert len(set(names)) == 2


def test_veth_names_differ_by_key_and_index() -> None:
    a0 = veth_host_name("linux_pid:1234", 0)
    a1 = veth_host_name("linux_pid:1234", 1)
    b0 = veth_host_name("linux_pid:1235", 0)
    assert len({a0, a1, b0}) == 3


def test_veth_host_name_rejects_negative_index() -> None:
    with pytest.raises(ValueError, match="index"):
        veth_host_name("k", -1)


@given(token=st.integers(min_value=0, max_value=2**64))
def test_tombstone_name_shape(token: int) -> None:
    name = tombstone_name(token)
    assert len(name) == MAX_IFNAME
    assert is_tombstone(name)
    assert not is_overlayd_veth(name)


@pytest.mark.parametrize(
    "name", ["zl-prod-g", "eth0", "zv123", "zvXXXXXXXXXXXXX", "zx0123456789abc"]
)
def test_is_overlayd_veth_rejects_foreign_names(name: str) -> None:
    assert not is_overlayd_veth(name)
