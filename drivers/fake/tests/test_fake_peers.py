"""The fake driver's peer table: one change touches only the peers it names."""

from __future__ import annotations

import ipaddress

from overlayd.model import DeviceKind
from overlayd.model import DeviceSpec
from overlayd.model import PeerChange
from overlayd_fake.driver import FakeDriver

KEY = "YOnqvqXWSCdqVaX4tsnUpZ2zxJ0I+dJcuZ7Lj1gRe3Y="
A = "aDlk2hH3mTqJq8DVRk9f0lZ0n3Hk0Jm0bZ4rK1d3CUk="
B = "cHZ7Fq1vJdNq1PkE3XtKx8U1lWkqH4Qm2D6b1tWYn2w="
C = "eN8yQz5s0kP2ZcV4mW9bX1rT7uJ3hG6fD2aS8lK0pHE="
NET = ipaddress.ip_network("10.9.1.0/24")
SPEC = DeviceSpec(
    kind=DeviceKind.WIREGUARD,
    name="zl-t-g",
    owner="base",
    addresses=(ipaddress.ip_interface("10.9.0.1/16"),),
    listen_port=51820,
    private_key=KEY,
)


def _owners(fake: FakeDriver, device: object) -> dict[str, list[str]]:
    return {
        p.public_key: [str(n) for n in p.allowed_ips]
        for p in fake.overlayd_peer_status(device=device) or []
    }


def _give(key: str) -> PeerChange:
    return PeerChange(public_key=key, endpoint="10.9.0.2:51820", allowed_ips=(NET,))


def test_a_prefix_moves_between_peers_across_calls_and_after_a_new_device() -> None:
    fake = FakeDriver()
    device = fake.overlayd_device_create(spec=SPEC)
    fake.overlayd_peer_apply(device=device, changes=[_give(A)])
    fake.overlayd_peer_apply(device=device, changes=[_give(B)])  # moves from A
    assert _owners(fake, device) == {A: [], B: [str(NET)]}
    fake.overlayd_peer_apply(device=device, changes=[PeerChange(public_key=B, remove=True)])
    fake.overlayd_peer_apply(device=device, changes=[_give(C)])  # nobody held it: no move
    assert _owners(fake, device) == {A: [], C: [str(NET)]}
    # a device deleted and created again has a new, empty table: nothing stale moves
    fake.overlayd_device_delete(device=device)
    device = fake.overlayd_device_create(spec=SPEC)
    fake.overlayd_peer_apply(device=device, changes=[_give(A)])
    assert _owners(fake, device) == {A: [str(NET)]}
    fake.overlayd_peer_apply(device=device, changes=[_give(B)])
    assert _owners(fake, device) == {A: [], B: [str(NET)]}
