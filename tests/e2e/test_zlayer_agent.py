"""ZLayer's agent through its whole lifecycle, driven the way the agent drives a daemon.

What the agent does (read from ZLayer's ``overlay_manager.rs``, ``hcs.rs``,
``daemon.rs`` and ``zlayer-overlayd``'s ``client.rs``; this is our own code):

* one connection for everything; each call writes a request and reads frames
  until its answer; nothing is read between calls;
* at start: ``set_local_node_id`` (0: the real id is never forwarded), then
  ``setup_global_overlay`` with ``instance_id`` = its own pid, the cluster CIDR
  ``10.200.0.0/16``, no ``slice_cidr`` (a ``with_slice`` manager sends one), the
  port and ``nat_enabled``; then ``status``, whose node address, CIDRs and
  slice it caches (its leader registers the cached slice as the node's);
* per service ``setup_service_overlay``; Linux containers are attached by pid
  with the node's ``dns_server``/``dns_domain``; VMs as ``guest_managed``;
* the HCS runtime allocates a container's address itself from the node slice
  (the slice's ``.1`` reserved, then ``.2``, ``.3`` ...), attaches with
  ``windows_container {container_id, ip}`` and detaches with the *namespace
  GUID* the attach answered in ``container_id``;
* at a graceful shutdown: ``teardown_global_overlay``; a crash sends nothing.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from overlayd_hcn.driver import HcnDriver

from .conftest import AgentConnection
from .conftest import InProcDaemon

CLUSTER = "10.200.0.0/16"
PEER = "aDlk2hH3mTqJq8DVRk9f0lZ0n3Hk0Jm0bZ4rK1d3CUk="


class Agent:
    """One run of ZLayer's agent: its pid, its connection and its calls."""

    def __init__(
        self,
        socket: Path,
        pid: int,
        *,
        slice_cidr: str | None = None,
        cluster: str = CLUSTER,
        port: int = 51820,
    ) -> None:
        self.socket = socket
        self.pid = pid
        self.slice_cidr = slice_cidr
        self.cluster = cluster
        self.port = port
        self.conn: AgentConnection | None = None
        self.interface: str | None = None
        self.status: dict[str, Any] = {}

    def setup_request(self) -> dict[str, Any]:
        request: dict[str, Any] = {
            "op": "setup_global_overlay",
            "deployment": "prod",
            "instance_id": str(self.pid),
            "cluster_cidr": self.cluster,
            "wg_port": self.port,
            "nat_enabled": True,
        }
        if self.slice_cidr is not None:
            request["slice_cidr"] = self.slice_cidr
        return request

    @classmethod
    async def started(cls, socket: Path, pid: int, *services: str, **options: Any) -> Agent:
        """An agent that has set the node up and deployed the shared ``services``."""
        agent = cls(socket, pid, **options)
        await agent.start()
        for service in services:
            await agent.deploy(service)
        return agent

    async def start(self) -> dict[str, Any]:
        """``OverlayManager::setup_global_overlay``: the answer to the set-up."""
        self.conn = await AgentConnection.connect(self.socket)
        await self.conn.call({"op": "set_local_node_id", "node_id": 0})
        answer = await self.conn.call(self.setup_request())
        if answer["result"] == "bridge_name":
            self.interface = answer["name"]
        self.status = await self.conn.ok({"op": "status"})
        return answer

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.conn is not None
        return await self.conn.ok(request)

    async def deploy(self, service: str, mode: str = "shared") -> dict[str, Any]:
        return await self.call({"op": "setup_service_overlay", "service": service, "mode": mode})

    async def attach(self, pid: int, service: str, *, join_global: bool = True) -> str:
        answer = await self.call(
            {
                "op": "attach_container",
                "handle": {"platform": "linux_pid", "pid": pid},
                "service": service,
                "join_global": join_global,
                "dns_server": "10.200.0.1",
                "dns_domain": "prod.local",
            }
        )
        assert answer["result"] == "attached" and "namespace_guid" not in answer
        return str(answer["ip"])

    async def attach_guest(self, vm: str, service: str) -> dict[str, Any]:
        answer = await self.call(
            {
                "op": "attach_container",
                "handle": {"platform": "guest_managed", "id": vm},
                "service": service,
                "join_global": False,
            }
        )
        assert answer["result"] == "guest_config"
        return answer

    async def add_global_peer(self, key: str, endpoint: str, allowed_ips: str) -> None:
        await self.call(
            {
                "op": "add_peer",
                "public_key": key,
                "endpoint": endpoint,
                "allowed_ips": allowed_ips,
                "persistent_keepalive_secs": 25,
                "scope": {"scope": "global"},
            }
        )

    async def hcs_attach(self, container: str, service: str, ip: str) -> dict[str, Any]:
        """``HcsRuntime::overlayd_attach_windows``: the IP is the runtime's own."""
        answer = await self.call(
            {
                "op": "attach_container",
                "handle": {"platform": "windows_container", "container_id": container, "ip": ip},
                "service": service,
                "join_global": False,
                "dns_server": "10.200.0.1",
                "dns_domain": "prod.local",
            }
        )
        assert answer["result"] == "attached" and answer["namespace_guid"]
        return answer

    async def hcs_detach(self, namespace_guid: str) -> None:
        """``HcsRuntime::overlayd_detach_windows``: by the namespace GUID."""
        await self.call(
            {
                "op": "detach_container",
                "handle": {"platform": "windows_container", "container_id": namespace_guid},
            }
        )

    async def shutdown(self) -> None:
        """Graceful shutdown: ``OverlayManager::cleanup``."""
        await self.call({"op": "teardown_global_overlay"})
        await self.crash()

    async def crash(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None


def _hcs_ips(slice_cidr: str) -> itertools.islice[str]:
    """The HCS runtime's allocator: the slice's addresses from ``.2`` on."""
    hosts = ipaddress.ip_network(slice_cidr).hosts()
    next(hosts)  # .1, the overlay network's gateway, is reserved
    return itertools.islice((str(h) for h in hosts), 0, None)


def _same_overlay(before: dict[str, Any], after: dict[str, Any]) -> None:
    for field in ("interface", "node_ip", "public_key", "overlay_cidr", "peers", "service_count"):
        assert after.get(field) == before.get(field), field


async def _attachments(conn: AgentConnection) -> list[dict[str, Any]]:
    return list((await conn.ok({"op": "list_attachments"}))["attachments"])


# -- Linux agent -----------------------------------------------------------------------


@pytest.fixture
async def first(inproc: InProcDaemon) -> Agent:
    """The first run of the agent (pid 1000) on a started daemon, service web deployed."""
    await inproc.start()
    return await Agent.started(inproc.socket, 1000, "web")


async def test_an_agent_restart_after_a_crash_adopts_the_overlay(inproc: InProcDaemon) -> None:
    await inproc.start()
    first = Agent(inproc.socket, pid=1000)
    assert (await first.start())["result"] == "bridge_name"
    web = await first.deploy("web")
    ip = await first.attach(4242, "web")
    await first.add_global_peer(PEER, "10.0.0.2:51820", "10.200.16.0/20")
    status = await first.call({"op": "status"})
    await first.crash()

    second = Agent(inproc.socket, pid=2000)
    answer = await second.start()
    assert answer == {"result": "bridge_name", "name": first.interface}
    _same_overlay(status, second.status)
    assert second.status["peers"][0]["public_key"] == PEER
    # The agent attaches its containers again: the same answer, nothing new.
    assert await second.deploy("web") == web
    assert await second.attach(4242, "web") == ip
    assert inproc.fake is not None
    devices = [d for d in inproc.fake.host.devices.values() if d.kind == "wireguard"]
    assert [d.name for d in devices] == [first.interface]
    assert second.conn is not None and second.conn.events == []
    await second.crash()


async def test_an_agent_restart_after_a_daemon_restart_adopts_the_overlay(
    inproc: InProcDaemon, first: Agent
) -> None:
    ip = await first.attach(4242, "web")
    status = await first.call({"op": "status"})
    await first.crash()
    await inproc.restart()
    second = Agent(inproc.socket, pid=3000)
    assert (await second.start())["name"] == first.interface
    _same_overlay(status, second.status)
    assert await second.attach(4242, "web") == ip
    await second.crash()


async def test_status_reports_only_a_slice_that_was_given(inproc: InProcDaemon) -> None:
    await inproc.start()
    agent = await Agent.started(inproc.socket, 1000)
    # The agent never sent a slice: none is reported (not the whole /16, which
    # its leader would register as this node's slice).
    assert "slice_cidr" not in agent.status
    assert agent.status["overlay_cidr"] == CLUSTER
    await agent.shutdown()
    sliced = await Agent.started(inproc.socket, 1001, slice_cidr="10.200.32.0/20")
    assert sliced.status["slice_cidr"] == "10.200.32.0/20"
    await sliced.crash()


async def test_graceful_shutdown_keeps_the_containers_and_the_restart_readopts(
    inproc: InProcDaemon, first: Agent
) -> None:
    ip = await first.attach(4242, "web")
    guest = await first.attach_guest("vm-1", "web")
    await first.add_global_peer(PEER, "10.0.0.2:51820", "10.200.16.0/20")
    before = await first.call({"op": "status"})
    assert first.conn is not None
    attachments = await _attachments(first.conn)
    leases = (await first.conn.ok({"op": "list_leases"}))["leases"]
    await first.shutdown()

    fake = inproc.fake
    assert fake is not None
    kinds = sorted(d.kind for d in fake.host.devices.values())
    assert kinds == ["bridge"]  # the global device went, the service's bridge stayed
    assert sorted(fake.host.attachments) == ["guest_managed:vm-1", "linux_pid:4242"]
    probe = await AgentConnection.connect(inproc.socket)
    assert await _attachments(probe) == attachments
    assert (await probe.ok({"op": "list_leases"}))["leases"] == leases
    down = await probe.ok({"op": "status"})
    assert "interface" not in down and "public_key" not in down
    assert down["node_ip"] == before["node_ip"] and down["service_count"] == 1
    await probe.close()

    second = Agent(inproc.socket, pid=2000)
    assert (await second.start())["name"] == first.interface
    assert second.status["public_key"] == before["public_key"]
    assert second.status["node_ip"] == before["node_ip"]
    assert await second.attach(4242, "web") == ip
    # The device came back with the same key; the guest's peer came back with
    # it; the agent's own peers are the agent's to add again.
    held = fake.host.peers[first.interface or ""]
    assert set(held) == {guest["public_key"]}
    await second.add_global_peer(PEER, "10.0.0.2:51820", "10.200.16.0/20")
    assert second.conn is not None
    assert await _attachments(second.conn) == attachments
    await second.crash()


async def test_what_an_agent_cannot_change_is_refused_clearly(inproc: InProcDaemon) -> None:
    await inproc.start()
    agent = await Agent.started(inproc.socket, 1000)
    assert agent.conn is not None
    for other, reason in (
        (Agent(inproc.socket, 2, cluster="10.201.0.0/16"), "cluster_cidr 10.200.0.0/16, not"),
        (Agent(inproc.socket, 3, port=51821), "wg_port 51820, not 51821"),
        (Agent(inproc.socket, 4, slice_cidr="10.200.4.0/24"), "slice_cidr 10.200.0.0/16, not"),
    ):
        answer = await agent.conn.call(other.setup_request())
        assert answer["result"] == "err"
        assert "set up differently" in answer["message"] and reason in answer["message"]
    _same_overlay(agent.status, await agent.call({"op": "status"}))
    await agent.crash()


async def test_a_guest_is_told_the_node_underlay_endpoint(inproc: InProcDaemon) -> None:
    await inproc.start()
    agent = await Agent.started(inproc.socket, 1000, "vms")
    config = await agent.attach_guest("vm-1", "vms")
    (node,) = config["peers"]
    assert node["public_key"] == agent.status["public_key"]
    assert node["endpoint"] == "192.0.2.1:51820"  # the fake host's underlay address
    await agent.crash()
    await inproc.stop()
    inproc.configure(driver_settings={"fake": {"underlay_address": "10.0.0.9"}})
    await inproc.start()
    agent = await Agent.started(inproc.socket, 1001)
    config = await agent.attach_guest("vm-2", "vms")
    assert config["peers"][0]["endpoint"] == "10.0.0.9:51820"
    await agent.crash()


async def test_a_small_slice_gives_each_service_room_for_many_containers(
    inproc: InProcDaemon,
) -> None:
    await inproc.start()
    agent = await Agent.started(inproc.socket, 1000, slice_cidr="10.200.0.16/28")
    subnets = {}
    for base, service in ((100, "web"), (200, "api")):
        await agent.deploy(service)
        pids = range(base, base + 10)
        ips = [await agent.attach(pid, service, join_global=False) for pid in pids]
        assert len(set(ips)) == 10
        nets = {ipaddress.ip_network(f"{ip}/28", strict=False) for ip in ips}
        assert len(nets) == 1
        subnets[service] = nets.pop()
    dedicated = await agent.deploy("db", "dedicated")
    subnets["db"] = ipaddress.ip_network(dedicated["subnet"])
    node_slice = ipaddress.ip_network("10.200.0.16/28")
    for net in subnets.values():
        assert net.prefixlen == 28 and net.subnet_of(ipaddress.ip_network(CLUSTER))
        assert not net.overlaps(node_slice)
    assert len(set(subnets.values())) == 3
    # nat_enabled: a subnet outside the slice is masqueraded on its own.
    assert inproc.fake is not None
    assert {str(n) for n in subnets.values()} <= set(inproc.fake.host.masquerades)
    # The slice itself is the node pool: join_global addresses come from it.
    eth1 = await agent.call({"op": "allocate_ip", "service": "web", "join_global": True})
    assert ipaddress.ip_address(eth1["ip"]) in node_slice
    await agent.crash()


# -- Windows: the HCS runtime on the hcn simulator ---------------------------------------


def _hcn(inproc: InProcDaemon) -> dict[str, Any]:
    path = inproc.data_dir / "hcn-sim" / "hcn-simulator.json"
    return dict(json.loads(path.read_text()))


async def _windows(inproc: InProcDaemon) -> None:
    inproc.configure(
        engine={"segment_kind": "hcn-network"},
        driver_settings={"hcn": {"backend": "simulator"}},
    )
    await inproc.start(HcnDriver())


async def test_hcs_detach_by_namespace_guid_frees_endpoint_namespace_and_address(
    inproc: InProcDaemon,
) -> None:
    await _windows(inproc)
    agent = await Agent.started(inproc.socket, 1000, "web", slice_cidr="10.200.0.0/20")
    ip = "10.200.4.10"
    attached = await agent.hcs_attach("hcs-c1", "web", ip)
    assert attached["ip"] == ip
    guid = attached["namespace_guid"]
    hcn = _hcn(inproc)
    assert len(hcn["endpoints"]) == 1
    assert guid in {n["ID"].lower() for n in hcn["namespaces"]}
    await agent.hcs_detach(guid)
    hcn = _hcn(inproc)
    assert hcn["endpoints"] == []
    assert [n for n in hcn["namespaces"] if n["Type"] == "Host"] == []
    assert await agent.call({"op": "list_leases"}) == {"result": "leases", "leases": []}
    assert agent.conn is not None and await _attachments(agent.conn) == []
    # The address is free again: the runtime's allocator may hand it out anew.
    again = await agent.hcs_attach("hcs-c2", "web", ip)
    assert again["ip"] == ip
    await agent.hcs_detach(again["namespace_guid"])
    await agent.hcs_detach(again["namespace_guid"])  # unknown now: still ok
    await agent.crash()


async def test_hcs_addresses_from_the_slice_are_accepted_and_never_given_twice(
    inproc: InProcDaemon,
) -> None:
    await _windows(inproc)
    agent = await Agent.started(inproc.socket, 1000, "web", "api", slice_cidr="10.200.0.16/28")
    ips = _hcs_ips("10.200.0.16/28")
    taken = []
    # A /28 slice: many containers per service, on any service, at the
    # runtime's own addresses.
    for n, service in enumerate(["web", "api", "web", "web", "api", "web"]):
        ip = next(ips)
        taken.append(ip)
        assert (await agent.hcs_attach(f"hcs-{n}", service, ip))["ip"] == ip
    assert agent.conn is not None
    clash = await agent.conn.call(
        {
            "op": "attach_container",
            "handle": {"platform": "windows_container", "container_id": "hcs-x", "ip": taken[0]},
            "service": "api",
            "join_global": False,
        }
    )
    assert clash["result"] == "err" and "already leased" in clash["message"]
    # Addresses overlayd picks itself never collide with the runtime's.
    chosen = await agent.call(
        {
            "op": "attach_container",
            "handle": {"platform": "windows_container", "container_id": "hcs-own"},
            "service": "web",
            "join_global": False,
        }
    )
    assert chosen["ip"] not in taken
    outside = await agent.conn.call(
        {
            "op": "attach_container",
            "handle": {
                "platform": "windows_container",
                "container_id": "hcs-y",
                "ip": "10.200.9.9",
            },
            "service": "web",
            "join_global": False,
        }
    )
    assert outside["result"] == "err" and "outside the node slice" in outside["message"]
    await agent.crash()


async def test_hcs_dedicated_service_beside_the_base_network(inproc: InProcDaemon) -> None:
    await _windows(inproc)
    agent = await Agent.started(inproc.socket, 1000, "web", slice_cidr="10.200.0.16/28")
    ips = _hcs_ips("10.200.0.16/28")
    await agent.hcs_attach("hcs-w1", "web", next(ips))
    dedicated = await agent.deploy("db", "dedicated")
    subnet = ipaddress.ip_network(dedicated["subnet"])
    assert not subnet.overlaps(ipaddress.ip_network("10.200.0.16/28"))
    attached = await agent.hcs_attach("hcs-d1", "db", str(next(subnet.hosts()) + 2))
    networks = _hcn(inproc)["networks"]
    prefixes = [
        ipaddress.ip_network(s["IpAddressPrefix"])
        for n in networks
        for ipam in n["Ipams"]
        for s in ipam["Subnets"]
    ]
    assert len(prefixes) == 2
    assert not prefixes[0].overlaps(prefixes[1])
    await agent.hcs_detach(attached["namespace_guid"])
    await agent.crash()
