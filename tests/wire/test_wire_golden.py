"""Golden frames of the IPC contract (docs/reference/zlayer.rst): exact bytes and decoding.

Every JSON literal below is written by hand from docs/reference/zlayer.rst (tag first,
fields in ZLayer's declaration order, ``None`` omitted, ``scope`` always present
as ZLayer's serde emits it). The encoder must produce exactly these bytes and
the decoder must read them back into the same models.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlayd import protocol as p

K1 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
K2 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
GUID = "aabbccdd-eeff-0011-2233-445566778899"
G = '{"scope":"global"}'


def req(frame_id: int, request: p.AnyRequest) -> p.RequestFrame:
    return p.RequestFrame(id=frame_id, request=request)


def resp(frame_id: int, response: p.AnyResponse) -> p.ResponseFrame:
    return p.ResponseFrame(id=frame_id, response=response)


def rq(frame_id: int, body: str) -> str:
    return f'{{"frame":"request","id":{frame_id},"request":{body}}}'


def rs(frame_id: int, body: str) -> str:
    return f'{{"frame":"response","id":{frame_id},"response":{body}}}'


PID = p.LinuxPidHandle(pid=4242)
PID_JSON = '{"platform":"linux_pid","pid":4242}'
# A CNI attachment: identity (network, container_id, ifname); the path is only
# needed to attach.
CNI = p.NetnsHandle(path="/run/netns/c1", container_id="c0ffee", ifname="net1", network="ovl")
CNI_JSON = (
    '{"platform":"netns","path":"/run/netns/c1","container_id":"c0ffee",'
    '"ifname":"net1","network":"ovl"}'
)
CNI_DEL = p.NetnsHandle(container_id="c0ffee", ifname="net1", network="ovl")
CNI_DEL_JSON = '{"platform":"netns","container_id":"c0ffee","ifname":"net1","network":"ovl"}'

REQUESTS: list[tuple[str, p.Frame, str]] = [
    (
        "set_local_node_id",
        req(1, p.SetLocalNodeIdRequest(node_id=2**64 - 1)),
        rq(1, '{"op":"set_local_node_id","node_id":18446744073709551615}'),
    ),
    (
        "set_local_wg_pubkey",
        req(2, p.SetLocalWgPubkeyRequest(pubkey=K1)),
        rq(2, f'{{"op":"set_local_wg_pubkey","pubkey":"{K1}"}}'),
    ),
    (
        "setup_global_overlay",
        req(
            3,
            p.SetupGlobalOverlayRequest(
                deployment="prod",
                instance_id="42",
                cluster_cidr="10.200.0.0/16",
                slice_cidr="10.200.0.0/28",
                wg_port=51820,
                nat_enabled=True,
            ),
        ),
        rq(
            3,
            '{"op":"setup_global_overlay","deployment":"prod","instance_id":"42",'
            '"cluster_cidr":"10.200.0.0/16","slice_cidr":"10.200.0.0/28",'
            '"wg_port":51820,"nat_enabled":true}',
        ),
    ),
    (
        "setup_global_overlay-no-slice",
        req(
            4,
            p.SetupGlobalOverlayRequest(
                deployment="prod",
                instance_id="42",
                cluster_cidr="fd00:200::/48",
                wg_port=0,
                nat_enabled=False,
            ),
        ),
        rq(
            4,
            '{"op":"setup_global_overlay","deployment":"prod","instance_id":"42",'
            '"cluster_cidr":"fd00:200::/48","wg_port":0,"nat_enabled":false}',
        ),
    ),
    (
        "teardown_global_overlay",
        req(5, p.TeardownGlobalOverlayRequest()),
        rq(5, '{"op":"teardown_global_overlay"}'),
    ),
    (
        "setup_service_overlay",
        req(6, p.SetupServiceOverlayRequest(service="web", mode="dedicated")),
        rq(6, '{"op":"setup_service_overlay","service":"web","mode":"dedicated"}'),
    ),
    (
        "teardown_service_overlay",
        req(7, p.TeardownServiceOverlayRequest(service="web")),
        rq(7, '{"op":"teardown_service_overlay","service":"web"}'),
    ),
    (
        "allocate_ip",
        req(8, p.AllocateIpRequest(service="web", join_global=False)),
        rq(8, '{"op":"allocate_ip","service":"web","join_global":false}'),
    ),
    (
        "release_ip",
        req(9, p.ReleaseIpRequest(ip="fd00:200::5")),
        rq(9, '{"op":"release_ip","ip":"fd00:200::5"}'),
    ),
    (
        "attach_container-linux_pid",
        req(10, p.AttachContainerRequest(handle=PID, service="web", join_global=True)),
        rq(
            10,
            f'{{"op":"attach_container","handle":{PID_JSON},"service":"web","join_global":true}}',
        ),
    ),
    (
        "attach_container-windows_container",
        req(
            11,
            p.AttachContainerRequest(
                handle=p.WindowsContainerHandle(container_id="ctr-abc", ip="10.200.0.5"),
                service="web",
                join_global=False,
                dns_server="10.200.0.1",
                dns_domain="overlay",
            ),
        ),
        rq(
            11,
            '{"op":"attach_container","handle":{"platform":"windows_container",'
            '"container_id":"ctr-abc","ip":"10.200.0.5"},"service":"web",'
            '"join_global":false,"dns_server":"10.200.0.1","dns_domain":"overlay"}',
        ),
    ),
    (
        "attach_container-guest_managed",
        req(
            12,
            p.AttachContainerRequest(
                handle=p.GuestManagedHandle(id="vm-1"), service="web", join_global=False
            ),
        ),
        rq(
            12,
            '{"op":"attach_container","handle":{"platform":"guest_managed","id":"vm-1"},'
            '"service":"web","join_global":false}',
        ),
    ),
    (
        "attach_container-netns",
        req(
            13,
            p.AttachContainerRequest(
                handle=p.NetnsHandle(path="/run/netns/c1"),
                service="web",
                join_global=False,
            ),
        ),
        rq(
            13,
            '{"op":"attach_container","handle":{"platform":"netns",'
            '"path":"/run/netns/c1"},"service":"web","join_global":false}',
        ),
    ),
    (
        "detach_container",
        req(14, p.DetachContainerRequest(handle=PID)),
        rq(14, f'{{"op":"detach_container","handle":{PID_JSON}}}'),
    ),
    (
        "add_peer",
        req(
            15,
            p.AddPeerRequest(
                public_key=K1,
                endpoint="node2.cluster.internal:51820",
                allowed_ips="10.200.0.5/32,10.200.1.0/28",
                persistent_keepalive_secs=25,
            ),
        ),
        rq(
            15,
            f'{{"op":"add_peer","public_key":"{K1}",'
            '"endpoint":"node2.cluster.internal:51820",'
            '"allowed_ips":"10.200.0.5/32,10.200.1.0/28",'
            f'"persistent_keepalive_secs":25,"scope":{G}}}',
        ),
    ),
    (
        "add_peer-service-scope",
        req(
            16,
            p.AddPeerRequest(
                public_key=K2,
                endpoint="[fd00::2]:51900",
                allowed_ips="fd00:200:1::/120",
                persistent_keepalive_secs=0,
                scope=p.ServiceScope(service="db"),
            ),
        ),
        rq(
            16,
            f'{{"op":"add_peer","public_key":"{K2}","endpoint":"[fd00::2]:51900",'
            '"allowed_ips":"fd00:200:1::/120","persistent_keepalive_secs":0,'
            '"scope":{"scope":"service","service":"db"}}',
        ),
    ),
    (
        "remove_peer",
        req(17, p.RemovePeerRequest(pubkey=K1)),
        rq(17, f'{{"op":"remove_peer","pubkey":"{K1}","scope":{G}}}'),
    ),
    (
        "add_allowed_ip",
        req(
            18,
            p.AddAllowedIpRequest(
                pubkey=K1, cidr="10.200.1.0/28", scope=p.ServiceScope(service="web")
            ),
        ),
        rq(
            18,
            f'{{"op":"add_allowed_ip","pubkey":"{K1}","cidr":"10.200.1.0/28",'
            '"scope":{"scope":"service","service":"web"}}',
        ),
    ),
    (
        "remove_allowed_ip",
        req(19, p.RemoveAllowedIpRequest(pubkey=K1, cidr="10.200.1.0/28")),
        rq(
            19,
            f'{{"op":"remove_allowed_ip","pubkey":"{K1}","cidr":"10.200.1.0/28","scope":{G}}}',
        ),
    ),
    (
        "register_dns",
        req(20, p.RegisterDnsRequest(name="web.overlay", ip="10.200.0.5")),
        rq(20, '{"op":"register_dns","name":"web.overlay","ip":"10.200.0.5"}'),
    ),
    (
        "unregister_dns",
        req(21, p.UnregisterDnsRequest(name="web.overlay")),
        rq(21, '{"op":"unregister_dns","name":"web.overlay"}'),
    ),
    ("status", req(22, p.StatusRequest()), rq(22, '{"op":"status"}')),
    ("nat_tick", req(23, p.NatTickRequest()), rq(23, '{"op":"nat_tick"}')),
    ("shutdown", req(24, p.ShutdownRequest()), rq(24, '{"op":"shutdown"}')),
    # -- extensions --
    (
        "hello",
        req(25, p.HelloRequest(client="zlayer", protocol_version=1)),
        rq(25, '{"op":"hello","client":"zlayer","protocol_version":1}'),
    ),
    ("hello-bare", req(26, p.HelloRequest()), rq(26, '{"op":"hello"}')),
    (
        "hello-subscribe",
        req(42, p.HelloRequest(events=["peer_health_changed", "nat_endpoint_changed"])),
        rq(42, '{"op":"hello","events":["peer_health_changed","nat_endpoint_changed"]}'),
    ),
    (
        "apply_peers",
        req(
            27,
            p.ApplyPeersRequest(
                changes=[
                    p.PeerChange(public_key=K1, remove=True),
                    p.PeerChange(
                        public_key=K2,
                        endpoint="[fd00::2]:51820",
                        persistent_keepalive_secs=25,
                        allowed_ips="10.200.2.0/28",
                        add_allowed_ips="10.200.3.0/28",
                        remove_allowed_ips="10.200.4.0/28",
                    ),
                ]
            ),
        ),
        rq(
            27,
            f'{{"op":"apply_peers","changes":[{{"public_key":"{K1}","remove":true}},'
            f'{{"public_key":"{K2}","endpoint":"[fd00::2]:51820",'
            '"persistent_keepalive_secs":25,"allowed_ips":"10.200.2.0/28",'
            '"add_allowed_ips":"10.200.3.0/28","remove_allowed_ips":"10.200.4.0/28"}],'
            f'"scope":{G}}}',
        ),
    ),
    (
        "list_attachments",
        req(28, p.ListAttachmentsRequest(service="web")),
        rq(28, '{"op":"list_attachments","service":"web"}'),
    ),
    (
        "list_leases",
        req(29, p.ListLeasesRequest(pool="node")),
        rq(29, '{"op":"list_leases","pool":"node"}'),
    ),
    (
        "gc",
        req(
            30,
            p.GcRequest(live=[PID, p.NetnsHandle(path="/run/netns/x")], dry_run=True),
        ),
        rq(
            30,
            f'{{"op":"gc","live":[{PID_JSON},{{"platform":"netns",'
            '"path":"/run/netns/x"}],"dry_run":true}',
        ),
    ),
    ("reconcile", req(31, p.ReconcileRequest()), rq(31, '{"op":"reconcile"}')),
    (
        "map_port",
        req(
            40,
            p.MapPortRequest(
                protocol="tcp", host_port=8080, container_ip="10.200.4.2", container_port=80
            ),
        ),
        rq(
            40,
            '{"op":"map_port","protocol":"tcp","host_port":8080,'
            '"container_ip":"10.200.4.2","container_port":80}',
        ),
    ),
    (
        "nat_peer_candidates",
        req(
            42,
            p.NatPeerCandidatesRequest(
                public_key=K1,
                candidates=[
                    p.NatCandidateInfo(
                        kind="host", endpoint="192.168.1.7:51820", priority=2130706431
                    ),
                    p.NatCandidateInfo(
                        kind="reflexive",
                        endpoint="198.51.100.7:40312",
                        priority=1526726399,
                        guessed=True,
                    ),
                    p.NatCandidateInfo(kind="relay", endpoint="[2001:db8::3]:49160"),
                ],
            ),
        ),
        rq(
            42,
            f'{{"op":"nat_peer_candidates","public_key":"{K1}","candidates":['
            '{"kind":"host","endpoint":"192.168.1.7:51820","priority":2130706431},'
            '{"kind":"reflexive","endpoint":"198.51.100.7:40312","priority":1526726399,'
            '"guessed":true},{"kind":"relay","endpoint":"[2001:db8::3]:49160"}]}',
        ),
    ),
    (
        "unmap_port",
        req(
            41,
            p.UnmapPortRequest(
                protocol="udp",
                host_port=5353,
                container_ip="fd00:200::5",
                container_port=53,
                host_ip="192.0.2.7",
            ),
        ),
        rq(
            41,
            '{"op":"unmap_port","protocol":"udp","host_port":5353,'
            '"container_ip":"fd00:200::5","container_port":53,"host_ip":"192.0.2.7"}',
        ),
    ),
    ("cluster_status", req(42, p.ClusterStatusRequest()), rq(42, '{"op":"cluster_status"}')),
    (
        "attach_interface",
        req(42, p.AttachInterfaceRequest(handle=CNI, service="web", create_mode="shared")),
        rq(
            42,
            f'{{"op":"attach_interface","handle":{CNI_JSON},"service":"web",'
            '"create_mode":"shared"}',
        ),
    ),
    (
        "attach_interface-no-default-route",
        req(
            43,
            p.AttachInterfaceRequest(
                handle=CNI, service="web", default_route=False, dns_domain="prod.local"
            ),
        ),
        rq(
            43,
            f'{{"op":"attach_interface","handle":{CNI_JSON},"service":"web",'
            '"dns_domain":"prod.local","default_route":false}',
        ),
    ),
    (
        "list_attachments-handle",
        req(44, p.ListAttachmentsRequest(handle=CNI_DEL)),
        rq(44, f'{{"op":"list_attachments","handle":{CNI_DEL_JSON}}}'),
    ),
    (
        "gc-network",
        req(45, p.GcRequest(live=[CNI_DEL], network="ovl")),
        rq(45, f'{{"op":"gc","live":[{CNI_DEL_JSON}],"network":"ovl"}}'),
    ),
    (
        "cni_exec",
        req(
            46,
            p.CniExecRequest(
                command="ADD",
                container_id="c1",
                netns="/run/netns/c1",
                ifname="eth0",
                path="/opt/cni/bin",
                stdin='{"cniVersion":"1.0.0","name":"ovl"}\n',
            ),
        ),
        rq(
            46,
            '{"op":"cni_exec","command":"ADD","container_id":"c1","netns":"/run/netns/c1",'
            '"ifname":"eth0","path":"/opt/cni/bin",'
            '"stdin":"{\\"cniVersion\\":\\"1.0.0\\",\\"name\\":\\"ovl\\"}\\n"}',
        ),
    ),
    (
        "cni_exec-status",
        req(47, p.CniExecRequest(command="STATUS", args="K=V;A=B", stdin="{}")),
        rq(47, '{"op":"cni_exec","command":"STATUS","args":"K=V;A=B","stdin":"{}"}'),
    ),
]

PEER_JSON = (
    f'{{"public_key":"{K1}","endpoint":"10.0.0.1:51820",'
    '"allowed_ips":"10.200.0.0/16","persistent_keepalive_secs":25}'
)

RESPONSES: list[tuple[str, p.Frame, str]] = [
    ("ok", p.ResponseFrame.ok(1), rs(1, '{"result":"ok"}')),
    (
        "ip",
        resp(2, p.IpResponse(ip="10.0.0.5")),
        rs(2, '{"result":"ip","ip":"10.0.0.5"}'),
    ),
    (
        "attached",
        resp(3, p.AttachedResponse(ip="10.200.0.5", namespace_guid=GUID)),
        rs(
            3,
            f'{{"result":"attached","ip":"10.200.0.5","namespace_guid":"{GUID}"}}',
        ),
    ),
    (
        "attached-linux",
        resp(4, p.AttachedResponse(ip="fd00:200::5")),
        rs(4, '{"result":"attached","ip":"fd00:200::5"}'),
    ),
    (
        "guest_config",
        resp(
            5,
            p.GuestConfigResponse(
                overlay_ip="10.200.0.9",
                prefix_len=16,
                private_key=K2,
                public_key=K1,
                listen_port=51821,
                peers=[
                    p.PeerSpec(
                        public_key=K1,
                        endpoint="10.0.0.1:51820",
                        allowed_ips="10.200.0.0/16",
                        persistent_keepalive_secs=25,
                    )
                ],
                dns_server="10.200.0.1",
                dns_domain="overlay",
            ),
        ),
        rs(
            5,
            '{"result":"guest_config","overlay_ip":"10.200.0.9","prefix_len":16,'
            f'"private_key":"{K2}","public_key":"{K1}","listen_port":51821,'
            f'"peers":[{PEER_JSON}],"dns_server":"10.200.0.1","dns_domain":"overlay"}}',
        ),
    ),
    (
        "bridge_name",
        resp(6, p.BridgeNameResponse(name="zl-prod-42-g")),
        rs(6, '{"result":"bridge_name","name":"zl-prod-42-g"}'),
    ),
    (
        "status-empty",
        resp(7, p.StatusResponse(peer_count=0, service_count=0)),
        rs(7, '{"result":"status","peer_count":0,"service_count":0}'),
    ),
    (
        "status-full",
        resp(
            8,
            p.StatusResponse(
                interface="zl-overlay0",
                node_ip="10.200.0.1",
                public_key=K1,
                overlay_cidr="10.200.0.0/16",
                slice_cidr="10.200.0.0/28",
                peer_count=1,
                service_count=1,
                peers=[
                    p.PeerStatus(
                        public_key=K2,
                        endpoint="10.0.0.2:51820",
                        allowed_ips="10.200.0.16/28",
                        last_handshake_unix_secs=0,
                    )
                ],
                dedicated_services=[
                    p.DedicatedServiceStatus(
                        service="db",
                        interface="zl-db-d",
                        public_key=K1,
                        listen_port=51900,
                        overlay_ip="10.200.0.33",
                        subnet="10.200.0.32/28",
                        peer_count=0,
                    )
                ],
            ),
        ),
        rs(
            8,
            '{"result":"status","interface":"zl-overlay0","node_ip":"10.200.0.1",'
            f'"public_key":"{K1}","overlay_cidr":"10.200.0.0/16",'
            '"slice_cidr":"10.200.0.0/28","peer_count":1,"service_count":1,'
            f'"peers":[{{"public_key":"{K2}","endpoint":"10.0.0.2:51820",'
            '"allowed_ips":"10.200.0.16/28","last_handshake_unix_secs":0}],'
            '"dedicated_services":[{"service":"db","interface":"zl-db-d",'
            f'"public_key":"{K1}","listen_port":51900,"overlay_ip":"10.200.0.33",'
            '"subnet":"10.200.0.32/28","peer_count":0}]}',
        ),
    ),
    (
        "status-nat",
        resp(
            9,
            p.StatusResponse(
                interface="zl-prod-42-g",
                node_ip="10.200.0.1",
                public_key=K1,
                overlay_cidr="10.200.0.0/16",
                slice_cidr="10.200.0.0/28",
                peer_count=1,
                service_count=0,
                peers=[
                    p.PeerStatus(
                        public_key=K2,
                        endpoint="127.0.0.1:40123",
                        allowed_ips="10.200.0.16/28",
                        last_handshake_unix_secs=1795392827,
                    )
                ],
                nat=p.NatStatusInfo(
                    candidates=[
                        p.NatCandidateInfo(
                            kind="host", endpoint="192.168.1.7:51820", priority=2130706431
                        ),
                        p.NatCandidateInfo(
                            kind="relay", endpoint="192.0.2.3:49160", priority=16776959
                        ),
                    ],
                    peers=[
                        p.NatPeerPathInfo(
                            public_key=K2,
                            path="relayed",
                            endpoint="192.0.2.3:49170",
                            candidates=[
                                p.NatCandidateInfo(
                                    kind="reflexive",
                                    endpoint="198.51.100.9:61002",
                                    priority=1526726399,
                                    guessed=True,
                                ),
                                p.NatCandidateInfo(
                                    kind="relay", endpoint="192.0.2.3:49170", priority=16776959
                                ),
                            ],
                        )
                    ],
                    warnings=["STUN server 192.0.2.3:3478 did not answer"],
                ),
            ),
        ),
        rs(
            9,
            '{"result":"status","interface":"zl-prod-42-g","node_ip":"10.200.0.1",'
            f'"public_key":"{K1}","overlay_cidr":"10.200.0.0/16",'
            '"slice_cidr":"10.200.0.0/28","peer_count":1,"service_count":0,'
            f'"peers":[{{"public_key":"{K2}","endpoint":"127.0.0.1:40123",'
            '"allowed_ips":"10.200.0.16/28","last_handshake_unix_secs":1795392827}],'
            '"nat":{"candidates":[{"kind":"host","endpoint":"192.168.1.7:51820",'
            '"priority":2130706431},{"kind":"relay","endpoint":"192.0.2.3:49160",'
            f'"priority":16776959}}],"peers":[{{"public_key":"{K2}","path":"relayed",'
            '"endpoint":"192.0.2.3:49170","candidates":[{"kind":"reflexive",'
            '"endpoint":"198.51.100.9:61002","priority":1526726399,"guessed":true},'
            '{"kind":"relay","endpoint":"192.0.2.3:49170","priority":16776959}]}],'
            '"warnings":["STUN server 192.0.2.3:3478 did not answer"]}}',
        ),
    ),
    (
        "service_overlay-dedicated",
        resp(
            9,
            p.ServiceOverlayResponse(
                name="zl-web-d",
                mode="dedicated",
                wg_public_key=K1,
                wg_port=51901,
                overlay_ip="10.200.0.49",
                subnet="10.200.0.48/28",
            ),
        ),
        rs(
            9,
            '{"result":"service_overlay","name":"zl-web-d","mode":"dedicated",'
            f'"wg_public_key":"{K1}","wg_port":51901,"overlay_ip":"10.200.0.49",'
            '"subnet":"10.200.0.48/28"}',
        ),
    ),
    (
        "service_overlay-shared",
        resp(10, p.ServiceOverlayResponse(name="zl-web-b", mode="shared")),
        rs(10, '{"result":"service_overlay","name":"zl-web-b","mode":"shared"}'),
    ),
    (
        "err",
        p.ResponseFrame.err(11, "no slice assigned"),
        rs(11, '{"result":"err","message":"no slice assigned"}'),
    ),
    (
        "err-unicode",
        p.ResponseFrame.err(12, 'service "wëb" → missing'),
        rs(12, '{"result":"err","message":"service \\"wëb\\" → missing"}'),
    ),
    (
        "hello",
        resp(
            13,
            p.HelloResponse(
                protocol_version=1,
                server_version="0.1.0",
                drivers=[
                    p.DriverDescription(
                        name="fake",
                        api=1,
                        platforms=["linux", "win32"],
                        capabilities=["devices", "peers"],
                    )
                ],
                ops=["status", "hello"],
            ),
        ),
        rs(
            13,
            '{"result":"hello","protocol_version":1,"server_version":"0.1.0",'
            '"drivers":[{"name":"fake","api":1,"platforms":["linux","win32"],'
            '"capabilities":["devices","peers"]}],"ops":["status","hello"]}',
        ),
    ),
    (
        "hello-subscribed",
        resp(
            18,
            p.HelloResponse(
                protocol_version=1,
                server_version="0.1.0",
                drivers=[],
                ops=["hello"],
                events=["peer_health_changed"],
                events_dropped=0,
            ),
        ),
        rs(
            18,
            '{"result":"hello","protocol_version":1,"server_version":"0.1.0","drivers":[],'
            '"ops":["hello"],"events":["peer_health_changed"],"events_dropped":0}',
        ),
    ),
    (
        "attachments",
        resp(
            14,
            p.AttachmentsResponse(
                attachments=[
                    p.AttachmentInfo(
                        handle=PID,
                        service="web",
                        ip="10.200.0.5",
                        global_ip="10.200.0.2",
                        interfaces=["eth0", "eth1"],
                        driver="linux_bridge",
                        created_unix_secs=1700000000,
                    )
                ]
            ),
        ),
        rs(
            14,
            f'{{"result":"attachments","attachments":[{{"handle":{PID_JSON},'
            '"service":"web","ip":"10.200.0.5","global_ip":"10.200.0.2",'
            '"interfaces":["eth0","eth1"],"driver":"linux_bridge",'
            '"created_unix_secs":1700000000}]}',
        ),
    ),
    (
        "leases",
        resp(
            15,
            p.LeasesResponse(
                leases=[
                    p.LeaseInfo(
                        ip="10.200.0.5",
                        pool="service:web",
                        owner="linux_pid:4242",
                        created_unix_secs=1700000000,
                    )
                ]
            ),
        ),
        rs(
            15,
            '{"result":"leases","leases":[{"ip":"10.200.0.5","pool":"service:web",'
            '"owner":"linux_pid:4242","created_unix_secs":1700000000}]}',
        ),
    ),
    (
        "cni_result",
        resp(48, p.CniResultResponse(exit_code=0, stdout='{"cniVersion":"1.0.0"}\n')),
        rs(
            48, '{"result":"cni_result","exit_code":0,"stdout":"{\\"cniVersion\\":\\"1.0.0\\"}\\n"}'
        ),
    ),
    (
        "cni_result-error",
        resp(49, p.CniResultResponse(exit_code=1, stdout="{}\n", stderr="overlayd-cni: note\n")),
        rs(
            49,
            '{"result":"cni_result","exit_code":1,"stdout":"{}\\n",'
            '"stderr":"overlayd-cni: note\\n"}',
        ),
    ),
    (
        "gc_report",
        resp(16, p.GcReportResponse(released=[p.LinuxPidHandle(pid=7)], kept=3)),
        rs(
            16,
            '{"result":"gc_report","released":[{"platform":"linux_pid","pid":7}],"kept":3}',
        ),
    ),
    (
        "attachment",
        resp(
            18,
            p.AttachmentResponse(
                attachment=p.AttachmentInfo(
                    handle=CNI,
                    service="web",
                    ip="10.200.0.5",
                    interfaces=["zv0123456789abc"],
                    driver="linux_bridge",
                    created_unix_secs=1700000000,
                    ifname="net1",
                    mac="02:42:0a:c8:00:05",
                    prefix_len=22,
                    gateway="10.200.0.1",
                    routes=["0.0.0.0/0"],
                    mtu=1420,
                    dns_servers=["10.200.0.1"],
                    dns_domain="prod.local",
                )
            ),
        ),
        rs(
            18,
            f'{{"result":"attachment","attachment":{{"handle":{CNI_JSON},'
            '"service":"web","ip":"10.200.0.5","interfaces":["zv0123456789abc"],'
            '"driver":"linux_bridge","created_unix_secs":1700000000,"ifname":"net1",'
            '"mac":"02:42:0a:c8:00:05","prefix_len":22,"gateway":"10.200.0.1",'
            '"routes":["0.0.0.0/0"],"mtu":1420,"dns_servers":["10.200.0.1"],'
            '"dns_domain":"prod.local"}}',
        ),
    ),
    (
        "reconcile_report",
        resp(
            17,
            p.ReconcileReportResponse(
                adopted=2, recreated=1, removed=0, released=1, errors=["zl-x missing"]
            ),
        ),
        rs(
            17,
            '{"result":"reconcile_report","adopted":2,"recreated":1,"removed":0,'
            '"released":1,"errors":["zl-x missing"]}',
        ),
    ),
    (
        "cluster_status",
        resp(
            18,
            p.ClusterStatusResponse(
                name="n1",
                prefix="/overlayd",
                connected=True,
                nodes=[
                    p.ClusterNodeInfo(
                        name="n1",
                        slices=["10.200.3.0/24"],
                        endpoint="192.0.2.1:51820",
                        public_key=K1,
                        node_ip="10.200.3.1",
                        local=True,
                        lease_ttl_secs=12,
                    ),
                    p.ClusterNodeInfo(
                        name="n2",
                        slices=["10.200.7.0/24"],
                        endpoint="192.0.2.2:51820",
                        public_key=K2,
                        node_ip="10.200.7.1",
                        local=False,
                        last_handshake_unix_secs=1700000000,
                        lease_ttl_secs=9,
                    ),
                ],
                stats=p.ClusterStats(
                    sessions=1,
                    peer_batches=1,
                    peers_added=1,
                    peers_updated=0,
                    peers_removed=0,
                    events=2,
                    bad_records=0,
                    etcd_requests=9,
                ),
            ),
        ),
        rs(
            18,
            '{"result":"cluster_status","name":"n1","prefix":"/overlayd","connected":true,'
            '"nodes":[{"name":"n1","slices":["10.200.3.0/24"],"endpoint":"192.0.2.1:51820",'
            f'"public_key":"{K1}","node_ip":"10.200.3.1","local":true,"lease_ttl_secs":12}},'
            '{"name":"n2","slices":["10.200.7.0/24"],"endpoint":"192.0.2.2:51820",'
            f'"public_key":"{K2}","node_ip":"10.200.7.1","local":false,'
            '"last_handshake_unix_secs":1700000000,"lease_ttl_secs":9}],'
            '"stats":{"sessions":1,"peer_batches":1,"peers_added":1,"peers_updated":0,'
            '"peers_removed":0,"events":2,"bad_records":0,"etcd_requests":9}}',
        ),
    ),
]

EVENTS: list[tuple[str, p.Frame, str]] = [
    (
        "peer_health_changed",
        p.EventFrame(event=p.PeerHealthChangedEvent(pubkey=K1, healthy=False)),
        f'{{"frame":"event","event":"peer_health_changed","pubkey":"{K1}","healthy":false}}',
    ),
    (
        "nat_endpoint_changed",
        p.EventFrame(event=p.NatEndpointChangedEvent(pubkey=K1, endpoint="10.1.2.3:40000")),
        f'{{"frame":"event","event":"nat_endpoint_changed","pubkey":"{K1}",'
        '"endpoint":"10.1.2.3:40000"}',
    ),
    (
        "attached",
        p.EventFrame(
            event=p.AttachedEvent(handle="linux_pid:4101", service="web", ip="10.200.1.2")
        ),
        '{"frame":"event","event":"attached","handle":"linux_pid:4101","service":"web",'
        '"ip":"10.200.1.2"}',
    ),
    (
        "detached",
        p.EventFrame(
            event=p.DetachedEvent(handle="linux_pid:4101", service="web", ip="10.200.1.2")
        ),
        '{"frame":"event","event":"detached","handle":"linux_pid:4101","service":"web",'
        '"ip":"10.200.1.2"}',
    ),
    (
        "reconcile_repaired",
        p.EventFrame(event=p.ReconcileRepairedEvent(kind="recreated", object="zl-web-b")),
        '{"frame":"event","event":"reconcile_repaired","kind":"recreated","object":"zl-web-b"}',
    ),
]

GOLDEN = REQUESTS + RESPONSES + EVENTS
golden = pytest.mark.parametrize(
    ("frame", "text"), [(f, t) for _, f, t in GOLDEN], ids=[i for i, _, _ in GOLDEN]
)


@golden
def test_wire_encodes_exact_bytes(frame: p.Frame, text: str) -> None:
    body = text.encode("utf-8")
    assert p.encode_body(frame) == body
    assert p.encode_frame(frame) == struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    ("frame", "text"),
    [(f, t) for _, f, t in RESPONSES],
    ids=[i for i, _, _ in RESPONSES],
)
def test_wire_cached_response_encoding_gives_the_exact_bytes(frame: p.Frame, text: str) -> None:
    """The server's fast path (encode the answer once, frame it per request) is
    byte for byte the same as encoding the whole frame."""
    assert isinstance(frame, p.ResponseFrame)
    encoded = p.encode_response(frame.response)
    assert p.response_body(frame.id, encoded) == text.encode("utf-8")
    assert p.response_body(2**64 - 1, encoded) == p.encode_body(
        p.ResponseFrame(id=2**64 - 1, response=frame.response)
    )


@golden
def test_wire_decodes_golden(frame: p.Frame, text: str) -> None:
    assert p.decode_frame(text.encode("utf-8")) == frame


def _reorder(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reorder(v) for v in value]
    return value


def _add_junk(value: Any) -> Any:
    if isinstance(value, dict):
        return {**{k: _add_junk(v) for k, v in value.items()}, "x_future": [1, {}]}
    if isinstance(value, list):
        return [_add_junk(v) for v in value]
    return value


@golden
def test_wire_field_order_is_irrelevant(frame: p.Frame, text: str) -> None:
    shuffled = json.dumps(_reorder(json.loads(text)), ensure_ascii=False)
    assert p.decode_frame(shuffled.encode()) == frame


@golden
def test_wire_unknown_fields_are_ignored_everywhere(frame: p.Frame, text: str) -> None:
    noisy = json.dumps(_add_junk(json.loads(text)), ensure_ascii=False)
    assert p.decode_frame(noisy.encode()) == frame


def test_wire_golden_covers_every_op_result_and_event() -> None:
    ops = {f.request.op for _, f, _ in REQUESTS if isinstance(f, p.RequestFrame)}
    results = {f.response.result for _, f, _ in RESPONSES if isinstance(f, p.ResponseFrame)}
    events = {f.event.event for _, f, _ in EVENTS if isinstance(f, p.EventFrame)}
    assert ops == set(p.ALL_OPS)
    assert results == set(p.RESPONSE_TYPES)
    assert events == set(p.EVENT_TYPES)
    assert len(p.ZLAYER_OPS) == 19
    platforms = {
        f.request.handle.platform
        for _, f, _ in REQUESTS
        if isinstance(f, p.RequestFrame) and isinstance(f.request, p.AttachContainerRequest)
    }
    assert platforms == {"linux_pid", "windows_container", "guest_managed", "netns"}


def test_wire_exact_prefix_bytes() -> None:
    assert p.encode_frame(req(1, p.StatusRequest())) == (
        b'\x34\x00\x00\x00{"frame":"request","id":1,"request":{"op":"status"}}'
    )


def test_wire_scopeless_add_peer_decodes_as_global() -> None:
    body = (
        f'{{"frame":"request","id":5,"request":{{"op":"add_peer","public_key":"{K1}",'
        '"endpoint":"10.0.0.1:51820","allowed_ips":"10.200.0.0/28",'
        '"persistent_keepalive_secs":25}}'
    )
    frame = p.decode_frame(body.encode())
    assert isinstance(frame, p.RequestFrame)
    assert isinstance(frame.request, p.AddPeerRequest)
    assert frame.request.scope == p.GlobalScope()
    assert frame.request.peer == p.PeerSpec(
        public_key=K1,
        endpoint="10.0.0.1:51820",
        allowed_ips="10.200.0.0/28",
        persistent_keepalive_secs=25,
    )


REJECTED = [
    (
        "netns-without-path-or-container-id",
        '{"frame":"request","id":9,"request":{"op":"detach_container",'
        '"handle":{"platform":"netns"}}}',
        9,
        "a netns handle needs a path (or a CNI container_id)",
    ),
    (
        "netns-ifname-without-container-id",
        '{"frame":"request","id":9,"request":{"op":"detach_container",'
        '"handle":{"platform":"netns","path":"/run/netns/x","ifname":"eth1"}}}',
        9,
        "ifname and network need container_id",
    ),
    (
        "netns-bad-container-id",
        '{"frame":"request","id":9,"request":{"op":"detach_container",'
        '"handle":{"platform":"netns","container_id":"-x:y"}}}',
        9,
        "container_id '-x:y' is invalid",
    ),
    (
        "netns-bad-ifname",
        '{"frame":"request","id":9,"request":{"op":"detach_container",'
        '"handle":{"platform":"netns","container_id":"c1","ifname":"a/b"}}}',
        9,
        "'a/b' is not a valid interface name",
    ),
    (
        "bare-string-scope",
        f'{{"frame":"request","id":3,"request":{{"op":"remove_peer","pubkey":"{K1}",'
        '"scope":"global"}}',
        3,
        'scope must be an object like {"scope":"global"}, not a string',
    ),
    (
        "unknown-op",
        '{"frame":"request","id":7,"request":{"op":"frobnicate"}}',
        7,
        "request 7: unknown op 'frobnicate'",
    ),
    (
        "service-overlay-without-mode",
        '{"frame":"request","id":3,"request":{"op":"setup_service_overlay","service":"web"}}',
        3,
        "request 3: setup_service_overlay needs field 'mode'",
    ),
    (
        "bad-key",
        '{"frame":"request","id":4,"request":{"op":"remove_peer","pubkey":"abc"}}',
        4,
        "request 4: remove_peer field 'pubkey': a WireGuard key is 44 characters",
    ),
    (
        "bad-ip",
        '{"frame":"request","id":5,"request":{"op":"release_ip","ip":"10.0.0.300"}}',
        5,
        "request 5: release_ip field 'ip': '10.0.0.300' is not an IPv4 or IPv6",
    ),
    (
        "bad-cidr-list",
        f'{{"frame":"request","id":6,"request":{{"op":"add_peer","public_key":"{K1}",'
        '"endpoint":"h:1","allowed_ips":"10.0.0.0/8,nope",'
        '"persistent_keepalive_secs":0}}',
        6,
        "'nope' in '10.0.0.0/8,nope' is not a CIDR",
    ),
    (
        "bad-endpoint",
        f'{{"frame":"request","id":6,"request":{{"op":"add_peer","public_key":"{K1}",'
        '"endpoint":"fd00::1:51820","allowed_ips":"","persistent_keepalive_secs":0}}',
        6,
        "an IPv6 host must be bracketed",
    ),
    (
        "string-for-int",
        '{"frame":"request","id":8,"request":{"op":"set_local_node_id","node_id":"1"}}',
        8,
        "set_local_node_id field 'node_id': Input should be a valid integer",
    ),
    (
        "nested-handle-error",
        '{"frame":"request","id":9,"request":{"op":"detach_container",'
        '"handle":{"platform":"linux_pid"}}}',
        9,
        "request 9: detach_container needs field 'handle.pid'",
    ),
    (
        "unknown-platform",
        '{"frame":"request","id":10,"request":{"op":"detach_container",'
        '"handle":{"platform":"bsd_jail","jid":1}}}',
        10,
        "Input tag 'bsd_jail' found using 'platform' does not match",
    ),
    (
        "request-not-object",
        '{"frame":"request","id":11,"request":"status"}',
        11,
        "request 11: 'request' must be a JSON object, not str",
    ),
    (
        "missing-op",
        '{"frame":"request","id":12,"request":{}}',
        12,
        "request 12: missing the 'op' tag",
    ),
    ("not-json", "{nope", None, "frame body is not valid JSON"),
    ("not-object", "[1,2]", None, "a frame must be a JSON object, not list"),
    ("no-frame-tag", '{"id":1}', 1, "frame: missing the 'frame' tag"),
    (
        "unknown-frame",
        '{"frame":"gossip","id":2}',
        2,
        "unknown frame kind 'gossip'",
    ),
    (
        "negative-id",
        '{"frame":"request","id":-1,"request":{"op":"status"}}',
        None,
        "'id' is -1; it must be an unsigned 64-bit integer",
    ),
    (
        "missing-id",
        '{"frame":"request","request":{"op":"status"}}',
        None,
        "request frame: 'id' is missing",
    ),
    (
        "unknown-result",
        '{"frame":"response","id":3,"response":{"result":"maybe"}}',
        3,
        "response 3: unknown result 'maybe'",
    ),
    (
        "unknown-event",
        '{"frame":"event","event":"solar_flare"}',
        None,
        "event frame: unknown event 'solar_flare'",
    ),
    (
        "hello-unknown-event-kind",
        '{"frame":"request","id":13,"request":{"op":"hello","events":["solar_flare"]}}',
        13,
        "unknown event kind 'solar_flare'; known: peer_health_changed, nat_endpoint_changed",
    ),
]


@pytest.mark.parametrize(
    ("body", "frame_id", "message"),
    [(b, i, m) for _, b, i, m in REJECTED],
    ids=[n for n, _, _, _ in REJECTED],
)
def test_wire_rejects_with_precise_error(body: str, frame_id: int | None, message: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_frame(body.encode())
    assert info.value.request_id == frame_id
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("frame", "text"), [(f, t) for _, f, t in REQUESTS], ids=[i for i, _, _ in REQUESTS]
)
def test_wire_decode_request_gives_what_decode_frame_gives(frame: p.Frame, text: str) -> None:
    """The request of every golden frame, given as its wire object (the cni_exec op)."""
    assert isinstance(frame, p.RequestFrame)
    data = json.loads(text)
    assert p.decode_request(data["request"], data["id"]) == frame.request
    assert p.decode_request(_add_junk(_reorder(data["request"])), data["id"]) == frame.request


def _bad_request(body: str) -> bool:
    """Whether ``body`` is a well-formed request frame whose request is what is wrong."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(data, dict)
        and data.get("frame") == "request"
        and type(data.get("id")) is int
        and 0 <= data["id"] < 2**64
        and "request" in data
    )


BAD_REQUESTS = [(n, b, i) for n, b, i, _ in REJECTED if _bad_request(b)]


def test_wire_rejected_frames_include_bad_requests() -> None:
    assert len(BAD_REQUESTS) >= 10


@pytest.mark.parametrize(
    ("body", "frame_id"), [(b, i) for _, b, i in BAD_REQUESTS], ids=[n for n, _, _ in BAD_REQUESTS]
)
def test_wire_decode_request_rejects_as_decode_frame_does(body: str, frame_id: int | None) -> None:
    """A bad request given as its wire object gets decode_frame's error, word for word."""
    data = json.loads(body)
    with pytest.raises(p.ProtocolError) as info:
        p.decode_request(data["request"], data["id"])
    assert info.value.request_id == frame_id
    assert str(info.value) == _decode_frame_error(body)


def _decode_frame_error(body: str) -> str:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_frame(body.encode())
    return str(info.value)


def test_wire_protocol_error_is_invalid_request() -> None:
    from overlayd.errors import InvalidRequest

    assert issubclass(p.ProtocolError, InvalidRequest)


def test_wire_non_utf8_body_is_rejected() -> None:
    with pytest.raises(p.ProtocolError, match="not UTF-8"):
        p.decode_frame(b'{"frame":"\xff"}')


def test_wire_ip_is_canonicalised_like_rust_ipaddr() -> None:
    frame = p.decode_frame(
        b'{"frame":"request","id":1,"request":{"op":"release_ip","ip":"FD00:0200::5"}}'
    )
    assert isinstance(frame, p.RequestFrame)
    assert isinstance(frame.request, p.ReleaseIpRequest)
    assert frame.request.ip == "fd00:200::5"


def test_wire_oversize_body_is_refused_when_encoding() -> None:
    huge = p.ResponseFrame.err(1, "x" * p.MAX_FRAME)
    with pytest.raises(p.ProtocolError, match="limit") as info:
        p.encode_body(huge)
    assert info.value.request_id == 1


def test_wire_oversize_cached_response_is_refused_when_framing() -> None:
    encoded = p.encode_response(p.ErrResponse(message="x" * p.MAX_FRAME))
    with pytest.raises(p.ProtocolError, match="limit") as info:
        p.response_body(7, encoded)
    assert info.value.request_id == 7


def test_wire_expected_results_cover_every_op() -> None:
    assert set(p.EXPECTED_RESULTS) == set(p.ALL_OPS)
    for kinds in p.EXPECTED_RESULTS.values():
        assert set(kinds) <= set(p.RESPONSE_TYPES)


# ---------------------------------------------------------------------------
# property: every valid request round-trips
# ---------------------------------------------------------------------------

keys = st.binary(min_size=32, max_size=32).map(lambda b: __import__("base64").b64encode(b).decode())
ips = st.ip_addresses().map(str)
cidrs = st.ip_addresses().flatmap(
    lambda a: st.integers(0, a.max_prefixlen).map(lambda n: f"{a}/{n}")
)
cidr_lists = st.lists(cidrs, max_size=3).map(",".join)
hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9]{0,10}){0,2}", fullmatch=True),
)
endpoints = st.one_of(
    st.just(""), st.tuples(hosts, st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}")
)
text = st.text(max_size=20)
u64 = st.integers(0, 2**64 - 1)
u16 = st.integers(0, 65535)
opt = st.none
cni_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,30}", fullmatch=True)
scopes = st.one_of(st.builds(p.GlobalScope), st.builds(p.ServiceScope, service=text.filter(bool)))
handles = st.one_of(
    st.builds(p.LinuxPidHandle, pid=st.integers(1, 2**32 - 1)),
    st.builds(p.WindowsContainerHandle, container_id=text, ip=st.none() | ips),
    st.builds(p.GuestManagedHandle, id=text),
    st.builds(p.NetnsHandle, path=text.filter(bool)),
    st.builds(
        p.NetnsHandle,
        path=opt() | text.filter(bool),
        container_id=cni_ids,
        ifname=opt() | st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True),
        network=opt() | cni_ids,
    ),
)
changes = st.builds(
    p.PeerChange,
    public_key=keys,
    remove=opt() | st.booleans(),
    endpoint=opt() | endpoints,
    persistent_keepalive_secs=opt() | u64,
    allowed_ips=opt() | cidr_lists,
    add_allowed_ips=opt() | cidr_lists,
    remove_allowed_ips=opt() | cidr_lists,
)

REQUEST_STRATEGIES: dict[str, st.SearchStrategy[p.Request]] = {
    "set_local_node_id": st.builds(p.SetLocalNodeIdRequest, node_id=u64),
    "set_local_wg_pubkey": st.builds(p.SetLocalWgPubkeyRequest, pubkey=keys),
    "setup_global_overlay": st.builds(
        p.SetupGlobalOverlayRequest,
        deployment=text,
        instance_id=text,
        cluster_cidr=cidrs,
        slice_cidr=opt() | cidrs,
        wg_port=u16,
        nat_enabled=st.booleans(),
    ),
    "teardown_global_overlay": st.builds(p.TeardownGlobalOverlayRequest),
    "setup_service_overlay": st.builds(
        p.SetupServiceOverlayRequest,
        service=text,
        mode=st.sampled_from(["auto", "shared", "dedicated"]),
    ),
    "teardown_service_overlay": st.builds(p.TeardownServiceOverlayRequest, service=text),
    "allocate_ip": st.builds(p.AllocateIpRequest, service=text, join_global=st.booleans()),
    "release_ip": st.builds(p.ReleaseIpRequest, ip=ips),
    "attach_container": st.builds(
        p.AttachContainerRequest,
        handle=handles,
        service=text,
        join_global=st.booleans(),
        dns_server=opt() | ips,
        dns_domain=opt() | text,
    ),
    "detach_container": st.builds(p.DetachContainerRequest, handle=handles),
    "add_peer": st.builds(
        p.AddPeerRequest,
        public_key=keys,
        endpoint=endpoints,
        allowed_ips=cidr_lists,
        persistent_keepalive_secs=u64,
        scope=scopes,
    ),
    "remove_peer": st.builds(p.RemovePeerRequest, pubkey=keys, scope=scopes),
    "add_allowed_ip": st.builds(p.AddAllowedIpRequest, pubkey=keys, cidr=cidrs, scope=scopes),
    "remove_allowed_ip": st.builds(p.RemoveAllowedIpRequest, pubkey=keys, cidr=cidrs, scope=scopes),
    "register_dns": st.builds(p.RegisterDnsRequest, name=text, ip=ips),
    "unregister_dns": st.builds(p.UnregisterDnsRequest, name=text),
    "status": st.builds(p.StatusRequest),
    "nat_tick": st.builds(p.NatTickRequest),
    "shutdown": st.builds(p.ShutdownRequest),
    "hello": st.builds(
        p.HelloRequest,
        client=opt() | text,
        protocol_version=opt() | st.integers(0, 1000),
        events=opt() | st.lists(st.sampled_from(p.EVENT_KINDS), max_size=2),
    ),
    "apply_peers": st.builds(
        p.ApplyPeersRequest, changes=st.lists(changes, max_size=4), scope=scopes
    ),
    "list_attachments": st.builds(
        p.ListAttachmentsRequest, service=opt() | text, handle=opt() | handles
    ),
    "list_leases": st.builds(p.ListLeasesRequest, pool=opt() | text),
    "gc": st.builds(
        p.GcRequest,
        live=st.lists(handles, max_size=4),
        dry_run=opt() | st.booleans(),
        network=opt() | cni_ids,
    ),
    "attach_interface": st.builds(
        p.AttachInterfaceRequest,
        handle=handles,
        service=text,
        join_global=opt() | st.booleans(),
        dns_server=opt() | ips,
        dns_domain=opt() | text,
        default_route=opt() | st.booleans(),
        create_mode=opt() | st.sampled_from(["auto", "shared", "dedicated"]),
    ),
    "reconcile": st.builds(p.ReconcileRequest),
    "nat_peer_candidates": st.builds(
        p.NatPeerCandidatesRequest,
        public_key=keys,
        candidates=st.lists(
            st.builds(
                p.NatCandidateInfo,
                kind=st.sampled_from(["host", "reflexive", "relay"]),
                endpoint=st.sampled_from(["10.0.0.1:51820", "[fd00::1]:3478"]),
                priority=opt() | st.integers(0, 2**32 - 1),
                guessed=opt() | st.booleans(),
            ),
            max_size=3,
        ),
    ),
    "cluster_status": st.builds(p.ClusterStatusRequest),
    "cni_exec": st.builds(
        p.CniExecRequest,
        command=st.sampled_from(["ADD", "DEL", "GC", "STATUS", "VERSION"]) | text,
        container_id=opt() | text,
        netns=opt() | text,
        ifname=opt() | text,
        args=opt() | text,
        path=opt() | text,
        stdin=text,
    ),
    **{
        op: st.builds(
            cls,
            protocol=st.sampled_from(["tcp", "udp"]),
            host_port=st.integers(1, 65535),
            container_ip=ips,
            container_port=st.integers(1, 65535),
            host_ip=opt() | ips,
        )
        for op, cls in (("map_port", p.MapPortRequest), ("unmap_port", p.UnmapPortRequest))
    },
}


def test_wire_property_strategies_cover_every_op() -> None:
    assert set(REQUEST_STRATEGIES) == set(p.ALL_OPS)


@given(
    frame_id=u64,
    request=st.one_of(*REQUEST_STRATEGIES.values()),
)
def test_wire_any_valid_request_round_trips(frame_id: int, request: Any) -> None:
    frame = p.RequestFrame(id=frame_id, request=request)
    encoded = p.encode_frame(frame)
    (length,) = struct.unpack("<I", encoded[:4])
    assert length == len(encoded) - 4
    decoded = p.decode_frame(encoded[4:])
    assert decoded == frame
    assert p.encode_frame(decoded) == encoded


def test_wire_models_are_built_on_first_use_or_by_build_models() -> None:
    """``defer_build`` keeps a daemon's start short; ``build_models`` builds them all at once."""
    import subprocess
    import sys

    script = (
        "from overlayd import protocol as p\n"
        "models = [p.AttachInterfaceRequest, p.ResponseFrame, p.StatusResponse]\n"
        "assert not any(m.__pydantic_complete__ for m in models)\n"
        "p.build_models()\n"
        "assert all(m.__pydantic_complete__ for m in models)\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
