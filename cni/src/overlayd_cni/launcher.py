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

``overlayd-cni install --native DIR`` goes further: the interpreter's start
alone costs more than the reference plugins. It compiles the small C front end
shipped in the package (``native/overlayd-cni.c``) with the system's C
compiler into ``DIR/overlayd-cni`` and writes the launcher above as
``DIR/overlayd-cni-py``, whose path is compiled into the front end. The front
end forwards each invocation to the daemon (the ``cni_exec`` op), which runs
this package's logic itself, and execs ``overlayd-cni-py`` whenever the daemon
cannot answer (it is down, it has no overlayd-cni installed, ``CHECK``...), so
the behaviour is the Python plugin's in every case.

``bench/cni/run.py`` measures all three.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
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


#: The C front end's source, shipped in the package.
NATIVE_SOURCE = Path(__file__).resolve().parent / "native" / "overlayd-cni.c"


class InstallError(Exception):
    """``install`` cannot write the executable (no C compiler, the build failed)."""


def install(
    directory: Path,
    name: str = "overlayd-cni",
    python: str | None = None,
    *,
    native: bool = False,
    cc: str | None = None,
) -> Path:
    """Write the launcher as ``directory/name`` (mode 0755, replaced atomically).

    With ``native``, ``directory/name`` is the compiled front end and the
    launcher is written beside it as ``directory/name-py`` (its fallback).
    """
    directory.mkdir(parents=True, exist_ok=True)
    if native:
        fallback = _write(directory, f"{name}-py", render(python))
        return build_native(directory / name, fallback, cc)
    return _write(directory, name, render(python))


def _write(directory: Path, name: str, text: str) -> Path:
    target = directory / name
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        # An executable for the runtime (root) to run; readable, as plugins are.
        os.chmod(tmp, 0o755)  # noqa: S103
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def find_compiler(cc: str | None = None) -> str:
    """The C compiler: ``cc``, else ``$CC``, else the first of cc, gcc, clang on PATH."""
    if cc:
        found = shutil.which(cc)
        if found is None:
            raise InstallError(f"the C compiler {cc!r} was not found")
        return found
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and (found := shutil.which(candidate)):
            return found
    raise InstallError(
        "--native needs a C compiler and none was found (cc, gcc or clang on PATH, or "
        "$CC); install one (Debian: apt-get install gcc) or install without --native"
    )


def _c_string(text: str) -> str:
    """``text`` as a C string literal (for ``-D``; no shell involved)."""
    if any(ord(c) < 0x20 for c in text):
        raise InstallError(f"cannot compile the path {text!r} into the front end")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_native(target: Path, fallback: Path, cc: str | None = None) -> Path:
    """Compile the C front end into ``target`` (atomically), execing ``fallback``."""
    from overlayd.rawclient import DEFAULT_SOCKET

    compiler = find_compiler(cc)
    tmp = target.with_name(f".{target.name}.build")
    argv = [
        compiler,
        "-O2",
        f"-DOVERLAYD_CNI_FALLBACK={_c_string(str(fallback.resolve()))}",
        f"-DOVERLAYD_DEFAULT_SOCKET={_c_string(DEFAULT_SOCKET)}",
        "-o",
        str(tmp),
        str(NATIVE_SOURCE),
    ]
    try:
        # Linked statically where the C library allows it: a runtime starts
        # the front end for every ADD and DEL, and a static binary starts
        # about 0.1 ms sooner (no dynamic loader). Dynamically otherwise.
        proc = subprocess.run([*argv, "-static"], capture_output=True, text=True, check=False)  # noqa: S603
        if proc.returncode != 0:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
        if proc.returncode != 0:
            raise InstallError(
                f"compiling {NATIVE_SOURCE} with {compiler} failed "
                f"(exit {proc.returncode}):\n{proc.stderr.strip()}"
            )
        os.chmod(tmp, 0o755)  # noqa: S103
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
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
    add.add_argument(
        "--native",
        action="store_true",
        help="compile the C front end (needs a C compiler); the launcher becomes NAME-py",
    )
    add.add_argument("--cc", help="C compiler for --native (default: $CC, cc, gcc, clang)")
    args = parser.parse_args(argv)
    if args.command != "install":
        parser.print_help(sys.stderr)
        print(
            "\nCNI_COMMAND is not set: a container runtime runs this plugin with it.",
            file=sys.stderr,
        )
        return 2
    try:
        target = install(args.directory, args.name, args.python, native=args.native, cc=args.cc)
    except InstallError as exc:
        print(f"overlayd-cni install: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {target}")
    if args.native:
        print(f"wrote {target.with_name(target.name + '-py')} (its fallback)")
    return 0
