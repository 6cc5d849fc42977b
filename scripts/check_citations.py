"""Fail on a citation of a document kept outside the repository.

overlayd stands on its own: code and docs cite ``docs/reference/*``,
``docs/design-notes.rst`` or ``CONTRIBUTING.md``, never notes that live
beside the repository. This finds such citations by name.

Run ``python scripts/check_citations.py [FILE ...]`` (without files: every
file git tracks). pre-commit runs it on the files of a commit, and
``tests/test_docs_citations.py`` on the whole tree.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PATTERN = re.compile(
    r"\b(PROTOCOL|HCN|WIREGUARD|STYLE|LESSONS|DESIGN|PEERS)\.md\b|\.\./shared/|/work/shared"
)

#: Files that still carry such citations because the issue 17 restructuring
#: moves them and replaces the citations as it does. Remove each entry when
#: its file is fixed; the test fails on an entry whose file no longer cites.
PENDING: frozenset[str] = frozenset()
#: This script holds the pattern itself.
SELF = "scripts/check_citations.py"


def tracked_files(root: Path = ROOT) -> list[str]:
    """Paths (relative to ``root``) of every file git tracks there."""
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z"], check=True, capture_output=True
    ).stdout
    return [p for p in out.decode().split("\0") if p]


def find(paths: Iterable[str], root: Path = ROOT) -> list[str]:
    """``path:line: text`` for every citation in ``paths``, pending files and this one aside."""
    hits: list[str] = []
    for name in paths:
        rel = Path(name).as_posix()
        if rel in PENDING or rel == SELF:
            continue
        path = root / rel
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
            continue  # binary files, submodules, files deleted in the work tree
        for number, line in enumerate(text.splitlines(), 1):
            if PATTERN.search(line):
                hits.append(f"{rel}:{number}: {line.strip()}")
    return hits


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve().relative_to(ROOT).as_posix() for a in argv] or tracked_files()
    hits = find(paths)
    for hit in hits:
        print(hit)
    if hits:
        print(
            "cite docs/reference/*.rst, docs/design-notes.rst or CONTRIBUTING.md instead",
            file=sys.stderr,
        )
    return 1 if hits else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
