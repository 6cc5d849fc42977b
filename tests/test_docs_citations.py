"""The project stands on its own: no citation of a document outside the repository."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_citations", ROOT / "scripts" / "check_citations.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_citations", module)
    spec.loader.exec_module(module)
    return module


check = _load()


def test_no_file_cites_an_outside_document() -> None:
    hits = check.find(check.tracked_files(ROOT), ROOT)
    assert not hits, "\n".join(hits)


def test_the_check_finds_a_citation(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n# facts from WIREGUARD.md §1\n")
    (tmp_path / "b.rst").write_text("See ../shared/notes for more.\n")
    (tmp_path / "c.rst").write_text("See docs/reference/wireguard.rst §1.\n")
    hits = check.find(["a.py", "b.rst", "c.rst"], tmp_path)
    assert hits == [
        "a.py:2: # facts from WIREGUARD.md §1",
        "b.rst:1: See ../shared/notes for more.",
    ]


def test_every_pending_file_still_cites() -> None:
    """An entry of PENDING whose file was fixed (or moved) must leave the list."""
    stale = [
        rel
        for rel in sorted(check.PENDING)
        if not (ROOT / rel).is_file()
        or not check.PATTERN.search((ROOT / rel).read_text(encoding="utf-8"))
    ]
    assert not stale, f"remove from PENDING in scripts/check_citations.py: {stale}"
