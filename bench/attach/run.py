"""Attach/detach latency: overlayd (IPC) vs the CNI bridge plugin vs raw pyroute2.

Run as root::

    python bench/attach/run.py --n 1 50 200 1000

For each N and each method, a fresh throwaway "host" namespace and N container
namespaces are made (not timed), then N attaches and N detaches are timed one
by one, sequentially:

* ``overlayd``: the real daemon (``python -m overlayd serve``, drivers
  ``linux_bridge`` + ``fake`` for the WireGuard device) inside the host
  namespace, driven with :class:`overlayd.client.Client` over its socket,
  ``netns`` handles. Detach uses the batched deleter (names freed at once,
  kernel unregister in the background).
* ``overlayd+nat``: the same, with ``setup_global_overlay(nat_enabled=True)``:
  the engine programs one masquerade element for the node slice (cluster CIDR
  exempt) in nftables table ``inet overlayd`` inside the throwaway host
  namespace (checked before timing); attaches add no per-container NAT state.
  Its ratio against ``cni+masq`` is the issue's "attach with NAT" target.
* ``overlayd6``: the same as ``overlayd`` on an IPv6 cluster (``fd00:240::/48``):
  IPv6-only containers, whose interfaces keep a link-local address; shows
  that the per-attach cost stays flat there too.
* ``cni``/``cni+masq``: ``/usr/lib/cni/bridge`` with ``host-local`` IPAM,
  ``CNI_COMMAND=ADD``/``DEL``, JSON config on stdin, run in the host namespace
  (``ipMasq`` false / true).
* ``pyroute2``: the floor; the same kernel configuration overlayd's driver
  makes, through pyroute2's ``IPRoute`` (one for the host namespace, reused;
  one per container namespace): the bridge without multicast snooping and
  with a fixed MAC, veth with its peer created in the container namespace,
  address, routes, bridge port, no IPv6 link-local on IPv4-only interfaces and
  ``disable_ipv6`` on the host end; in-process, run by a thread inside the
  host namespace, no IPC, no state, synchronous deletion.
* ``paired`` (N >= 100 only): the growth measurement. Two daemons in two
  host namespaces; after each of daemon A's N attaches, daemon B, whose
  bridge always holds nine containers, attaches a tenth (timed: the
  reference sample) and detaches it (untimed, waiting for its background
  deletion). A's sample divided by the reference next to it cancels the
  VM's speed drift, which on the development VM was larger than the growth
  measured; A minus the reference is the cost A's size adds.
* ``paired6`` (N >= 100 only): ``paired`` on an IPv6 cluster, as ``overlayd6``.
* ``paired-floor`` (N >= 100 only): the same for the floor, one thread in
  each host namespace.

Before each timed loop the bench waits until the machine has been at least
90 % idle for 2 s in a row: the kernel tears down the previous method's
namespaces (and sets up the new ones) in background workers, whose CPU time
would otherwise be charged to the first attaches timed.

Each N starts with an untimed warm-up round (the floor's attaches and
detaches for N containers, results discarded). On the development VM the
first method run after a pause was about 2 ms per attach slower than the
same method run again right after it (6.6 vs 4.2 ms for overlayd at N=1000),
whichever method came first: the kernel's first allocations for a thousand
namespaces and links are slower than reusing memory it has just freed.
``--no-warmup`` skips it.

Prints median and p90 per attach and per detach in milliseconds, each
method's ratio to the floor, overlayd/cni and overlayd+nat/cni+masq, and for
N >= 100 the growth: the last attaches over the 10th, plain and (``paired``)
against the reference. Nothing
outside the namespaces it creates is touched; everything is removed at the end,
also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from typing import TypeVar

from pyroute2 import IPRoute

from overlayd.client import Client
from overlayd.progress import track
from overlayd.protocol import NetnsHandle
from overlayd.testing.daemon import start_daemon
from overlayd_linux.netns import run_in_netns
from overlayd_linux.netns import setns_current_thread
from overlayd_linux_bridge.netlink import bridge_mac

T = TypeVar("T")

CNI_DIR = "/usr/lib/cni"
#: What overlayd's driver sends with "link up" for IPv4-only interfaces (no
#: IPv6 link-local address, so no DAD/MLD/RS flooded to every bridge port).
QUIET_IPV6 = {
    "IFLA_AF_SPEC": {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", 1]]}]]}
}
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)  # the process links libc already


@dataclass
class Result:
    method: str
    n: int
    attach_ms: list[float]
    detach_ms: list[float]
    #: ``paired`` only: the reference daemon's attach timed right after each attach.
    ref_ms: list[float] | None = None


# -- namespaces ----------------------------------------------------------------


@contextlib.contextmanager
def namespaces(prefix: str, count: int) -> Iterator[list[str]]:
    """``count`` named namespaces (one ``ip -batch`` process); removed on exit."""
    tag = secrets.token_hex(3)
    names = [f"ovb-{prefix}-{tag}-{i}" for i in range(count)]
    batch = "".join(f"netns add {n}\n" for n in names)
    subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True)
    try:
        yield names
    finally:
        batch = "".join(f"netns del {n}\n" for n in names)
        subprocess.run(["ip", "-force", "-batch", "-"], input=batch, text=True, check=False)


def _cpu_idle_fraction(interval: float) -> float:
    """Share of all CPUs' time spent idle over ``interval`` seconds (/proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    idle0, total0 = sample()
    time.sleep(interval)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)


def settle(timeout: float = 120.0) -> None:
    """Wait until the machine is idle again before the next method runs.

    Deleted namespaces are torn down by a kernel worker after ``ip netns del``
    returns, and new ones keep kernel workers busy for a while after ``ip netns
    add``; with 1,000 of them that takes seconds of CPU, which would otherwise
    be charged to the first attaches timed next.
    """
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 4 and time.monotonic() < deadline:  # 2 s in a row at least 90 % idle
        quiet = quiet + 1 if _cpu_idle_fraction(0.5) >= 0.9 else 0


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True)


def _track(items: Sequence[T], what: str) -> Iterator[T]:
    """Progress of a long loop on stderr (stdout carries the report)."""
    return track(items, what, len(items), out=sys.stderr)


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


# -- overlayd through the daemon ----------------------------------------------------


SLICE_CIDR = "10.240.0.0/20"


def _check_masquerade(host: str) -> None:
    """Fail unless ``inet overlayd`` in ``host`` masquerades the node slice."""
    out = subprocess.run(
        ["ip", "netns", "exec", host, "nft", "-j", "list", "set", "inet", "overlayd", "masq4"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"overlayd+nat: no masq4 set in table inet overlayd of {host}: {out.stderr.strip()}"
        )
    elems: list[Any] = []
    for item in json.loads(out.stdout)["nftables"]:
        if "set" in item:
            elems.extend(item["set"].get("elem", []))
    base, plen = SLICE_CIDR.split("/")
    want = {"prefix": {"addr": base, "len": int(plen)}}
    if want not in elems:
        raise RuntimeError(
            f"overlayd+nat: masq4 in {host} holds {elems}, not the node slice {SLICE_CIDR}."
        )


@contextlib.contextmanager
def daemon(host: str, work: Path, *, nat: bool = False, ipv6: bool = False) -> Iterator[Client]:
    """The real daemon inside namespace ``host``, set up with service ``web``."""
    _ip(host, "link", "set", "lo", "up")
    work.mkdir(parents=True, exist_ok=True)
    sock = str(work / "s.sock")
    running = start_daemon(
        work,
        '[drivers]\nenabled = ["linux_bridge", "fake"]\n[engine]\nhealth_interval_secs = 0\n',
        prefix=("ip", "netns", "exec", host),
        args=("--no-dns", "--log-level", "warning"),
        timeout=20,
    )
    try:
        with Client(sock, timeout=60.0) as client:
            client.setup_global_overlay(
                deployment="bench",
                instance_id="n1",
                cluster_cidr="fd00:240::/48" if ipv6 else "10.240.0.0/16",
                slice_cidr="fd00:240::/64" if ipv6 else SLICE_CIDR,
                wg_port=51820,
                nat_enabled=nat,
            )
            if nat:
                _check_masquerade(host)
            client.setup_service_overlay("web")
            yield client
    finally:
        running.stop(30)


def bench_overlayd(n: int, nat: bool = False, ipv6: bool = False) -> Result:
    with (
        namespaces("host", 1) as (host,),
        namespaces("ctr", n) as ctrs,
        tempfile.TemporaryDirectory(prefix="ovb-") as tmp,
        daemon(host, Path(tmp), nat=nat, ipv6=ipv6) as client,
    ):
        handles = [NetnsHandle(path=f"/run/netns/{c}") for c in ctrs]
        settle()
        attach = [
            _timed(partial(client.attach_container, h, "web"))
            for h in _track(handles, "overlayd attaches")
        ]
        detach = [
            _timed(partial(client.detach_container, h))
            for h in _track(handles, "overlayd detaches")
        ]
    method = "overlayd6" if ipv6 else "overlayd+nat" if nat else "overlayd"
    return Result(method, n, attach, detach)


#: Containers kept on the reference daemon's bridge; each reference sample is
#: the attach of one more, so every reference sample is a "10th attach".
REF_PORTS = 9


def bench_paired(n: int, ipv6: bool = False) -> Result:
    """``overlayd`` growth with a reference measured at the same moments.

    Two daemons in two throwaway host namespaces. Daemon A attaches ``n``
    containers one by one, as ``overlayd`` does. Right after each of A's
    attaches, daemon B, whose bridge always holds :data:`REF_PORTS`
    containers, attaches one more (timed: the reference sample) and detaches
    it again (untimed; the bench then waits until B's background deleter has
    removed the veth, so that no deletion runs during A's next attach).

    A's i-th attach divided by the reference sample taken next to it cancels
    whatever slows the whole VM down or speeds it up during the run; what is
    left is the cost that grows with A's size. The two namespaces share the
    kernel, so a cost that grows with the number of links or namespaces on
    the *machine* (not in one namespace) shows up in both and is cancelled
    too: the report therefore also prints A's raw ratio and the reference's
    own drift from start to end.
    """
    with (
        namespaces("host", 2) as (host_a, host_b),
        namespaces("ctr", n) as ctrs,
        namespaces("ref", REF_PORTS + 1) as refs,
        tempfile.TemporaryDirectory(prefix="ovb-") as tmp,
        daemon(host_a, Path(tmp) / "a", ipv6=ipv6) as big,
        daemon(host_b, Path(tmp) / "b", ipv6=ipv6) as small,
    ):
        for r in refs[:REF_PORTS]:
            small.attach_container(NetnsHandle(path=f"/run/netns/{r}"), "web")
        extra = NetnsHandle(path=f"/run/netns/{refs[REF_PORTS]}")
        b_fd = os.open(f"/run/netns/{host_b}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with _ipr_in(b_fd) as b_links:
                baseline = len(b_links.get_links())

                def reference() -> float:
                    sample = _timed(partial(small.attach_container, extra, "web"))
                    small.detach_container(extra)
                    deadline = time.monotonic() + 10
                    while len(b_links.get_links()) > baseline:
                        if time.monotonic() > deadline:
                            raise RuntimeError("the reference daemon did not delete its veth")
                        time.sleep(0.005)
                    return sample

                handles = [NetnsHandle(path=f"/run/netns/{c}") for c in ctrs]
                settle()
                attach: list[float] = []
                ref: list[float] = []
                for h in handles:
                    attach.append(_timed(partial(big.attach_container, h, "web")))
                    ref.append(reference())
                detach = [_timed(partial(big.detach_container, h)) for h in handles]
        finally:
            os.close(b_fd)
    return Result("paired6" if ipv6 else "paired", n, attach, detach, ref)


# -- CNI bridge plugin ------------------------------------------------------------


def _enter(fd: int) -> Callable[[], None]:
    def pre() -> None:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")

    return pre


class NetnsSpawner:
    """Executes plugins inside a network namespace the way a runtime does, cheaply.

    A runtime execs a CNI plugin from its own network namespace. Doing that
    with ``preexec_fn`` (setns in the child) makes Python fork the whole
    benchmark process, a few milliseconds more per exec than the
    ``vfork``/``posix_spawn`` path and varying with the machine's load,
    which would be charged to every plugin. Instead one thread enters the
    namespace once (a network namespace is per thread) and spawns from
    there: a child inherits its creator thread's namespaces, and Python
    uses the cheap path. Every method of a bench goes through this.
    """

    def __init__(self, fd: int) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="spawner", initializer=_enter(fd))

    def run(
        self, argv: Sequence[str], **kwargs: Any
    ) -> tuple[subprocess.CompletedProcess[str], float]:
        """``subprocess.run(argv, **kwargs)`` in the namespace, and its milliseconds."""

        def timed() -> tuple[subprocess.CompletedProcess[str], float]:
            start = time.perf_counter()
            proc = subprocess.run(argv, check=False, text=True, **kwargs)
            return proc, (time.perf_counter() - start) * 1000.0

        return self._pool.submit(timed).result()

    def close(self) -> None:
        self._pool.shutdown()


def cni_host(stack: contextlib.ExitStack, n: int) -> tuple[str, NetnsSpawner, list[str]]:
    """A throwaway host namespace, a spawner inside it, and ``n`` container namespaces
    (all released by ``stack``)."""
    (host,) = stack.enter_context(namespaces("host", 1))
    ctrs = stack.enter_context(namespaces("ctr", n))
    _ip(host, "link", "set", "lo", "up")
    fd = os.open(f"/run/netns/{host}", os.O_RDONLY | os.O_CLOEXEC)
    stack.callback(os.close, fd)
    spawner = NetnsSpawner(fd)
    stack.callback(spawner.close)
    return host, spawner, ctrs


def bridge_conf(data_dir: Path, masq: bool) -> str:
    """The reference ``bridge`` plugin's configuration, ``host-local`` IPAM in ``data_dir``."""
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "benchnet",
            "type": "bridge",
            "bridge": "cnibench0",
            "isGateway": True,
            "ipMasq": masq,
            "mtu": 1420,
            "ipam": {"type": "host-local", "subnet": "10.77.0.0/16", "dataDir": str(data_dir)},
        }
    )


def cni_exec(
    argv: list[str], spawner: NetnsSpawner, command: str, conf: str, cid: str, netns: str
) -> float:
    """Exec a CNI plugin in the spawner's namespace as a runtime does; its milliseconds."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(Path(argv[0]).parent),
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    }
    proc, elapsed = spawner.run(argv, input=conf, env=env, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} {command} failed: {proc.stdout} {proc.stderr}")
    return elapsed


def bench_cni(n: int, masq: bool) -> Result:
    with contextlib.ExitStack() as stack:
        _, spawner, ctrs = cni_host(stack, n)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="ovb-cni-"))
        conf = bridge_conf(Path(tmp) / "ipam", masq)

        def run(command: str, i: int) -> None:
            bridge = [f"{CNI_DIR}/bridge"]
            cni_exec(bridge, spawner, command, conf, f"bench{i}", f"/run/netns/{ctrs[i]}")

        settle()
        attach = [_timed(partial(run, "ADD", i)) for i in _track(range(n), "CNI ADDs")]
        detach = [_timed(partial(run, "DEL", i)) for i in _track(range(n), "CNI DELs")]
    return Result("cni+masq" if masq else "cni", n, attach, detach)


# -- raw pyroute2 floor -------------------------------------------------------------


def _ipr_in(fd: int) -> Any:
    sock = run_in_netns(fd, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0))
    return IPRoute(fileno=sock.detach())


class Floor:
    """The floor's attach and detach, for one host namespace.

    Every method must be called from a thread inside that namespace (the
    ``/proc/sys`` writes act on the writer's namespace, the ``IPRoute`` is
    bound to it).
    """

    def __init__(self, bridge: str, cidr: str) -> None:
        self._ipr = IPRoute()
        self._mac = bridge_mac(bridge)
        # The bridge as overlayd makes it: no STP, no multicast snooping, a
        # fixed MAC.
        self._ipr.link(
            "add",
            ifname=bridge,
            kind="bridge",
            br_stp_state=0,
            br_mcast_snooping=0,
            address=self._mac,
        )
        self._br = self._ipr.link_lookup(ifname=bridge)[0]
        self._net = ipaddress.ip_network(cidr)
        self._gateway = str(self._net.network_address + 1)
        self._ipr.addr("add", index=self._br, address=self._gateway, prefixlen=self._net.prefixlen)
        self._ipr.link("set", index=self._br, state="up")

    def attach(self, i: int, netns: str) -> None:
        ipr = self._ipr
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            name = f"rv{i:05d}"
            ipr.link(
                "add",
                ifname=name,
                kind="veth",
                mtu=1420,
                address=self._mac,  # the port shares the bridge's MAC, as in overlayd
                peer={"ifname": "eth0", "net_ns_fd": fd, "mtu": 1420},
            )
            idx = ipr.link_lookup(ifname=name)[0]
            # No IPv6 on the host end, as overlayd does.
            with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
                f.write("1")
            with _ipr_in(fd) as ns:
                eth0 = ns.link_lookup(ifname="eth0")[0]
                ip = str(self._net.network_address + 2 + i)
                ns.addr("add", index=eth0, address=ip, prefixlen=self._net.prefixlen)
                ns.link("set", index=eth0, state="up", **QUIET_IPV6)
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
                ns.route("add", dst="0.0.0.0/0", gateway=self._gateway, oif=eth0)
            ipr.link("set", index=idx, master=self._br, state="up", **QUIET_IPV6)
        finally:
            os.close(fd)

    def detach(self, i: int) -> None:
        self._ipr.link("del", index=self._ipr.link_lookup(ifname=f"rv{i:05d}")[0])

    def close(self) -> None:
        self._ipr.close()


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[ThreadPoolExecutor]:
    """One worker thread moved into namespace ``name`` for as long as the block runs."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with ThreadPoolExecutor(1, initializer=setns_current_thread, initargs=(fd,)) as pool:
            yield pool
    finally:
        os.close(fd)


def bench_pyroute2(n: int) -> Result:
    with (
        namespaces("host", 1) as (host,),
        namespaces("ctr", n) as ctrs,
        # The whole loop runs in a thread moved into the host namespace, as
        # the daemon runs there: /proc/sys writes need no extra thread.
        in_netns(host) as thread,
    ):
        return thread.submit(_pyroute2_loop, ctrs).result()


def _pyroute2_loop(ctrs: list[str]) -> Result:
    floor = Floor("rawbr0", "10.78.0.0/16")
    try:
        settle()
        attach = [
            _timed(partial(floor.attach, i, c))
            for i, c in _track(list(enumerate(ctrs)), "pyroute2 attaches")
        ]
        detach = [
            _timed(partial(floor.detach, i)) for i in _track(range(len(ctrs)), "pyroute2 detaches")
        ]
    finally:
        floor.close()
    return Result("pyroute2", len(ctrs), attach, detach)


def bench_paired_floor(n: int) -> Result:
    """:func:`bench_paired` for the floor: two host namespaces, one thread in each."""
    with (
        namespaces("host", 2) as (host_a, host_b),
        namespaces("ctr", n) as ctrs,
        namespaces("ref", REF_PORTS + 1) as refs,
        in_netns(host_a) as in_a,
        in_netns(host_b) as in_b,
    ):
        big = in_a.submit(Floor, "rawbr0", "10.78.0.0/16").result()
        small = in_b.submit(Floor, "rawbr0", "10.79.0.0/16").result()
        try:
            for i, r in enumerate(refs[:REF_PORTS]):
                in_b.submit(small.attach, i, r).result()

            def reference() -> float:
                sample = _timed(partial(small.attach, REF_PORTS, refs[REF_PORTS]))
                small.detach(REF_PORTS)  # synchronous: done before the next sample
                return sample

            settle()
            attach: list[float] = []
            ref: list[float] = []
            for i, c in enumerate(ctrs):
                attach.append(in_a.submit(_timed, partial(big.attach, i, c)).result())
                ref.append(in_b.submit(reference).result())
            detach = [in_a.submit(_timed, partial(big.detach, i)).result() for i in range(n)]
        finally:
            in_a.submit(big.close).result()
            in_b.submit(small.close).result()
    return Result("paired-floor", n, attach, detach, ref)


# -- report ------------------------------------------------------------------------


def median_p90(values: list[float]) -> tuple[float, float]:
    """Median and 90th percentile (the one value, for a single sample)."""
    if len(values) == 1:
        return values[0], values[0]
    return statistics.median(values), statistics.quantiles(values, n=10)[8]


def latency_table(
    rows: Sequence[tuple[str, int, list[float], list[float]]],
    reference: str,
    headings: Sequence[str],
) -> list[str]:
    """A line per ``(method, N, first, second)`` row, by N then method: median
    and p90 of the two series (ms) and each median over the ``reference``
    method's at the same N ("-" without one); ``headings`` name the six columns."""
    lines = [
        f"{'method':<12} {'N':>5} "
        + " ".join(f"{h:>11}" for h in headings[:4])
        + " "
        + " ".join(f"{h:>10}" for h in headings[4:])
    ]
    refs = {n: (first, second) for method, n, first, second in rows if method == reference}
    for method, n, first, second in sorted(rows, key=lambda row: (row[1], row[0])):
        fm, fp = median_p90(first)
        sm, sp = median_p90(second)
        ref = refs.get(n)
        ra = rb = "-"
        if ref is not None:
            ra = f"{fm / median_p90(ref[0])[0]:.2f}x"
            rb = f"{sm / median_p90(ref[1])[0]:.2f}x"
        lines.append(
            f"{method:<12} {n:>5} {fm:>9.2f}ms {fp:>9.2f}ms {sm:>9.2f}ms {sp:>9.2f}ms "
            f"{ra:>10} {rb:>10}"
        )
    return lines


def theil_sen(values: list[float]) -> tuple[float, float]:
    """Robust line through ``(i, values[i])``: ``(intercept, slope)``.

    The slope is the median of the slopes between all pairs of samples, so a
    burst of slow samples (another tenant of the VM, a kernel worker) moves
    it far less than it moves a median over a window of 20.
    """
    n = len(values)
    slopes = [(values[j] - values[i]) / (j - i) for i in range(n) for j in range(i + 1, n)]
    slope = statistics.median(slopes)
    intercept = statistics.median(v - slope * i for i, v in enumerate(values))
    return intercept, slope


def _growth(values: list[float], unit: str) -> list[str]:
    """The last attach's cost over the 10th's: window medians, and a Theil-Sen fit."""
    n = len(values)
    tenth = statistics.median(values[4:24])
    last = statistics.median(values[-20:])
    intercept, slope = theil_sen(values)
    at_10, at_n = intercept + 9 * slope, intercept + (n - 1) * slope
    return [
        f"#{n}/#10 {last / tenth:.2f}x ({last:.2f} / {tenth:.2f}{unit})",
        f"fit {at_n / at_10:.2f}x ({at_n:.2f} / {at_10:.2f}{unit})",
    ]


def report(results: list[Result]) -> str:
    lines = latency_table(
        [(r.method, r.n, r.attach_ms, r.detach_ms) for r in results],
        "pyroute2",
        ("attach med", "attach p90", "detach med", "detach p90", "att/floor", "det/floor"),
    )
    lines.append("")
    lines.append("targets: attach <= 0.5x cni and <= 1.3x pyroute2; detach <= 0.3x cni;")
    lines.append("         overlayd+nat attach <= 0.3x cni+masq;")
    lines.append(
        "         N-th attach (median of the last 20) <= 1.2x the 10th (median of #5-#24);"
    )
    lines.append("         'fit': the same ratio read off a Theil-Sen line through all attaches;")
    lines.append("         paired: 'A / ref' is each attach divided by the reference daemon's")
    lines.append(
        f"         attach of container #{REF_PORTS + 1} timed right after it (VM drift cancels)"
    )
    by_key = {(r.method, r.n): r for r in results}
    for r in sorted(results, key=lambda r: (r.n, r.method)):
        parts = []
        ref_name = {"overlayd": "cni", "overlayd+nat": "cni+masq"}.get(r.method)
        ref = by_key.get((ref_name, r.n)) if ref_name is not None else None
        if ref_name is not None and ref is not None:
            att = median_p90(r.attach_ms)[0] / median_p90(ref.attach_ms)[0]
            det = median_p90(r.detach_ms)[0] / median_p90(ref.detach_ms)[0]
            parts.append(f"attach/{ref_name} {att:.2f}x  detach/{ref_name} {det:.2f}x")
        if r.n >= 100:
            parts.extend(_growth(r.attach_ms, "ms"))
        if parts:
            lines.append(f"{r.method:<12} {r.n:>5}  " + "  ".join(parts))
        if r.ref_ms is not None and r.n >= 100:
            paired = [a / b for a, b in zip(r.attach_ms, r.ref_ms, strict=True)]
            lines.append(f"{'  reference':<12} {r.n:>5}  " + "  ".join(_growth(r.ref_ms, "ms")))
            diff = [a - b for a, b in zip(r.attach_ms, r.ref_ms, strict=True)]
            added = statistics.median(diff[-20:]) - statistics.median(diff[4:24])
            fit_added = theil_sen(diff)[1] * (r.n - 10)
            lines.append(f"{'  A / ref':<12} {r.n:>5}  " + "  ".join(_growth(paired, "")))
            lines.append(
                f"{'  A - ref':<12} {r.n:>5}  added per attach from #10 to #{r.n}: "
                f"{added:+.2f} ms (windows), {fit_added:+.2f} ms (fit)"
            )
    growth = [r for r in sorted(results, key=lambda r: (r.n, r.method)) if r.n >= 200]
    if growth:
        lines.append("")
        lines.append("attach median per tenth of the run (ms), first to last:")
        for r in growth:
            step = r.n // 10
            series = [(r.method, r.attach_ms)]
            if r.ref_ms is not None:
                paired = [a / b for a, b in zip(r.attach_ms, r.ref_ms, strict=True)]
                series += [("  reference", r.ref_ms), ("  A / ref", paired)]
            for label, values in series:
                tenths = [statistics.median(values[i : i + step]) for i in range(0, r.n, step)]
                lines.append(f"{label:<12} {r.n:>5}  " + " ".join(f"{m:6.2f}" for m in tenths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    methods = [
        "pyroute2",
        "overlayd",
        "overlayd+nat",
        "overlayd6",
        "cni",
        "cni+masq",
        "paired",
        "paired6",
        "paired-floor",
    ]
    parser.add_argument("--n", type=int, nargs="+", default=[1, 50, 200, 1000])
    parser.add_argument("--methods", nargs="+", default=methods, choices=methods)
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    parser.add_argument(
        "--no-warmup", action="store_true", help="no untimed warm-up round before each N"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root (network namespaces)", file=sys.stderr)
        return 2
    runners: dict[str, Callable[[int], Result]] = {
        "pyroute2": bench_pyroute2,
        "overlayd": bench_overlayd,
        "overlayd+nat": lambda n: bench_overlayd(n, nat=True),
        "overlayd6": lambda n: bench_overlayd(n, ipv6=True),
        "cni": lambda n: bench_cni(n, masq=False),
        "cni+masq": lambda n: bench_cni(n, masq=True),
        "paired": bench_paired,
        "paired6": lambda n: bench_paired(n, ipv6=True),
        "paired-floor": bench_paired_floor,
    }
    results: list[Result] = []
    for n in args.n:
        if not args.no_warmup:
            start = time.monotonic()
            bench_pyroute2(n)
            print(f"# warm-up N={n} done in {time.monotonic() - start:.1f} s", flush=True)
        for method in args.methods:
            if method.startswith("paired") and n < 100:
                continue  # a growth measurement: nothing to compare below 100
            start = time.monotonic()
            results.append(runners[method](n))
            print(f"# {method} N={n} done in {time.monotonic() - start:.1f} s", flush=True)
    print(report(results))
    if args.json is not None:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
