"""The CLI reference matches the parsers, and getting-started's shell samples run.

``docs/cli.rst`` documents each program with a ``.. program:: overlayctl peers
add`` block holding one ``.. option::`` per flag or positional; these tests walk
the argparse parsers built by :mod:`overlayd.cli` (and :mod:`overlayd_demo.cli` for
``overlayd demo``, which parses its own arguments) and compare both ways.

The ``overlayd``/``overlayctl`` commands of ``docs/getting-started.rst``
(``console`` blocks, ``$ `` prompts, not behind ``sudo``) run in order against a
real daemon on the fake driver, each with ``--socket`` pointing at it.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd import cli
from overlayd.config import load_config
from overlayd_demo import cli as demo

ROOT = Path(__file__).resolve().parent.parent
CLI_RST = (ROOT / "docs" / "cli.rst").read_text()
GETTING_STARTED = (ROOT / "docs" / "getting-started.rst").read_text()


def _walk(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    if path == "overlayd demo":
        parser = demo.build_parser()  # `overlayd demo` hands its arguments to the demo
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


PROGRAMS = dict(
    [
        *_walk(cli.build_overlayd_parser(), "overlayd"),
        *_walk(cli.build_overlayctl_parser(), "overlayctl"),
    ]
)


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Every flag (each spelling) and positional of ``parser``, without --help."""
    names: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            names.extend(action.option_strings)
        else:
            names.append(action.metavar if isinstance(action.metavar, str) else action.dest)
    return names


def _program_blocks() -> dict[str, str]:
    """``.. program:: NAME`` -> the text up to the next program directive."""
    parts = re.split(r"^\.\. program:: (.+)$", CLI_RST, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


BLOCKS = _program_blocks()


def _documented_options(block: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^\.\. option:: (\S+)", block, re.M)]


def test_walk_finds_every_command() -> None:
    assert {"overlayd serve", "overlayd drivers", "overlayd demo"} <= set(PROGRAMS)
    assert {"overlayctl peers add", "overlayctl dns register", "overlayctl gc"} <= set(PROGRAMS)
    assert "--cleanup" in _arguments(PROGRAMS["overlayd demo"])


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_command_has_a_section(program: str) -> None:
    assert program in BLOCKS, f"docs/cli.rst has no `.. program:: {program}` block"
    *_, name = program.split(" ", 1)
    assert f"``{program}``" in CLI_RST or program in ("overlayd", "overlayctl"), name


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_argument_is_documented(program: str) -> None:
    documented = _documented_options(BLOCKS.get(program, ""))
    missing = [a for a in _arguments(PROGRAMS[program]) if a not in documented]
    assert missing == [], f"{program}: not in docs/cli.rst: {missing}"


@pytest.mark.parametrize("program", sorted(BLOCKS))
def test_no_documented_argument_is_invented(program: str) -> None:
    assert program in PROGRAMS, f"docs/cli.rst documents an unknown program {program!r}"
    extra = [
        o for o in _documented_options(BLOCKS[program]) if o not in _arguments(PROGRAMS[program])
    ]
    assert extra == [], f"{program}: documented but not accepted: {extra}"


def test_exit_codes_are_documented() -> None:
    overlayctl = CLI_RST.split(".. program:: overlayctl\n", 1)[1]
    codes = [cli.EXIT_OK, cli.EXIT_ERR, cli.EXIT_USAGE, cli.EXIT_CONNECT, cli.EXIT_TIMEOUT]
    for code in codes:
        assert re.search(rf"^{code}\s+\S", overlayctl, re.M), f"overlayctl exit code {code}"
    serve = BLOCKS["overlayd serve"]
    for code in (cli.EXIT_OK, cli.EXIT_ERR, cli.EXIT_USAGE, cli.EXIT_CONNECT):
        assert re.search(rf"^{code}\s+\S", serve, re.M), f"overlayd serve exit code {code}"
    assert "130 interrupted" in BLOCKS["overlayd demo"]


# ---------------------------------------------------------------------------
# getting-started: the shell samples run, the configuration sample loads
# ---------------------------------------------------------------------------


def _console_commands(text: str) -> list[list[str]]:
    """The ``$ `` commands of every console block, split like a shell would."""
    commands: list[list[str]] = []
    for block in re.findall(r"\.\. code-block:: console\n\n((?:   .*\n|\n)+)", text):
        for raw in block.splitlines():
            line = raw.strip()
            if line.startswith("$ "):
                commands.append(shlex.split(line[2:]))
    return commands


def _runnable(commands: list[list[str]]) -> list[list[str]]:
    # `overlayd serve` is the daemon the test provides; `sudo ...` needs root
    # and a real node (the demo, apt-get, systemctl).
    return [
        argv
        for argv in commands
        if argv[0] == "overlayctl" or (argv[0] == "overlayd" and argv[1:2] != ["serve"])
    ]


GS_COMMANDS = _runnable(_console_commands(GETTING_STARTED))


def test_getting_started_covers_overlayctl() -> None:
    parser = cli.build_overlayctl_parser()
    used = {parser.parse_args(argv[1:]).command for argv in GS_COMMANDS if argv[0] == "overlayctl"}
    assert {"status", "attach", "peers", "dns", "state", "gc", "call"} <= used


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[Path]:
    from overlayd.testing.daemon import start_daemon  # POSIX only

    daemon = start_daemon(tmp_path, args=["--driver", "fake", "--no-dns"])
    try:
        yield daemon.socket
    finally:
        daemon.stop()


def test_getting_started_commands_run_in_order(fake_daemon: Path) -> None:
    assert GS_COMMANDS, "getting-started.rst has no overlayctl/overlayd samples"
    env = {**os.environ, "OVERLAYD_SOCKET": str(fake_daemon)}
    for argv in GS_COMMANDS:
        if argv[0] == "overlayctl":
            entry = "overlayctl_main"
            args = ["--socket", str(fake_daemon), *argv[1:]]
        else:
            entry = "overlayd_main"
            args = argv[1:]
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys; from overlayd.cli import {entry}; sys.exit({entry}())",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert result.returncode == 0, (
            f"`{shlex.join(argv)}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )


def test_getting_started_configuration_loads(tmp_path: Path) -> None:
    blocks = re.findall(r"\.\. code-block:: toml\n\n((?:   .*\n|\n)+)", GETTING_STARTED)
    assert blocks
    for i, block in enumerate(blocks):
        path = tmp_path / f"sample{i}.toml"
        path.write_text("\n".join(line[3:] for line in block.splitlines()) + "\n")
        config = load_config(path)
        assert config.drivers == ["linux_bridge", "wireguard"]
        assert str(config.data_dir) == "/var/lib/overlayd"
