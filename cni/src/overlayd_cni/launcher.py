"""``overlayd-cni install DIR``: a faster executable for a runtime's CNI directory.

A runtime starts the plugin once per container and operation, so the
interpreter's start-up is most of the plugin's cost. The console script that
pip writes runs Python with its ``site`` initialisation (every ``.pth`` file
of the environment is read, ``sitecustomize`` imported) and imports ``re`` to
clean up ``argv[0]``. The launcher this command writes instead starts the
same interpreter isolated and without ``site`` (``python -IS``) and puts the
two directories that hold ``overlayd_cni`` and ``overlayd`` on ``sys.path``
itself. It is plain text: read it before you trust it. Write it again after
moving or upgrading the Python environment.

``bench/cni/run.py`` measures both.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from overlayd_cni import __version__

TEMPLATE = """\
#!{python} -IS
# overlayd-cni {version}: the CNI plugin of overlayd, written by
# `overlayd-cni install`. It runs the interpreter isolated and without
# `site` (faster start) and finds the packages in these directories
# (after the standard library's, which is searched first).
import sys

sys.path += {paths!r}
from overlayd_cni.main import main

sys.exit(main())
"""


def package_roots() -> list[str]:
    """The directories from which ``overlayd_cni`` and ``overlayd`` are imported."""
    roots: list[str] = []
    for name in ("overlayd_cni", "overlayd"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"cannot find the {name} package")
        root = str(Path(next(iter(spec.submodule_search_locations))).resolve().parent)
        if root not in roots:
            roots.append(root)
    return roots


def render(python: str | None = None) -> str:
    """The launcher's text for ``python`` (default: this interpreter)."""
    return TEMPLATE.format(
        python=python or sys.executable, version=__version__, paths=package_roots()
    )


def install(directory: Path, name: str = "overlayd-cni", python: str | None = None) -> Path:
    """Write the launcher as ``directory/name`` (mode 0755, replaced atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render(python))
        # An executable for the runtime (root) to run; readable, as plugins are.
        os.chmod(tmp, 0o755)  # noqa: S103
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def cli(argv: list[str]) -> int:
    """``overlayd-cni`` run by a person (no ``CNI_COMMAND`` in the environment)."""
    parser = argparse.ArgumentParser(
        prog="overlayd-cni",
        description="CNI plugin of overlayd. A container runtime runs it with CNI_COMMAND "
        "set; run by hand it installs the fast launcher.",
    )
    parser.add_argument("--version", action="version", version=f"overlayd-cni {__version__}")
    sub = parser.add_subparsers(dest="command")
    add = sub.add_parser("install", help="write the fast launcher into a CNI plugin directory")
    add.add_argument("directory", type=Path, help="e.g. /opt/cni/bin")
    add.add_argument("--name", default="overlayd-cni", help="file name (the config's 'type')")
    add.add_argument("--python", help="interpreter for the launcher (default: this one)")
    args = parser.parse_args(argv)
    if args.command != "install":
        parser.print_help(sys.stderr)
        print(
            "\nCNI_COMMAND is not set: a container runtime runs this plugin with it.",
            file=sys.stderr,
        )
        return 2
    target = install(args.directory, args.name, args.python)
    print(f"wrote {target}")
    return 0
