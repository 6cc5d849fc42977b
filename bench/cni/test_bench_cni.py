"""Smoke tests of ``bench/cni/run.py``'s report (the bench itself needs root and minutes)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType


def test_the_pairs_are_compared_side_by_side(load_bench: Callable[[str], ModuleType]) -> None:
    bench = load_bench("run.py")
    cni = bench.Result("cni", 1, [10.0, 20.0, 12.0], [1.0, 1.0, 1.0])
    native = bench.Result("native", 1, [4.0, 12.0, 6.0], [1.0, 1.0, 1.0])
    lines = bench.paired([cni, native])
    # Pairs 0.4, 0.6 and 0.5: the median pair, the range, and two at 0.5x or less
    # (the ratio of the medians, 6 over 12, would say 0.5x).
    assert lines == [
        "",
        "native N=1: ADD/cni pair by pair: median 0.50x, 0.40x-0.60x, 2 of 3 at 0.5x or less",
    ]


def test_a_method_without_a_reference_at_its_n_is_left_out(
    load_bench: Callable[[str], ModuleType],
) -> None:
    bench = load_bench("run.py")
    native = bench.Result("native", 200, [4.0], [1.0])
    assert bench.paired([bench.Result("cni", 1, [10.0], [1.0]), native]) == []
