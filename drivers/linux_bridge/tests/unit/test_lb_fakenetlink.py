"""The in-memory netlink fake models the kernel rules the driver relies on."""

from __future__ import annotations

from ipaddress import ip_address
from ipaddress import ip_interface

import pytest

from overlayd.errors import AttachError
from overlayd.errors import DeviceError
from overlayd.names import is_tombstone
from overlayd.names import veth_host_name
from overlayd_linux_bridge.fakenetlink import FakeNetlink
from overlayd_linux_bridge.linkapi import TOMBSTONE_GROUP
from overlayd_linux_bridge.linkapi import LinkExistsError
from overlayd_linux_bridge.linkapi import Netlink
from overlayd_linux_bridge.linkapi import VethSpec

GW = ip_interface("10.77.0.1/24")


@pytest.fixture
def fake() -> FakeNetlink:
    return FakeNetlink()


def _attach(fake: FakeNetlink, fd: int, n: int, ifname: str = "eth0") -> str:
    host = veth_host_name(f"k{fd}", 0 if ifname == "eth0" else 1)
    fake.create_veth_into_netns(
        VethSpec(
            host_name=host,
            netns_fd=fd,
            container_ifname=ifname,
            addresses=[ip_interface(f"10.77.0.{n}/24")],
            gateways=[GW.ip],
            bridge="zl-t-b",
        )
    )
    return host


def test_fake_satisfies_protocol(fake: FakeNetlink) -> None:
    adapter: Netlink = fake
    assert adapter.link_exists("lo")


def test_ensure_bridge_is_idempotent(fake: FakeNetlink) -> None:
    first = fake.ensure_bridge("zl-t-b", [GW])
    assert fake.ensure_bridge("zl-t-b", [GW]) == first
    (info,) = fake.list_links("zl-t-b")
    assert info.kind == "bridge"
    assert info.up
    assert fake.host.links["zl-t-b"].addresses == [GW]


def test_long_names_are_refused_like_the_kernel(fake: FakeNetlink) -> None:
    with pytest.raises(DeviceError, match="Invalid argument"):
        fake.ensure_bridge("zl-sixteen-bytes", [])


def test_veth_lands_in_namespace_with_routes(fake: FakeNetlink) -> None:
    fake.ensure_bridge("zl-t-b", [GW])
    fd = fake.new_netns()
    host = _attach(fake, fd, 10)
    ns = fake.namespaces[fd]
    assert ns.links["eth0"].addresses == [ip_interface("10.77.0.10/24")]
    assert ns.links["lo"].up
    assert [(i, str(r.dst), r.gateway) for i, r in ns.routes] == [
        ("eth0", "0.0.0.0/0", ip_address("10.77.0.1"))
    ]
    assert fake.host.links[host].master == fake.host.links["zl-t-b"].index


def test_duplicate_host_name_raises(fake: FakeNetlink) -> None:
    fake.ensure_bridge("zl-t-b", [GW])
    fd = fake.new_netns()
    host = _attach(fake, fd, 10)
    other = fake.new_netns()
    with pytest.raises(LinkExistsError, match=host):
        fake.create_veth_into_netns(
            VethSpec(host_name=host, netns_fd=other, container_ifname="eth0", addresses=[])
        )


def test_unknown_namespace_fails_like_ebadf(fake: FakeNetlink) -> None:
    with pytest.raises(AttachError, match="Bad file descriptor"):
        fake.create_veth_into_netns(
            VethSpec(
                host_name="zv0000000000000",
                netns_fd=4242,
                container_ifname="eth0",
                addresses=[],
            )
        )


def test_gateway_off_subnet_is_unreachable(fake: FakeNetlink) -> None:
    fd = fake.new_netns()
    with pytest.raises(AttachError, match="unreachable"):
        fake.create_veth_into_netns(
            VethSpec(
                host_name="zv0000000000000",
                netns_fd=fd,
                container_ifname="eth0",
                addresses=[ip_interface("10.77.0.10/24")],
                gateways=[ip_address("10.99.0.1")],
            )
        )
    assert not fake.link_exists("zv0000000000000")


def test_deleting_host_end_removes_container_end(fake: FakeNetlink) -> None:
    fake.ensure_bridge("zl-t-b", [GW])
    fd = fake.new_netns()
    host = _attach(fake, fd, 10)
    assert fake.delete_link(host) is True
    assert "eth0" not in fake.namespaces[fd].links
    assert fake.delete_link(host) is False


def test_batch_delete_frees_names_before_flush(fake: FakeNetlink) -> None:
    fake.ensure_bridge("zl-t-b", [GW])
    fds = [fake.new_netns() for _ in range(3)]
    hosts = [_attach(fake, fd, 10 + i) for i, fd in enumerate(fds)]
    assert fake.delete_links_batch([*hosts, "zvmissing000000"]) == 3
    assert not any(fake.link_exists(h) for h in hosts)
    pending = [lk for lk in fake.list_links() if lk.group == TOMBSTONE_GROUP]
    assert len(pending) == 3
    assert all(is_tombstone(lk.name) for lk in pending)
    # The container end is still there until the batch runs...
    assert "eth0" in fake.namespaces[fds[1]].links
    # ...and re-attaching into the same namespace flushes it on demand.
    _attach(fake, fds[0], 10)
    assert fake.deleter_batches == 1
    assert not [lk for lk in fake.list_links() if lk.group == TOMBSTONE_GROUP]
    assert "eth0" not in fake.namespaces[fds[1]].links


def test_namespace_death_takes_host_end(fake: FakeNetlink) -> None:
    fake.ensure_bridge("zl-t-b", [GW])
    fd = fake.new_netns()
    host = _attach(fake, fd, 10)
    fake.remove_netns(fd)
    assert not fake.link_exists(host)


def test_enable_forwarding_records_previous_once(fake: FakeNetlink) -> None:
    assert fake.enable_forwarding(ipv4=True) == {"/proc/sys/net/ipv4/ip_forward": "0"}
    assert fake.enable_forwarding(ipv4=True) == {}
    assert fake.previous_sysctls == {"/proc/sys/net/ipv4/ip_forward": "0"}
    assert fake.sysctls["/proc/sys/net/ipv6/conf/all/forwarding"] == "0"


def test_fault_injection_and_call_log(fake: FakeNetlink) -> None:
    fake.fail_next("ensure_bridge", DeviceError("boom"))
    with pytest.raises(DeviceError, match="boom"):
        fake.ensure_bridge("zl-t-b", [GW])
    assert not fake.link_exists("zl-t-b")
    fake.ensure_bridge("zl-t-b", [GW])
    assert [name for name, _ in fake.calls] == ["ensure_bridge", "ensure_bridge"]
