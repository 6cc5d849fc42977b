"""What the smoke tests of the benchmarks share (run: ``pytest bench``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

import pytest

from overlayd.testing.scripts import load_script


@pytest.fixture
def load_bench(request: pytest.FixtureRequest) -> Callable[[str], ModuleType]:
    """Import a benchmark script next to the requesting test by its file name.

    The benchmarks are scripts, not a package; the directory goes on
    ``sys.path`` so a script can import its neighbours (``bench/ipc/run.py``
    imports ``echo_floor``), and the module is registered under a unique name
    because dataclasses look their module up in ``sys.modules``.
    """
    here = request.path.parent

    def load(filename: str = "run.py") -> ModuleType:
        path = here / filename
        name = f"bench_{here.name}_{path.stem}"
        if str(here) not in sys.path:
            sys.path.insert(0, str(here))
        return load_script(path, name)

    return load
