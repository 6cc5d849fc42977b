"""The default ``advertise`` address comes from the default route's interface."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlayd.cluster.errors import ClusterError
from overlayd.cluster.underlay import default_route_address

HEADER = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"


def _proc(tmp_path: Path, routes: str, v6: str = "", addrs: str = "") -> Path:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "route").write_text(HEADER + routes)
    (tmp_path / "net" / "ipv6_route").write_text(v6)
    (tmp_path / "net" / "if_inet6").write_text(addrs)
    return tmp_path


def test_the_default_route_with_the_lowest_metric_wins(tmp_path: Path) -> None:
    routes = (
        "nosuch0\t00000000\t0100000A\t0003\t0\t0\t5\t00000000\t0\t0\t0\n"
        "lo\t00000000\t00000000\t0001\t0\t0\t1\t00000000\t0\t0\t0\n"
        "lo\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n"
    )
    assert default_route_address(_proc(tmp_path, routes)) == "127.0.0.1"


def test_an_ipv6_default_route_is_used_without_an_ipv4_one(tmp_path: Path) -> None:
    v6 = (
        "0" * 32
        + " 00 "
        + "0" * 32
        + " 00 "
        + "0" * 32
        + " 00000400 00000001 00000000 00000003 eth9\n"
    )
    addrs = (
        "fe800000000000000000000000000001 05 40 20 80 eth9\n"
        "fd000000000000000000000000000007 05 40 00 80 eth9\n"
    )
    assert default_route_address(_proc(tmp_path, "", v6, addrs)) == "fd00::7"


def test_no_default_route_asks_for_advertise(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="set `advertise`"):
        default_route_address(_proc(tmp_path, ""))
