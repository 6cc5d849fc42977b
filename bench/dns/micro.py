"""Per-query CPU cost of the DNS server's parts, without sockets.

Measures dnspython parse / build / render for a plain A query, then the
server's own handler with the fast path on and off. This is the measurement
behind the byte-level fast path in ``overlayd/dns/_wire.py``.

Run: ``python bench/dns/micro.py``
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import dns.flags
import dns.message
import dns.rrset

from overlayd.dns import DnsConfig
from overlayd.dns import DnsServer

N = 20_000


def per_call_us(fn: Callable[[], object], n: int = N) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    query = dns.message.make_query("web.overlay.local.", "A")
    wire = query.to_wire()
    parsed = dns.message.from_wire(wire)

    def build() -> dns.message.Message:
        r = dns.message.make_response(parsed)
        r.flags |= dns.flags.AA
        r.answer.append(
            dns.rrset.from_text(parsed.question[0].name, 5, "IN", "A", "10.0.0.1", "10.0.0.2")
        )
        return r

    response = build()
    rows = [
        ("dnspython from_wire (query)", per_call_us(lambda: dns.message.from_wire(wire))),
        ("dnspython make_response + rrset", per_call_us(build)),
        ("dnspython to_wire (answer)", per_call_us(response.to_wire)),
    ]
    miss = dns.message.make_query("nope.overlay.local.", "A").to_wire()
    for fast in (True, False):
        server = DnsServer(DnsConfig(upstreams=[], fast_path=fast))
        server.set_records("web", ["10.0.0.1", "10.0.0.2"])
        label = "fast path" if fast else "dnspython path"
        rows.append((f"server handler, hit, {label}", per_call_us(partial(server._handle, wire))))
        rows.append(
            (f"server handler, NXDOMAIN, {label}", per_call_us(partial(server._handle, miss)))
        )
    width = max(len(r[0]) for r in rows)
    for name, us in rows:
        print(f"{name:<{width}}  {us:8.1f} us/query")


if __name__ == "__main__":
    main()
