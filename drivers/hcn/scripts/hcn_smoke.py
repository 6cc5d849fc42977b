"""Smoke test of the native HCN binding on a real Windows host.

Run as Administrator on Windows 10 1809 / Server 2019 or later::

    python drivers/hcn/scripts/hcn_smoke.py [--prefix 10.254.254.0/24]

It creates a throwaway Internal network (name ``overlayd-smoke-<random>``) with a
test subnet, an endpoint, a namespace, attaches the endpoint, queries
everything, then deletes everything it created (also after a failure), printing
one PASS/FAIL line per step. Exit status 0 only if every step passed.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import uuid
from collections.abc import Callable
from typing import TypeVar

from overlayd_hcn.api import HcnApi
from overlayd_hcn.api import NativeHcn
from overlayd_hcn.errors import HcnError
from overlayd_hcn.errors import HcnNotFoundError
from overlayd_hcn.schema import HostComputeEndpoint
from overlayd_hcn.schema import HostComputeNamespace
from overlayd_hcn.schema import HostComputeNetwork
from overlayd_hcn.schema import HostComputeQuery
from overlayd_hcn.schema import Ipam
from overlayd_hcn.schema import IpConfig
from overlayd_hcn.schema import NetworkType
from overlayd_hcn.schema import Route
from overlayd_hcn.schema import Subnet

_T = TypeVar("_T")


class Smoke:
    """Runs steps, prints PASS/FAIL, remembers failures."""

    def __init__(self) -> None:
        self.failed = 0

    def step(self, name: str, action: Callable[[], _T]) -> _T | None:
        try:
            result = action()
        except (HcnError, OSError, ValueError, AssertionError) as exc:
            self.failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}")
            return None
        print(f"PASS {name}")
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prefix",
        default="10.254.254.0/24",
        help="test subnet for the throwaway network (must not be in use on this host)",
    )
    args = parser.parse_args()
    if sys.platform == "win32":
        return run(ipaddress.ip_network(args.prefix, strict=True))
    else:  # an explicit else keeps mypy's linux pass free of unreachable code
        print(
            "hcn_smoke.py talks to computenetwork.dll and runs only on Windows; "
            "on this host run the simulator tests instead "
            "(python -m pytest drivers/hcn/tests/unit).",
            file=sys.stderr,
        )
        return 2


def _native() -> HcnApi:
    return NativeHcn(call_timeout=60.0)


def run(
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network,
    backend: Callable[[], HcnApi] = _native,
) -> int:
    """Create, attach, query and delete; one PASS/FAIL line per step.

    ``backend`` builds the HCN client (the native one; tests pass the simulator).
    """
    gateway = str(subnet.network_address + 1)
    address = str(subnet.network_address + 10)
    name = f"overlayd-smoke-{uuid.uuid4().hex[:8]}"
    smoke = Smoke()

    hcn = smoke.step("load computenetwork.dll", backend)
    if hcn is None:
        return 1
    network_doc = HostComputeNetwork(
        name=name,
        owner="overlayd-smoke",
        type=NetworkType.INTERNAL,
        ipams=[
            Ipam(
                subnets=[
                    Subnet(
                        ip_address_prefix=str(subnet),
                        routes=[Route(next_hop=gateway, destination_prefix="0.0.0.0/0")],
                    )
                ]
            )
        ],
        flags=0,
    )
    network = smoke.step("create Internal network", lambda: hcn.create_network(network_doc))
    endpoint = namespace = None
    try:
        if network is None or network.id is None:
            return 1
        net_id = network.id
        smoke.step(
            "enumerate finds the network by name",
            lambda: _check(
                hcn.enumerate_networks(HostComputeQuery.filtered(name=name)) == [net_id]
            ),
        )
        endpoint = smoke.step(
            "create endpoint",
            lambda: hcn.create_endpoint(
                net_id,
                HostComputeEndpoint(
                    name=f"{name}-ep",
                    ip_configurations=[
                        IpConfig(ip_address=address, prefix_length=subnet.prefixlen)
                    ],
                ),
            ),
        )
        namespace = smoke.step(
            "create namespace", lambda: hcn.create_namespace(HostComputeNamespace())
        )
        if endpoint is None or endpoint.id is None or namespace is None or namespace.id is None:
            return 1
        ep_id, ns_id = endpoint.id, namespace.id
        smoke.step("attach endpoint to namespace", lambda: hcn.add_namespace_endpoint(ns_id, ep_id))
        smoke.step(
            "query endpoint shows the namespace",
            lambda: _check(hcn.open_endpoint(ep_id).host_compute_namespace == ns_id),
        )
        smoke.step(
            "query namespace lists the endpoint",
            lambda: _check(ep_id in hcn.open_namespace(ns_id).endpoint_ids()),
        )
        smoke.step("detach endpoint", lambda: hcn.remove_namespace_endpoint(ns_id, ep_id))
    finally:
        if endpoint is not None and endpoint.id is not None:
            ep = endpoint.id
            smoke.step("delete endpoint", lambda: hcn.delete_endpoint(ep))
        if namespace is not None and namespace.id is not None:
            ns = namespace.id
            smoke.step("delete namespace", lambda: hcn.delete_namespace(ns))
        if network is not None and network.id is not None:
            net = network.id
            smoke.step("delete network", lambda: hcn.delete_network(net))
            smoke.step("network is gone", lambda: _gone(hcn, net))
    print("RESULT", "PASS" if smoke.failed == 0 else f"FAIL ({smoke.failed} step(s))")
    return 0 if smoke.failed == 0 else 1


def _check(condition: bool) -> None:
    if not condition:
        raise AssertionError("the service's answer did not match what was just done")


def _gone(hcn: HcnApi, network_id: uuid.UUID) -> None:
    try:
        hcn.open_network(network_id)
    except HcnNotFoundError:
        return
    raise AssertionError("the network still exists after delete")


if __name__ == "__main__":
    sys.exit(main())
