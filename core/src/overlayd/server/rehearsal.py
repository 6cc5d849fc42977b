"""A rehearsal of the attach path's own code, run once after the daemon starts.

A daemon's first attach ran much of its Python for the first time: ``re``
compiled patterns, pydantic filled its caches, ``abc`` worked out which
classes are mappings, and the interpreter met code it had not run yet. That
made the first ``ADD`` of a fresh daemon cost more than the ones after it
(``docs/design-notes.rst``, "CNI plugin start-up"). :func:`rehearse` runs
the steps of a CNI ``ADD`` that are pure computation, on a made-up workload
of a made-up service:

* the ``cni_exec`` request frame the compiled front end sends, decoded;
* the engine's models of an attach: the request a driver is given, the
  attachment it reports, the record written for it (its JSON);
* the CNI plugin's ``ADD`` flow (``overlayd_cni.inprocess``), whose
  ``attach_interface`` request is decoded as the daemon decodes one and
  answered with the made-up attachment in its wire form;
* the encoding of the plugin's answer.

Nothing reaches the engine, the state store, a driver or the host, and no
metric counts it: the made-up values never leave this module. The one
thing of the host it looks at is ``/proc/self/ns/net``, which the plugin
checks for existence as it checks ``CNI_NETNS``.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from dataclasses import dataclass
from typing import Any
from typing import Final

from overlayd import protocol as p
from overlayd.engine.attach import short_name
from overlayd.engine.work import Tx
from overlayd.model import Attachment
from overlayd.model import AttachRequest
from overlayd.model import Device
from overlayd.model import NodeInfo
from overlayd.model import OverlayMode
from overlayd.model import ServiceOverlay
from overlayd.model import handle_key
from overlayd.state import _encode as encode_record
from overlayd.transport import framed

# POSIX only, as the rest of the server (mypy --platform win32 skips the rest).
assert sys.platform != "win32", "overlayd serve is not supported on Windows yet"

from overlayd.server.cni_exec import ENV_FIELDS  # noqa: E402
from overlayd.server.convert import describe_attachment  # noqa: E402
from overlayd.server.convert import engine_handle  # noqa: E402

__all__ = ["Rehearsal", "rehearse"]

#: The made-up service: a documentation prefix (RFC 5737), never configured anywhere.
_SUBNET: Final = ipaddress.IPv4Network("192.0.2.0/24")
_SERVICE: Final = "rehearsal"
#: A network namespace file that exists wherever the daemon runs on Linux.
_NETNS: Final = "/proc/self/ns/net"


@dataclass(frozen=True)
class Rehearsal:
    """What one rehearsal did: the plugin's exit status and output, and its milliseconds."""

    exit_code: int | None
    stdout: str
    milliseconds: float


async def rehearse() -> Rehearsal:
    """Run the pure steps of a CNI ``ADD`` once (module docstring); touches nothing."""
    started = time.perf_counter()
    gateway = _SUBNET[1]
    bridge = Device(
        kind="bridge",
        name="rehearsal0",
        owner=f"service:{_SERVICE}",
        driver=_SERVICE,
        addresses=(ipaddress.IPv4Interface((int(gateway), _SUBNET.prefixlen)),),
        subnet=_SUBNET,
    )
    svc = ServiceOverlay(
        service=_SERVICE, mode=OverlayMode.SHARED, subnet=_SUBNET, gateway=gateway, bridge=bridge
    )
    node = NodeInfo(
        interface="rehearsal1",
        public_key=None,
        node_ip=gateway,
        cluster_cidr=_SUBNET,
        slice_cidr=_SUBNET,
        listen_port=51820,
    )
    conf = json.dumps(
        {"cniVersion": "1.0.0", "name": _SERVICE, "type": "overlayd-cni", "service": _SERVICE}
    )
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": _SERVICE,
        "CNI_NETNS": _NETNS,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/nonexistent",
    }
    frame = {
        "frame": "request",
        "id": 1,
        "request": {
            "op": "cni_exec",
            "command": "ADD",
            "stdin": conf,
            **{field: env[name] for name, field in ENV_FIELDS if name in env},
        },
    }
    p.decode_frame(json.dumps(frame).encode())

    async def dispatch(request: dict[str, Any]) -> dict[str, Any]:
        decoded = p.decode_request(request)
        if not isinstance(decoded, p.AttachInterfaceRequest):
            return p.ErrResponse(message="the rehearsal answers attach_interface only").to_wire()
        handle = engine_handle(decoded.handle)
        ip = _SUBNET[2]
        planned = Attachment(
            handle=handle,
            service=_SERVICE,
            driver=_SERVICE,
            ip=ip,
            interfaces=("rehearsal2",),
            ifname="eth0",
            mac="02:00:00:00:00:01",
            mtu=1420,
            routes=(ipaddress.IPv4Network("0.0.0.0/0"),),
            extra={"address": f"{ip}/{_SUBNET.prefixlen}"},
        )
        request_model = AttachRequest(
            handle=handle,
            service=_SERVICE,
            segment=bridge,
            address=ipaddress.IPv4Interface((int(ip), _SUBNET.prefixlen)),
            gateway=gateway,
            node=node,
            mtu=1420,
        )
        request_model.model_copy(update={"planned": planned})
        att = planned.model_copy(update={"created_unix_secs": int(time.time())})
        tx = Tx()
        tx.put("attachment", handle_key(handle), att)
        short_name(handle)  # the DNS label of the workload
        for (kind, key), value in tx.puts.items():
            encode_record(kind, key, value)
        info = describe_attachment(att, svc, [gateway], "overlay.local")
        return p.AttachmentResponse(attachment=info).to_wire()

    code: int | None = None
    out = ""
    try:
        from overlayd_cni.inprocess import execute
    except ImportError:  # no CNI plugin installed: the rest was rehearsed
        pass
    else:
        code, out, err = await execute(env, conf.encode(), dispatch)
        answer = p.CniResultResponse(exit_code=code, stdout=out, stderr=err or None)
        framed(p.response_body(1, p.encode_response(answer)))
    return Rehearsal(code, out, (time.perf_counter() - started) * 1000.0)
