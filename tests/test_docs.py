"""Documentation that tests keep honest: every hookspec follows the contract template."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from overlayd import hookspecs
from overlayd.plugins import OWNER_DISPATCHED
from overlayd.plugins import make_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(
    name
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("overlayd_")
)


def test_every_hookspec_is_registered() -> None:
    pm = make_plugin_manager(include_core_defaults=False)
    assert {h for h in dir(pm.hook) if h.startswith("overlayd_")} == set(SPECS)


@pytest.mark.parametrize("name", SPECS)
def test_hookspec_docstring_follows_template(name: str) -> None:
    fn = getattr(hookspecs, name)
    doc = inspect.getdoc(fn)
    assert doc, f"{name} has no docstring"
    for param in inspect.signature(fn).parameters:
        assert f":param {param}:" in doc, f"{name}: `:param {param}:` missing"
    for part in ("Idempotent:", "Blocking:", "Raising:", ".. versionadded::"):
        assert part in doc, f"{name}: `{part}` missing"
    sig = inspect.signature(fn)
    if sig.return_annotation not in ("None", None):
        assert ":returns:" in doc, f"{name}: `:returns:` missing"
    spec = make_plugin_manager(include_core_defaults=False).hook.__dict__[name].spec
    if spec.opts.get("firstresult"):
        assert "None" in doc, f"{name}: a firstresult hook must say what None means"


@pytest.mark.parametrize("name", SPECS)
def test_hook_is_in_the_reference(name: str) -> None:
    text = (ROOT / "docs" / "hooks.rst").read_text()
    args = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
    assert f"``{name}({args})``" in text
    assert f".. autofunction:: overlayd.hookspecs.{name}" in text


@pytest.mark.parametrize("name", SPECS)
def test_owner_dispatch_is_documented(name: str) -> None:
    """The hook docstrings and the reference list exactly the facade's owner-dispatched hooks."""
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    text = (ROOT / "docs" / "hooks.rst").read_text()
    listed = text.split(".. owner-dispatched-start")[1].split(".. owner-dispatched-end")[0]
    owned = name in OWNER_DISPATCHED
    assert ("Owner-dispatched" in doc) == owned, f"{name}: docstring and facade disagree"
    assert (f"``{name}``" in listed) == owned, f"{name}: docs/hooks.rst and facade disagree"
    if owned:
        assert "is not this driver" not in doc, f"{name}: drivers no longer check the owner"


def test_writing_a_driver_includes_tested_example() -> None:
    text = (ROOT / "docs" / "writing-a-driver.rst").read_text()
    for include in text.split(".. literalinclude:: ")[1:]:
        target = (ROOT / "docs" / include.split()[0]).resolve()
        assert target.is_file(), target


def _architecture_paths() -> list[str]:
    """Every repository path ``docs/architecture.rst`` names as a literal."""
    import re

    text = (ROOT / "docs" / "architecture.rst").read_text()
    literals = re.findall(r"``([^`\s]+)``", text)
    return sorted(
        {lit for lit in literals if "/" in lit or lit.endswith((".py", ".rst", ".md", ".toml"))}
    )


def test_architecture_page_names_paths() -> None:
    # Guard against the pattern silently matching nothing.
    assert "core/src/overlayd/server/handlers.py" in _architecture_paths()


@pytest.mark.parametrize("path", _architecture_paths())
def test_architecture_path_exists(path: str) -> None:
    """A file or folder the architecture page sends a contributor to is in the tree."""
    if "*" in path:
        assert list(ROOT.glob(path)), f"docs/architecture.rst: nothing matches {path}"
    else:
        assert (ROOT / path).exists(), f"docs/architecture.rst names {path}, which is not there"
