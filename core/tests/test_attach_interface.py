"""CNI attachments through the daemon: ``attach_interface``, identity keys, scoped GC.

An in-process server over the fake driver, driven over its socket with the
typed client, as the CNI plugin's daemon sees it (the plugin itself uses
:class:`overlayd.rawclient.RawClient`, tested in ``test_rawclient.py``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from overlayd import protocol as p
from overlayd.client import AsyncClient
from overlayd.client import RemoteError
from overlayd.config import DnsSettings
from overlayd.engine import _short_name
from overlayd.model import NetnsHandle
from overlayd.model import handle_key
from overlayd.testing.inproc import serving
from overlayd.testing.inproc import setup_overlay
from overlayd_fake.driver import FakeDriver

CLUSTER = "10.240.0.0/16"


def cni(cid: str, ifname: str = "eth0", network: str = "ovl", *, path: bool = True) -> Any:
    return p.NetnsHandle(
        path=f"/run/netns/{cid}" if path else None,
        container_id=cid,
        ifname=ifname,
        network=network,
    )


@pytest.fixture
def root(short_tmp_path: Path) -> Path:
    return short_tmp_path


async def _serve(root: Path, dns: DnsSettings) -> AsyncIterator[AsyncClient]:
    fake = lambda: [FakeDriver()]  # noqa: E731 - a fresh driver per start
    async with serving(root, make_drivers=fake, in_memory=True, dns=dns) as daemon:
        client = await daemon.client()
        await setup_overlay(client, cluster_cidr=CLUSTER)
        yield client


@pytest.fixture
async def client(root: Path) -> AsyncIterator[AsyncClient]:
    async for c in _serve(root, DnsSettings(enabled=False)):
        yield c


@pytest.fixture
async def dns_client(root: Path) -> AsyncIterator[AsyncClient]:
    # DNS on, but no listener is opened by the fake driver's DNS plugin here:
    # the answer only reports where overlayd's server listens.
    async for c in _serve(root, DnsSettings(enabled=True, gateway_port=53)):
        yield c


def test_cni_identity_is_the_key_and_needs_no_path() -> None:
    with_path = NetnsHandle(path="/run/netns/a", container_id="c1", ifname="net1", network="n")
    without = NetnsHandle(container_id="c1", ifname="net1", network="n")
    assert handle_key(with_path) == handle_key(without) == "cni:n:c1:net1"
    # The same namespace under two interface names is two attachments.
    other_if = NetnsHandle(path="/run/netns/a", container_id="c1", ifname="eth0", network="n")
    assert handle_key(other_if) != handle_key(with_path)
    # Without a container id the path stays the identity (unchanged keys of stored state).
    assert handle_key(NetnsHandle(path="/run/netns/a")) == "netns:/run/netns/a"
    assert NetnsHandle(container_id="c1").container_ifname == "eth0"
    assert _short_name(with_path) == "c1-net1"
    assert _short_name(NetnsHandle(container_id="ABCDEF0123456789")) == "abcdef012345"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "needs a path"),
        ({"path": "/x", "ifname": "eth1"}, "need container_id"),
        ({"path": "/x", "network": "n"}, "need container_id"),
        ({"container_id": "-bad"}, "container_id '-bad' is invalid"),
        ({"container_id": "a:b"}, "container_id 'a:b' is invalid"),
        ({"container_id": "c", "network": "a/b"}, "network 'a/b' is invalid"),
        ({"container_id": "c", "ifname": "x" * 16}, "longer than 15 bytes"),
        ({"container_id": "c", "ifname": ".."}, "'..' is not a valid interface name"),
        ({"container_id": "c", "ifname": "e th0"}, "whitespace"),
    ],
)
def test_invalid_netns_handles_are_refused(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NetnsHandle(**fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        p.NetnsHandle(**fields)  # type: ignore[arg-type]


async def test_attach_interface_reports_what_a_cni_result_needs(client: AsyncClient) -> None:
    info = await client.attach_interface(cni("c1", "net1"), "web", create_mode="shared")
    assert info.ifname == "net1"
    assert info.mac is not None and int(info.mac.split(":")[0], 16) & 0x02
    assert info.gateway is not None and info.prefix_len is not None
    subnet = ipaddress.ip_network(f"{info.gateway}/{info.prefix_len}", strict=False)
    assert ipaddress.ip_address(info.ip) in subnet
    assert subnet.subnet_of(ipaddress.IPv4Network(CLUSTER))
    assert info.routes == ["0.0.0.0/0"]
    assert info.mtu == 1420
    assert info.dns_servers is None  # DNS is off in this daemon
    assert info.dns_domain == "prod.local"
    assert info.interfaces and info.driver == "fake"
    # Idempotent per identity: the same answer, no second address.
    again = await client.attach_interface(cni("c1", "net1"), "web", create_mode="shared")
    assert again.ip == info.ip and again.mac == info.mac
    assert len(await client.list_leases("service:web")) == 1
    # The listing by handle finds it without the path.
    (listed,) = await client.list_attachments(handle=cni("c1", "net1", path=False))
    assert listed == info
    assert await client.list_attachments(handle=cni("c2")) == []


async def test_create_mode_creates_a_missing_service_and_keeps_an_existing_one(
    client: AsyncClient,
) -> None:
    with pytest.raises(RemoteError, match="no overlay on this node"):
        await client.attach_interface(cni("c1"), "web")
    await client.setup_service_overlay("db", "dedicated")
    # An existing dedicated service is used as it is (no mode conflict with "auto").
    info = await client.attach_interface(cni("c2"), "db", create_mode="auto")
    assert info.service == "db"
    await client.attach_interface(cni("c1"), "web", create_mode="auto")
    assert {a.service for a in await client.list_attachments()} == {"web", "db"}


async def test_without_default_route_the_cluster_is_routed_via_the_gateway(
    client: AsyncClient,
) -> None:
    info = await client.attach_interface(
        cni("c1", "net1"), "web", create_mode="shared", default_route=False
    )
    assert info.routes == [CLUSTER]


async def test_the_answer_names_overlayds_dns_server_on_the_gateway(
    dns_client: AsyncClient,
) -> None:
    info = await dns_client.attach_interface(cni("c1"), "web", create_mode="shared")
    assert info.dns_servers == [info.gateway]
    assert info.dns_domain == "prod.local"


async def test_detach_by_identity_needs_no_path_and_is_idempotent(client: AsyncClient) -> None:
    await client.attach_interface(cni("c1", "net1"), "web", create_mode="shared")
    gone = cni("c1", "net1", path=False)
    await client.detach_container(gone)
    await client.detach_container(gone)
    assert await client.list_attachments() == []
    assert await client.list_leases("service:web") == []


async def test_attaching_needs_a_path_and_guests_are_refused(client: AsyncClient) -> None:
    await client.setup_service_overlay("web")
    with pytest.raises(RemoteError, match="needs its path"):
        await client.attach_interface(p.NetnsHandle(container_id="c1"), "web")
    with pytest.raises(RemoteError, match="use attach_container"):
        await client.attach_interface(p.GuestManagedHandle(id="vm1"), "web")
    assert await client.list_attachments() == []


async def test_gc_with_a_network_only_touches_that_networks_attachments(
    client: AsyncClient,
) -> None:
    await client.setup_service_overlay("web")
    await client.attach_interface(cni("a"), "web")
    await client.attach_interface(cni("b"), "web")
    await client.attach_interface(cni("b", "net1"), "web")
    await client.attach_interface(cni("x", network="other"), "web")
    await client.attach_container(p.LinuxPidHandle(pid=4242), "web")
    await client.attach_container(p.NetnsHandle(path="/run/netns/plain"), "web")
    valid = [p.NetnsHandle(container_id="b", ifname="eth0", network="ovl")]
    dry = await client.gc(valid, network="ovl", dry_run=True)
    assert len(dry.released) == 2 and dry.kept == 1
    report = await client.gc(valid, network="ovl")
    released = {(h.container_id, h.ifname) for h in report.released if isinstance(h, p.NetnsHandle)}
    assert released == {("a", "eth0"), ("b", "net1")}
    assert report.kept == 1
    left = {_label(a.handle) for a in await client.list_attachments()}
    assert left == {"cni:b", "cni:x", "linux_pid", "netns"}


def _label(handle: p.AnyHandle) -> str:
    if isinstance(handle, p.NetnsHandle) and handle.container_id is not None:
        return f"cni:{handle.container_id}"
    return handle.platform
