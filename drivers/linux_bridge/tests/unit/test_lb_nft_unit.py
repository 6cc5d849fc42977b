"""nft command generation and parsing, with a recording backend (no kernel)."""

from __future__ import annotations

import json
import re
from ipaddress import ip_address
from ipaddress import ip_network

import pytest

from overlayd.errors import NatError
from overlayd_linux_bridge.nft import NatState
from overlayd_linux_bridge.nft import Nftables
from overlayd_linux_bridge.nft import NftCommandError
from overlayd_linux_bridge.nft import PortMapping
from overlayd_linux_bridge.nft import _ruleset


class RecordingBackend:
    """Records commands; answers listings with ``listing`` and fails on demand."""

    name = "recording"

    def __init__(self, listing: str = "", error: str | None = None) -> None:
        self.commands: list[tuple[str, bool]] = []
        self.listing = listing
        self.error = error

    def run(self, commands: str, *, json_output: bool = False) -> str:
        self.commands.append((commands, json_output))
        if self.error is not None:
            raise NftCommandError(f"refused: {self.error}", nft_message=self.error)
        return self.listing if json_output else ""

    def close(self) -> None:
        return None


def test_ruleset_replaces_the_table_atomically() -> None:
    text = _ruleset(NatState())
    lines = text.splitlines()
    assert lines[:3] == [
        "add table inet overlayd",
        "delete table inet overlayd",
        "table inet overlayd {",
    ]
    # Only our own table is named anywhere.
    assert set(re.findall(r"table (\S+ \S+)", text)) == {"inet overlayd"}


def test_ruleset_puts_state_into_sets_not_rules() -> None:
    state = NatState(
        masquerade=frozenset({ip_network("10.88.0.0/24"), ip_network("fd88::/64")}),
        exempt=frozenset({ip_network("10.0.0.0/8")}),
        port_mappings=frozenset(
            {
                PortMapping("tcp", 8080, ip_address("10.88.0.10"), 80),
                PortMapping("udp", 53, ip_address("fd88::5"), 53, ip_address("fd88::1")),
            }
        ),
    )
    text = _ruleset(state)
    assert "set masq4 { type ipv4_addr; flags interval; elements = { 10.88.0.0/24 }; }" in text
    assert "elements = { fd88::/64 }" in text
    assert "elements = { 10.0.0.0/8 }" in text
    assert "elements = { tcp . 8080 : 10.88.0.10 . 80 }" in text
    assert "elements = { fd88::1 . udp . 53 : fd88::5 . 53 }" in text
    # The rules are the same whatever the state: no per-container rule.
    assert text.split("chain portmap")[1] == _ruleset(NatState()).split("chain portmap")[1]


def test_element_updates_are_single_commands() -> None:
    backend = RecordingBackend()
    nft = Nftables(backend)
    nft.add_masquerade(ip_network("10.88.0.0/24"))
    nft.add_port_mapping("tcp", 8080, ip_address("10.88.0.10"), 80, ip_address("10.0.0.1"))
    nft.remove_port_mapping("tcp", 8080, ip_address("10.88.0.10"), ip_address("10.0.0.1"))
    assert [c for c, _ in backend.commands] == [
        "add element inet overlayd masq4 { 10.88.0.0/24 }\n",
        "add element inet overlayd pm4a { 10.0.0.1 . tcp . 8080 : 10.88.0.10 . 80 }\n",
        "delete element inet overlayd pm4a { 10.0.0.1 . tcp . 8080 }\n",
    ]


@pytest.mark.parametrize(
    "message",
    [
        "Error: Could not process rule: No such file or directory",
        "Error: element does not exist",
    ],
    ids=["kernel-enoent", "interval-set-check"],
)
def test_removing_missing_element_returns_false(message: str) -> None:
    nft = Nftables(RecordingBackend(error=message))
    assert nft.remove_masquerade(ip_network("10.88.0.0/24")) is False
    assert nft.delete_table() is False


def test_other_errors_propagate() -> None:
    nft = Nftables(RecordingBackend(error="Error: Could not process rule: File exists"))
    with pytest.raises(NatError, match="File exists"):
        nft.add_port_mapping("tcp", 1, ip_address("10.0.0.1"), 1)


# Captured from `nft -j list table inet overlayd` (nftables 1.0.6).
LISTING = {
    "nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "overlayd", "handle": 1}},
        {
            "set": {
                "family": "inet",
                "name": "masq4",
                "table": "overlayd",
                "type": "ipv4_addr",
                "flags": ["interval"],
                "elem": [{"prefix": {"addr": "10.1.0.0", "len": 24}}, "10.2.0.7"],
            }
        },
        {"set": {"family": "inet", "name": "exempt4", "table": "overlayd"}},
        {
            "map": {
                "family": "inet",
                "name": "pm4",
                "table": "overlayd",
                "type": ["inet_proto", "inet_service"],
                "map": "ipv4_addr . inet_service",
                "elem": [[{"concat": ["tcp", 8080]}, {"concat": ["10.1.0.5", 80]}]],
            }
        },
        {
            "map": {
                "family": "inet",
                "name": "pm6a",
                "table": "overlayd",
                "elem": [
                    [
                        {"concat": ["fd00:1::1", "udp", 53]},
                        {"concat": ["fd00:1::5", 5353]},
                    ]
                ],
            }
        },
        {"chain": {"family": "inet", "table": "overlayd", "name": "portmap"}},
    ]
}


def test_list_elements_parses_nft_json() -> None:
    nft = Nftables(RecordingBackend(listing=json.dumps(LISTING)))
    state = nft.list_elements()
    assert state.masquerade == frozenset({ip_network("10.1.0.0/24"), ip_network("10.2.0.7/32")})
    assert state.exempt == frozenset()
    assert state.port_mappings == frozenset(
        {
            PortMapping("tcp", 8080, ip_address("10.1.0.5"), 80),
            PortMapping("udp", 53, ip_address("fd00:1::5"), 5353, ip_address("fd00:1::1")),
        }
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"proto": "icmp"}, "Unsupported protocol"),
        ({"host_port": 0}, "out of range"),
        ({"container_port": 70000}, "out of range"),
        ({"host_ip": ip_address("fd00::1")}, "different IP versions"),
    ],
    ids=["proto", "host-port", "container-port", "mixed-family"],
)
def test_port_mapping_validation(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {
        "proto": "tcp",
        "host_port": 80,
        "container_ip": ip_address("10.0.0.1"),
        "container_port": 80,
    }
    with pytest.raises(NatError, match=match):
        PortMapping(**{**base, **kwargs})  # type: ignore[arg-type]
