"""The ``overlayd-cni`` executable.

With ``CNI_COMMAND`` in the environment it is a CNI plugin: it reads the
network configuration from standard input, runs the operation, prints the
result (``ADD``, ``VERSION``) or nothing, and exits 0; on failure it prints
the specification's error object on standard output and exits 1. Notes for
people go to standard error.

Without ``CNI_COMMAND`` it is a small tool: ``overlayd-cni --version``, and
``overlayd-cni install DIR`` (see :mod:`overlayd_cni.launcher`).
"""

from __future__ import annotations

import io
import json
import os
import sys

from overlayd_cni import SUPPORTED_VERSIONS
from overlayd_cni import commands
from overlayd_cni.errors import INTERNAL
from overlayd_cni.errors import IO_FAILURE
from overlayd_cni.errors import CniError
from overlayd_cni.invocation import command_of
from overlayd_cni.invocation import decode
from overlayd_cni.invocation import parse

# ``typing`` is not imported at run time: a CNI plugin pays for every import.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO
    from typing import Any

    from overlayd_cni.commands import Flow


_LATEST = SUPPORTED_VERSIONS[-1]


def invocation(
    env: dict[str, str], read: Callable[[], bytes], notes: IO[str] | None
) -> Flow[tuple[int, str]]:
    """One CNI invocation as a flow (:mod:`overlayd_cni.commands`).

    ``read`` returns the network configuration (standard input); ``notes``
    receives the notes for people (``None``: standard error). Returns the
    exit status and what goes to standard output.
    """
    version = _LATEST
    try:
        command = command_of(env)
        try:
            raw = read()
        except OSError as exc:
            raise CniError(IO_FAILURE, "cannot read the network configuration", str(exc)) from None
        if command == "VERSION":
            return 0, _dumps(_version(raw))
        config = decode(raw)
        if isinstance(config.get("cniVersion"), str):
            version = config["cniVersion"]
        inv = parse(command, env, config)
        inv.notes = notes
        if command == "ADD":
            return 0, _dumps((yield from commands.add(inv)))
        if command == "DEL":
            yield from commands.delete(inv)
        elif command == "CHECK":
            yield from commands.check(inv)
        elif command == "GC":
            yield from commands.gc(inv)
        else:
            yield from commands.status(inv)
        return 0, ""
    except CniError as exc:
        return 1, _dumps(exc.to_json(version))
    except Exception as exc:  # noqa: BLE001 - a runtime must get an error object, even for a bug
        error = CniError(
            INTERNAL,
            "internal error in overlayd-cni",
            f"{type(exc).__name__}: {exc} (this is a bug; please report it)",
        )
        return 1, _dumps(error.to_json(version))


def run(
    env: dict[str, str], stdin: IO[bytes], stdout: IO[str], *, notes: IO[str] | None = None
) -> int:
    """Run one CNI invocation in this process; returns the exit status.

    ``notes`` receives the notes for people (default: standard error).
    """
    code, out = commands.drive(invocation(env, stdin.read, notes))
    if out:
        stdout.write(out)
        stdout.flush()
    return code


def execute(env: dict[str, str], stdin: bytes) -> tuple[int, str, str]:
    """One invocation without the process's own streams: ``(exit status, stdout, notes)``.

    ``env`` holds ``CNI_COMMAND`` and the other ``CNI_*`` variables, ``stdin``
    the network configuration; the result is what :func:`main` would print
    on standard output and standard error, and its exit status.
    """
    out, notes = io.StringIO(), io.StringIO()
    code = run(env, io.BytesIO(stdin), out, notes=notes)
    return code, out.getvalue(), notes.getvalue()


def _version(raw: bytes) -> dict[str, Any]:
    try:
        asked = json.loads(raw).get("cniVersion") if raw.strip() else None
    except (ValueError, AttributeError):
        asked = None
    return {
        "cniVersion": asked if isinstance(asked, str) else _LATEST,
        "supportedVersions": list(SUPPORTED_VERSIONS),
    }


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``overlayd-cni`` console script."""
    if "CNI_COMMAND" in os.environ:
        return run(dict(os.environ), sys.stdin.buffer, sys.stdout)
    from overlayd_cni.launcher import cli

    return cli(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
