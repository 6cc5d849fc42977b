"""The project stands on its own: no citation of a document outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from overlayd.testing.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


check = load_script(ROOT / "scripts" / "check_citations.py", "check_citations")


def test_no_file_cites_an_outside_document() -> None:
    hits = check.find(check.tracked_files(ROOT), ROOT)
    assert not hits, "\n".join(hits)


def test_the_check_finds_a_citation(tmp_path: Path) -> None:
    # Built from pieces, so that this file does not cite anything itself.
    outside_doc, outside_dir = "WIREGUARD" + ".md §1", "../" + "shared/notes"
    (tmp_path / "a.py").write_text(f"x = 1\n# facts from {outside_doc}\n")
    (tmp_path / "b.rst").write_text(f"See {outside_dir} for more.\n")
    (tmp_path / "c.rst").write_text("See docs/reference/wireguard.rst §1.\n")
    hits = check.find(["a.py", "b.rst", "c.rst"], tmp_path)
    assert hits == [
        f"a.py:2: # facts from {outside_doc}",
        f"b.rst:1: See {outside_dir} for more.",
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


def test_every_reference_citation_names_an_existing_section() -> None:
    """``docs/reference/<page>.rst §N`` in code and docs points at a real page and section."""
    cite = re.compile(r"docs/reference/([\w-]+)\.rst((?:,? §\d+)*)")
    missing: list[str] = []
    for rel in check.tracked_files(ROOT):
        path = ROOT / rel
        if path.suffix not in {".py", ".rst", ".md", ".toml", ".ini", ".yaml"}:
            continue
        for match in cite.finditer(path.read_text(encoding="utf-8")):
            page = ROOT / "docs" / "reference" / f"{match.group(1)}.rst"
            if not page.is_file():
                missing.append(f"{rel}: {match.group(0)} (no such page)")
                continue
            titles = {line.split()[0] for line in page.read_text().splitlines() if line[:1] == "§"}
            missing += [
                f"{rel}: {match.group(0)} (no section {section})"
                for section in re.findall(r"§\d+", match.group(2))
                if section not in titles
            ]
    assert not missing, "\n".join(missing)
