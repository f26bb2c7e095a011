"""The command line's own surface: --version and each subcommand's --help."""
from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from crackops.cli import COMMANDS, build_parser, main, package_version

REPO = Path(__file__).resolve().parents[1]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return dict(sub.choices)


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    version = package_version()
    assert capsys.readouterr().out.strip() == f"crackops {version}"
    if version.startswith("unknown"):
        pytest.skip("crackops is not installed in this environment (pip install -e .)")
    assert version == re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)


def test_every_command_has_a_parser_and_back():
    assert set(_subcommands()) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help_has_a_description_and_an_example(name, capsys):
    with pytest.raises(SystemExit):
        main([name, "--help"])
    text = capsys.readouterr().out
    body = text.split("\n\n")
    description = body[1].strip()
    assert "\n" not in description and description.endswith(".") and len(description) > 15, description
    example = text.rsplit("example:\n", 1)[1].strip()
    assert example.startswith(f"crackops {name}")
    # The example is a command line this parser accepts, not just text.
    args = build_parser().parse_args(shlex.split(example)[1:])
    assert args.command == name


def test_help_runs_as_a_console_command():
    result = subprocess.run([sys.executable, "-m", "crackops", "train", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "example:\n  crackops train" in result.stdout
