"""``overlayd demo --cluster``: three nodes join through etcd; the real run and the fake one."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytest.importorskip("etcd3gw", reason="cluster mode needs the `cluster` extra (etcd3gw)")

DEMO = [sys.executable, "-m", "overlayd", "demo", "--cluster"]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DEMO, *args], capture_output=True, text=True, timeout=timeout, start_new_session=True
    )


@pytest.mark.privileged
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cluster_demo_forms_the_mesh_and_pings() -> None:
    result = _run([], timeout=240)
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    # each of the three nodes saw the two others appear, with no add_peer
    pairs = set(re.findall(r"s  (n\d): peer (n\d) ", out))
    assert pairs == {(a, b) for a in ("n1", "n2", "n3") for b in ("n1", "n2", "n3") if a != b}
    ips = re.findall(r"(n\d): container \S+ -> (\S+)", out)
    assert len(ips) == 3
    resolved = re.search(r"^    web\.\S+\.local -> (.+)$", out, re.M)
    assert resolved is not None, out
    assert sorted(resolved.group(1).split()) == sorted(ip for _, ip in ips)
    assert out.count("3 received, 0% packet loss") == 2
    tag = re.search(r"netns (ovdc[0-9a-f]{4})-n1", out)
    assert tag is not None
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert tag.group(1) not in left.stdout


def test_cluster_demo_fake_forms_the_mesh() -> None:
    result = _run(["--fake"], timeout=120)
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert "fake driver: three in-process engines" in out
    assert "every node has 2 peers" in out
    table = out.split("connected to etcd\n", 1)[1].splitlines()
    assert [line.split()[0] for line in table[1:4]] == ["n1", "n2", "n3"]


def test_cluster_demo_refuses_keep() -> None:
    result = _run(["--keep"], timeout=60)
    assert result.returncode == 2
    assert "--cluster takes only --fake" in result.stderr
