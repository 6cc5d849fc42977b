"""Import a Python file that is not in a package: a script, a benchmark, a test module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["load_script"]


def load_script(path: Path, name: str) -> ModuleType:
    """Import the file ``path`` as a module called ``name`` and return it.

    The module is registered in ``sys.modules`` before it runs, because
    dataclasses look their module up there.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
