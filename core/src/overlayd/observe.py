"""Engine events as wire events, and events as the lines ``overlayctl events`` prints.

The engine emits :class:`overlayd.model.Event`; the server turns each into an
:class:`overlayd.protocol.EventFrame` for the connections that subscribed.
Peer health and NAT endpoint events are converted in :mod:`overlayd.server`;
the observability events (``attached``, ``detached``, ``reconcile_repaired``)
here.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from overlayd import protocol as p
from overlayd.model import Event

__all__ = ["event_frame", "event_line"]


def event_frame(event: Event) -> p.EventFrame | None:
    """The wire frame of an ``attached``, ``detached`` or ``reconcile_repaired``
    event; ``None`` for any other kind or an event missing a field."""
    wire: p.Event
    try:
        if event.event in ("attached", "detached") and event.handle and event.ip:
            cls = p.AttachedEvent if event.event == "attached" else p.DetachedEvent
            wire = cls(handle=event.handle, service=event.service or "", ip=event.ip)
        elif event.event == "reconcile_repaired" and event.kind and event.object is not None:
            wire = p.ReconcileRepairedEvent.model_validate(
                {"kind": event.kind, "object": event.object}
            )
        else:
            return None
    except ValidationError:
        return None
    return p.EventFrame.model_validate({"event": wire.to_wire()})


def event_line(event: Any) -> str:
    """One line of text for a wire event (``overlayctl events`` without ``--json``)."""
    fields = {k: v for k, v in event.to_wire().items() if k != "event"}
    if isinstance(event, p.PeerHealthChangedEvent):
        state = "healthy" if event.healthy else "unhealthy"
        return f"peer_health_changed {event.pubkey} {state}"
    if isinstance(event, p.NatEndpointChangedEvent):
        return f"nat_endpoint_changed {event.pubkey} -> {event.endpoint}"
    if isinstance(event, p.AttachedEvent | p.DetachedEvent):
        return f"{event.event} {event.handle} service={event.service} ip={event.ip}"
    if isinstance(event, p.ReconcileRepairedEvent):
        return f"reconcile_repaired {event.kind} {event.object}"
    return " ".join([event.event, *(f"{k}={v}" for k, v in fields.items())])
