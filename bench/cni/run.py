"""ADD and DEL per container: overlayd-cni against the reference ``bridge`` + ``host-local``.

Run as root::

    python bench/cni/run.py --n 1 200

For each N and each method, a fresh throwaway "host" namespace and N
container namespaces are made (not timed); then N ``ADD`` and N ``DEL`` are
timed one by one, each a complete exec of the plugin with the CNI
environment and the configuration on standard input, run in the host
namespace as a runtime runs it:

* ``cni``: ``bridge`` with ``host-local`` IPAM (the bridge plugin execs
  host-local itself), the configuration ``bench/attach`` uses;
* ``overlayd-cni``: the console script pip installed, against the real daemon
  (``linux_bridge`` + ``fake`` for the WireGuard device) in the host
  namespace, set up with service ``web`` beforehand (not timed);
* ``launcher``: the same plugin through the launcher ``overlayd-cni install``
  writes (``python -IS``, no ``site``);
* ``native``: the compiled front end ``overlayd-cni install --native`` writes
  (cni/src/overlayd_cni/native/overlayd-cni.c): it forwards the invocation to
  the daemon (``cni_exec``), which runs the plugin's logic itself; skipped
  when there is no C compiler.

The methods are timed interleaved: the ADD of container i with each method
in turn, then container i+1, and the same for DEL, so that all see the same
machine (on the shared development VM the speed drifts by more than the
differences measured). The method that goes first rotates from one container
to the next and from one ``--repeat`` to the next, so that none always runs
right after another's (a first ``ADD`` leaves kernel work behind). Before
the timed loops the bench waits until the machine is idle (as
``bench/attach`` does). It then prints, per method, the median and p90 of
ADD and DEL in milliseconds and the ratio to ``cni``; the target is ADD
<= 0.5x the reference bridge plugin.

At N = 1 each method gives one sample, its first ``ADD``, which moves by
tens of percent from run to run. ``--repeat R`` runs every N R times, each
time on fresh namespaces and daemons, and pools the samples: the N = 1 row
is then the median of R first ``ADD`` s. The report then also compares the
methods pair by pair (each sample with the reference's taken beside it):
the median of those ratios, their range, and how many meet the target.

``--breakdown`` also times where an overlayd-cni ADD goes (medians of 30
runs each, no namespaces involved except one attach): starting the
interpreter (``python -IS -c pass``, and with ``site``), starting it and
importing the plugin, and the daemon's own ``attach_interface`` through an
open connection. Nothing outside the namespaces it creates is touched;
everything is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlayd.rawclient import RawClient
from overlayd.testing.scripts import load_script
from overlayd_cni.launcher import InstallError
from overlayd_cni.launcher import install
from overlayd_cni.testing import PLUGIN
from overlayd_cni.testing import reference_plugin

attach_bench = load_script(
    Path(__file__).resolve().parent.parent / "attach" / "run.py", "attach_bench"
)


@dataclass
class Result:
    method: str
    n: int
    add_ms: list[float]
    del_ms: list[float]


@dataclass
class Setup:
    """One method ready to be timed: its executable, configuration and namespaces."""

    method: str
    argv: list[str]
    conf: str
    #: Execs in the method's host namespace (``attach_bench.NetnsSpawner``).
    spawner: Any
    ctrs: list[str]

    def run(self, command: str, i: int) -> float:
        netns = f"/run/netns/{self.ctrs[i]}"
        return float(
            attach_bench.cni_exec(self.argv, self.spawner, command, self.conf, f"bench{i}", netns)
        )


def setup_reference(stack: contextlib.ExitStack, n: int) -> Setup:
    bridge = reference_plugin("bridge")
    if bridge is None or reference_plugin("host-local") is None:
        raise RuntimeError("install containernetworking-plugins (bridge, host-local)")
    _, spawner, ctrs = attach_bench.cni_host(stack, n)
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="ovb-cni-"))
    conf = attach_bench.bridge_conf(Path(tmp) / "ipam", False)
    return Setup("cni", [bridge], conf, spawner, ctrs)


def setup_overlayd(stack: contextlib.ExitStack, n: int, argv: list[str], method: str) -> Setup:
    host, spawner, ctrs = attach_bench.cni_host(stack, n)
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="ovb-ocni-"))
    stack.enter_context(attach_bench.daemon(host, Path(tmp)))
    conf = json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "benchnet",
            "type": "overlayd-cni",
            "socket": str(Path(tmp) / "s.sock"),
            "service": "web",
        }
    )
    return Setup(method, argv, conf, spawner, ctrs)


def bench(
    n: int, makers: dict[str, Callable[[contextlib.ExitStack, int], Setup]], turn: int = 0
) -> list[Result]:
    """Every method for ``n`` containers, interleaved: container i of each method in turn.

    On a shared VM whose speed drifts, timing the methods side by side (ADD
    of container i with each method, then the next i; the same for DEL)
    makes every method see the same conditions; a method run alone minutes
    later may see a different machine. Which method goes first rotates with
    the container and with ``turn`` (the repeat): an ``ADD`` timed right
    after another method's pays for kernel work that one left behind (the
    bridge plugin's first ``ADD`` creates its bridge), so a fixed order
    would charge it to the same method every time.
    """
    with contextlib.ExitStack() as stack:
        setups = [make(stack, n) for make in makers.values()]
        attach_bench.settle()
        adds: dict[str, list[float]] = {s.method: [] for s in setups}
        dels: dict[str, list[float]] = {s.method: [] for s in setups}
        for i in range(n):
            for s in _rotated(setups, turn + i):
                adds[s.method].append(s.run("ADD", i))
        for i in range(n):
            for s in _rotated(setups, turn + i):
                dels[s.method].append(s.run("DEL", i))
    return [Result(s.method, n, adds[s.method], dels[s.method]) for s in setups]


def _rotated(setups: list[Setup], by: int) -> list[Setup]:
    """``setups`` starting at ``by`` (modulo their number): each goes first in turn."""
    k = by % len(setups)
    return setups[k:] + setups[:k]


def _median_run(argv: list[str], runs: int = 30, **kwargs: Any) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, **kwargs)
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def breakdown(launcher: Path) -> list[str]:
    """Where an overlayd-cni ADD goes, as medians of separate measurements."""
    py = sys.executable
    paths = json.dumps(sorted({str(Path(p)) for p in _package_roots()}))
    importer = f"import sys; sys.path[:0] = {paths}; import overlayd_cni.main"
    lines = ["where an ADD of overlayd-cni goes (medians of 30 runs, ms):"]
    rows: list[tuple[str, Callable[[], float]]] = [
        ("python -IS -c pass (interpreter start)", lambda: _median_run([py, "-IS", "-c", "pass"])),
        ("python -c pass (start with site)", lambda: _median_run([py, "-c", "pass"])),
        ("python -IS + import overlayd_cni.main", lambda: _median_run([py, "-IS", "-c", importer])),
        (
            "launcher, VERSION (start + import + stdin/stdout)",
            lambda: _median_run([str(launcher)], env={"CNI_COMMAND": "VERSION"}, input=b"{}"),
        ),
        (
            "console script, VERSION",
            lambda: _median_run([str(PLUGIN)], env={"CNI_COMMAND": "VERSION"}, input=b"{}"),
        ),
    ]
    for label, measure in rows:
        lines.append(f"  {label:<52} {measure():7.2f}")
    lines.append(
        f"  {'daemon attach_interface over an open connection':<52} {_daemon_attach():7.2f}"
    )
    return lines


def _package_roots() -> list[str]:
    from overlayd_cni.launcher import package_roots

    return package_roots()


def _daemon_attach(runs: int = 30) -> float:
    """Median of the daemon's own attach_interface + detach cost, seen by a client."""
    with (
        attach_bench.namespaces("host", 1) as (host,),
        attach_bench.namespaces("ctr", runs) as ctrs,
        tempfile.TemporaryDirectory(prefix="ovb-ocni-") as tmp,
        attach_bench.daemon(host, Path(tmp)),
        RawClient(str(Path(tmp) / "s.sock"), timeout=60) as client,
    ):
        samples = []
        for i, ctr in enumerate(ctrs):
            handle = {
                "platform": "netns",
                "path": f"/run/netns/{ctr}",
                "container_id": f"b{i}",
                "network": "benchnet",
            }
            start = time.perf_counter()
            client.call({"op": "attach_interface", "handle": handle, "service": "web"})
            samples.append((time.perf_counter() - start) * 1000.0)
            client.call({"op": "detach_container", "handle": handle})
        return statistics.median(samples)


def pooled(runs: list[list[Result]]) -> list[Result]:
    """The samples of repeated runs of one N, per method (in the first run's order)."""
    out = {r.method: Result(r.method, r.n, [], []) for r in runs[0]}
    for run in runs:
        for r in run:
            out[r.method].add_ms.extend(r.add_ms)
            out[r.method].del_ms.extend(r.del_ms)
    return list(out.values())


def report(results: list[Result]) -> str:
    lines = attach_bench.latency_table(
        [(r.method, r.n, r.add_ms, r.del_ms) for r in results],
        "cni",
        ("ADD med", "ADD p90", "DEL med", "DEL p90", "ADD/cni", "DEL/cni"),
    )
    lines.extend(paired(results))
    lines.append("")
    lines.append("target: ADD <= 0.5x cni (the reference bridge + host-local plugins)")
    return "\n".join(lines)


def paired(results: list[Result], target: float = 0.5) -> list[str]:
    """Each method's ``ADD`` over ``cni``'s, pair by pair, where both have samples.

    The samples of two methods at one N were taken side by side (the same
    container index of the same repeat, seconds apart), so their ratio is
    free of the VM's drift between repeats, which moves both.
    """
    refs = {r.n: r.add_ms for r in results if r.method == "cni"}
    lines: list[str] = []
    for r in results:
        ref = refs.get(r.n)
        if r.method == "cni" or not ref or len(ref) != len(r.add_ms):
            continue
        ratios = sorted(a / b for a, b in zip(r.add_ms, ref, strict=True))
        met = sum(x <= target for x in ratios)
        lines.append(
            f"{r.method} N={r.n}: ADD/cni pair by pair: median {statistics.median(ratios):.2f}x, "
            f"{ratios[0]:.2f}x-{ratios[-1]:.2f}x, {met} of {len(ratios)} at {target}x or less"
        )
    if lines:
        lines.insert(0, "")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    methods = ["cni", "overlayd-cni", "launcher", "native"]
    parser.add_argument("--n", type=int, nargs="+", default=[1, 200])
    parser.add_argument("--methods", nargs="+", default=methods, choices=methods)
    parser.add_argument("--breakdown", action="store_true", help="also time the ADD's parts")
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="R",
        help="run each N this many times, each on fresh namespaces and daemons, and pool "
        "the samples (at N = 1 the medians are then of R first ADDs, not one)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if os.geteuid() != 0:
        print("run as root (network namespaces)", file=sys.stderr)
        return 2
    if not PLUGIN.exists():
        print(f"{PLUGIN} is missing: pip install -e cni", file=sys.stderr)
        return 2
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="ovb-launcher-") as tmp:
        launcher = install(Path(tmp))
        native: Path | None = None
        if "native" in args.methods:
            try:
                native = install(Path(tmp) / "native", native=True)
            except InstallError as exc:
                print(f"# native skipped: {exc}", file=sys.stderr)
        makers: dict[str, Callable[[contextlib.ExitStack, int], Setup]] = {
            "cni": setup_reference,
            "overlayd-cni": lambda st, n: setup_overlayd(st, n, [str(PLUGIN)], "overlayd-cni"),
            "launcher": lambda st, n: setup_overlayd(st, n, [str(launcher)], "launcher"),
            "native": lambda st, n: setup_overlayd(st, n, [str(native)], "native"),
        }
        chosen = {m: makers[m] for m in args.methods if m != "native" or native is not None}
        for n in args.n:
            start = time.monotonic()
            results.extend(pooled([bench(n, chosen, turn) for turn in range(args.repeat)]))
            print(f"# N={n} done in {time.monotonic() - start:.1f} s", flush=True)
        print(report(results))
        if args.breakdown:
            print()
            print("\n".join(breakdown(launcher)))
    if args.json is not None:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
