"""Every Python code sample in the README and the docs runs.

Samples run in a subprocess with the installed packages (the fake driver is
what they use). ``literalinclude`` samples are tested where they live.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _samples() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    readme = (ROOT / "README.md").read_text()
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", readme, re.S)):
        out.append((f"README.md#{i}", block))
    for page in sorted((ROOT / "docs").glob("*.rst")):
        text = page.read_text()
        pattern = r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)"
        for i, block in enumerate(re.findall(pattern, text)):
            out.append((f"{page.name}#{i}", textwrap.dedent(block)))
    return out


SAMPLES = _samples()


def test_there_are_samples() -> None:
    assert any(name.startswith("README") for name, _ in SAMPLES)


@pytest.mark.parametrize(("name", "code"), SAMPLES, ids=[n for n, _ in SAMPLES])
def test_sample_runs(name: str, code: str, tmp_path: Path) -> None:
    if "pytest_plugins" in code and "def " not in code:
        # a conftest line: check it names an importable plugin instead
        plugin = re.search(r'"([\w.]+)"', code)
        assert plugin is not None
        __import__(plugin.group(1))
        return
    script = tmp_path / "sample.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
