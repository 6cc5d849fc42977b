"""The CNI operations, each one or two requests to the daemon.

The attachment of a container is the daemon's ``netns`` handle with the CNI
identity ``(network name, CNI_CONTAINERID, CNI_IFNAME)``: ``ADD`` attaches it
with ``attach_interface``, ``DEL`` detaches it by identity (no namespace
needed), ``CHECK`` looks it up with ``list_attachments`` and then inside the
namespace, ``GC`` asks for ``gc`` limited to the network, ``STATUS`` reads
``status``. How daemon failures map to CNI codes:

* the daemon cannot be reached, the connection breaks or the answer is late:
  ``11`` (try again later); for ``DEL`` an unreachable daemon is a success
  (the daemon releases the attachment of a namespace that is gone when it
  starts, and ``GC`` collects the rest), for ``STATUS`` it is ``50``;
* the daemon answers ``err``: ``100``, with its message in ``details``.

Each operation is a *flow*: a generator that yields the requests it needs
(:class:`Call`) and receives each answer, or has the client's failure
(:class:`~overlayd.rawclient.ConnectError`,
:class:`~overlayd.rawclient.RemoteError`, ...) raised at its ``yield``. It
does no I/O itself, so the same code runs in the plugin's process, where
:func:`drive` sends the requests over the daemon's socket, and inside the
daemon (the ``cni_exec`` op), where :mod:`overlayd_cni.inprocess` awaits
them on the daemon's event loop without a thread or a socket.
"""

from __future__ import annotations

import os
import sys

from overlayd.rawclient import ConnectError
from overlayd.rawclient import ConnectionLost
from overlayd.rawclient import RawClient
from overlayd.rawclient import RemoteError
from overlayd.rawclient import RequestTimeout
from overlayd.rawclient import UnexpectedResponse
from overlayd_cni import result
from overlayd_cni.errors import CHECK_FAILED
from overlayd_cni.errors import DAEMON_REFUSED
from overlayd_cni.errors import INVALID_CONFIG
from overlayd_cni.errors import NOT_AVAILABLE
from overlayd_cni.errors import TRY_AGAIN_LATER
from overlayd_cni.errors import UNKNOWN_CONTAINER
from overlayd_cni.errors import CniError
from overlayd_cni.invocation import Invocation

# ``typing`` is not imported at run time: a CNI plugin pays for every import.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Generator
    from typing import Any
    from typing import TypeVar

    _T = TypeVar("_T")
    #: An operation: yields requests, receives answers, returns its outcome.
    Flow = Generator["Call", dict[str, Any], _T]


#: Connection attempts while the daemon's socket is missing or refuses (a
#: restarting daemon): 0.05 + 0.1 + 0.2 s of waiting at most.
CONNECT_ATTEMPTS = 4
#: What a client raises for a request that did not get the answer wanted.
CLIENT_ERRORS = (ConnectError, ConnectionLost, RequestTimeout, RemoteError, UnexpectedResponse)


class Call:
    """One request a flow needs answered, and how to reach the daemon for it."""

    __slots__ = ("attempts", "expect", "request", "socket", "timeout")

    def __init__(
        self, inv: Invocation, request: dict[str, Any], expect: str, attempts: int
    ) -> None:
        self.request = request
        self.expect = (expect,)
        self.socket = inv.socket
        self.timeout = inv.timeout
        self.attempts = attempts


def ask(
    inv: Invocation, request: dict[str, Any], expect: str, attempts: int = CONNECT_ATTEMPTS
) -> Flow[dict[str, Any]]:
    """The answer to ``request`` (a client failure is raised here)."""
    return (yield Call(inv, request, expect, attempts))


def drive(flow: Flow[_T]) -> _T:
    """Run ``flow`` in this process: its requests go over the daemon's socket.

    One connection serves the flow's requests (opened at the first, so a flow
    that needs none opens none); a failure is raised into the flow.
    """
    client: RawClient | None = None
    try:
        step = next(flow)
        while True:
            try:
                if client is None:
                    client = RawClient(
                        step.socket, timeout=step.timeout, connect_attempts=step.attempts
                    )
                answer = client.call(step.request, expect=step.expect)
            except CLIENT_ERRORS as exc:
                step = flow.throw(exc)
            else:
                step = flow.send(answer)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        if client is not None:
            client.close()


def handle(inv: Invocation, *, with_path: bool = True) -> dict[str, Any]:
    """The daemon's handle of this attachment."""
    out: dict[str, Any] = {"platform": "netns"}
    if with_path and inv.netns:
        out["path"] = inv.netns
    out.update(container_id=inv.container_id, ifname=inv.ifname, network=inv.name)
    return out


def _note(inv: Invocation, text: str) -> None:
    """A note for people: standard error (or what the daemon answers as such)."""
    print(text, file=inv.notes if inv.notes is not None else sys.stderr)


def _daemon(inv: Invocation, what: str, flow: Flow[_T]) -> Flow[_T]:
    """Run ``flow``, turning the client's failures into CNI errors."""
    try:
        return (yield from flow)
    except ConnectError as exc:
        raise CniError(
            TRY_AGAIN_LATER,
            "overlayd is not reachable",
            f"{exc}; start the daemon (overlayd serve) or fix 'socket' in the network "
            f"configuration {inv.name!r}",
        ) from None
    except (ConnectionLost, RequestTimeout) as exc:
        raise CniError(TRY_AGAIN_LATER, f"overlayd did not finish {what}", str(exc)) from None
    except RemoteError as exc:
        raise CniError(DAEMON_REFUSED, f"overlayd refused {what}", exc.message) from None
    except UnexpectedResponse as exc:
        raise CniError(
            DAEMON_REFUSED,
            f"overlayd answered {what} unexpectedly",
            f"{exc}; overlayd-cni needs an overlayd that knows attach_interface",
        ) from None


def add(inv: Invocation) -> Flow[dict[str, Any]]:
    """Attach the namespace and return the CNI result."""
    if not os.path.exists(inv.netns):
        raise CniError(
            UNKNOWN_CONTAINER,
            "the container's network namespace does not exist",
            f"CNI_NETNS {inv.netns} does not exist",
        )
    default_route = inv.default_route
    if default_route is None:
        default_route = not (
            result.has_default_route(inv.prev_result, 4)
            or result.has_default_route(inv.prev_result, 6)
        )
    request: dict[str, Any] = {"op": "attach_interface", "handle": handle(inv)}
    request["service"] = inv.service
    if not default_route:
        request["default_route"] = False
    if inv.mode is not None:
        request["create_mode"] = inv.mode

    def attach() -> Flow[dict[str, Any]]:
        answer = (yield from ask(inv, request, "attachment"))["attachment"]
        if answer.get("handle", {}).get("path") != inv.netns:
            # The same identity attached to another namespace: a DEL that
            # never reached the daemon. That attachment is stale.
            detach = {"op": "detach_container", "handle": handle(inv)}
            yield from ask(inv, detach, "ok")
            answer = (yield from ask(inv, request, "attachment"))["attachment"]
        return dict(answer)

    att = yield from _daemon(inv, "the attach", attach())
    return result.build(inv, att)


def delete(inv: Invocation) -> Flow[None]:
    """Detach by identity; succeed when there is nothing (left) to detach."""
    request = {"op": "detach_container", "handle": handle(inv, with_path=False)}
    try:
        yield from ask(inv, request, "ok")
    except ConnectError as exc:
        _note(
            inv,
            f"overlayd-cni: DEL of {inv.container_id}/{inv.ifname} in {inv.name}: {exc}; "
            "the daemon releases the attachment when it starts if the namespace is gone "
            "(and GC removes it otherwise)",
        )
        return
    except (ConnectionLost, RequestTimeout) as exc:
        raise CniError(TRY_AGAIN_LATER, "overlayd did not finish the detach", str(exc)) from None
    except RemoteError as exc:
        raise CniError(DAEMON_REFUSED, "overlayd refused the detach", exc.message) from None


def check(inv: Invocation) -> Flow[None]:
    """Compare the daemon's record and the namespace with ``prevResult``."""
    prev = inv.prev_result
    if prev is None:
        raise CniError(
            INVALID_CONFIG, "CHECK needs prevResult", "the runtime passed no 'prevResult'"
        )
    expected = _expected(inv, prev)
    request = {"op": "list_attachments", "handle": handle(inv, with_path=False)}
    found = (yield from _daemon(inv, "the lookup", ask(inv, request, "attachments")))["attachments"]
    if not found:
        raise CniError(
            CHECK_FAILED,
            "overlayd has no such attachment",
            f"{inv.container_id}/{inv.ifname} of network {inv.name} is not attached "
            "(detached, collected, or the daemon's state was lost)",
        )
    att = found[0]
    if att.get("service") != inv.service or att.get("handle", {}).get("path") != inv.netns:
        raise CniError(
            CHECK_FAILED,
            "the attachment differs from the configuration",
            f"overlayd attached it to service {att.get('service')!r} in "
            f"{att.get('handle', {}).get('path')!r}; expected {inv.service!r} in {inv.netns!r}",
        )
    recorded = f"{att['ip']}/{att.get('prefix_len')}"
    if recorded not in expected["addresses"]:
        raise CniError(
            CHECK_FAILED,
            "the address differs from prevResult",
            f"overlayd holds {recorded} for it; prevResult says {expected['addresses']}",
        )
    from overlayd_cni import probe

    problems = probe.verify(inv.netns, inv.ifname, expected)
    if problems:
        raise CniError(CHECK_FAILED, "the container's interface is not as expected", problems)


def _expected(inv: Invocation, prev: dict[str, Any]) -> dict[str, Any]:
    """Our interface, its addresses and its routes, as ``prevResult`` lists them."""
    interfaces = prev.get("interfaces") or []
    index = next(
        (
            i
            for i, iface in enumerate(interfaces)
            if isinstance(iface, dict)
            and iface.get("name") == inv.ifname
            and iface.get("sandbox") == inv.netns
        ),
        None,
    )
    if index is None:
        raise CniError(
            INVALID_CONFIG,
            "prevResult lacks the container interface",
            f"no interface {inv.ifname!r} with sandbox {inv.netns!r} in prevResult",
        )
    ips = [ip for ip in prev.get("ips") or [] if ip.get("interface") == index]
    gateways = {ip.get("gateway") for ip in ips if ip.get("gateway")}
    return {
        "mac": interfaces[index].get("mac"),
        "addresses": [str(ip.get("address")) for ip in ips],
        "routes": [
            (str(r.get("dst")), str(r.get("gw")))
            for r in prev.get("routes") or []
            if r.get("gw") in gateways
        ],
    }


def gc(inv: Invocation) -> Flow[None]:
    """Detach this network's attachments that are not in ``cni.dev/valid-attachments``."""
    live = [
        {"platform": "netns", "container_id": cid, "ifname": ifname, "network": inv.name}
        for cid, ifname in inv.valid_attachments
    ]
    request = {"op": "gc", "live": live, "network": inv.name}
    report = yield from _daemon(inv, "the GC", ask(inv, request, "gc_report"))
    released = report.get("released") or []
    if released:
        _note(
            inv,
            f"overlayd-cni: GC of {inv.name} released {len(released)} attachment(s), "
            f"kept {report.get('kept')}",
        )


def status(inv: Invocation) -> Flow[None]:
    """Succeed when the daemon answers and has its global overlay (it can take an ADD)."""
    try:
        answer = yield from ask(inv, {"op": "status"}, "status", attempts=1)
    except (ConnectError, ConnectionLost, RequestTimeout, UnexpectedResponse) as exc:
        raise CniError(NOT_AVAILABLE, "overlayd is not available", str(exc)) from None
    except RemoteError as exc:
        raise CniError(NOT_AVAILABLE, "overlayd is not available", exc.message) from None
    if not answer.get("interface"):
        raise CniError(
            NOT_AVAILABLE,
            "overlayd has no global overlay",
            "the node's overlay is not set up yet (setup_global_overlay, done by the "
            "orchestrator or with overlayctl); ADD cannot succeed before it is",
        )
