"""Crash safety: a child committing in a loop is SIGKILLed at random points."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from overlayd.state import SqliteStore

# The child commits batch i as one transaction: GROUP records of batch i, the
# "head" pointer moved to i, and the scratch record of batch i - 1 deleted. It
# prints i only after commit() returned.
GROUP = 5
CHILD = r"""
import sys
from overlayd.state import SqliteStore

store = SqliteStore(sys.argv[1])
head = store.get("head", "last")
i = 0 if head is None else head + 1
print("ready", flush=True)
while True:
    puts = {("batch", f"{i:06d}-{j}"): {"seq": i, "part": j, "pad": "x" * 512}
            for j in range(GROUP)}
    puts[("head", "last")] = i
    puts[("scratch", f"{i:06d}")] = i
    deletes = [("scratch", f"{i - 1:06d}")] if i else []
    store.commit(puts, deletes)
    print(i, flush=True)
    i += 1
""".replace("GROUP", str(GROUP))


def _check(db: Path, reported: set[int]) -> int:
    """Open the database after a kill; assert no lost and no partial commit."""
    store = SqliteStore(db)
    try:
        data = store.load()
    finally:
        store.close()
    batches: dict[int, set[int]] = {}
    for rec in data.get("batch", {}).values():
        batches.setdefault(rec["seq"], set()).add(rec["part"])
    head = data["head"]["last"] if "head" in data else -1
    # All or nothing: every batch present has all its records ...
    assert all(parts == set(range(GROUP)) for parts in batches.values()), batches
    # ... batches are exactly 0..head, so the head moved with its batch ...
    assert set(batches) == set(range(head + 1))
    # ... the scratch record rotated in the same transaction ...
    expected_scratch = {f"{head:06d}": head} if head >= 0 else {}
    assert data.get("scratch", {}) == expected_scratch
    # ... and every commit the child reported as done is there.
    assert reported <= set(batches)
    return head


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_at_random_points_loses_no_reported_commit(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    SqliteStore(db).close()
    rng = random.Random(os.getpid() ^ int(time.time()))
    heads: list[int] = []
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    for _ in range(30):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            assert child.stdout is not None
            first = child.stdout.readline()
            assert first == b"ready\n", (first, child.stderr and child.stderr.read())
            time.sleep(rng.uniform(0.0, 0.04))
            child.send_signal(signal.SIGKILL)
            out, _err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == -signal.SIGKILL
        # Only complete lines: a kill inside print() may leave a partial one.
        reported = {int(line) for line in out.split(b"\n")[:-1] if line.strip()}
        heads.append(_check(db, reported))
    # The runs made progress across kills, and they resumed from the durable head.
    assert heads == sorted(heads)
    assert heads[-1] > 30
