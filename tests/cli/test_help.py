"""Help that reads as prose, for every command: no Python types, names for values, examples,
80 columns.

Before: `--json <bool>` (which invited `--json true`, refused), `--tag <list[str]>`,
`{tutorial_id}` in the usage line, and examples in a few commands only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tutorials.cli import app

runner = CliRunner()


def commands(
    command: Any = None, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, command) of every command and group, the app itself first."""
    command = command or typer.main.get_command(app)
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from commands(sub, (*path, name))


ALL = [path for path, _command in commands()]


def help_of(*path: str) -> str:
    result = runner.invoke(app, [*path, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("path", ALL, ids=lambda path: " ".join(path) or "tutorials")
def test_help_names_values_not_types(path: tuple[str, ...]) -> None:
    text = help_of(*path)
    assert re.search(r"<[a-z][a-z\[\], |]*>", text) is None, text  # <str>, <list[str]>, <bool>
    usage = text.splitlines()[0]
    assert "{" not in usage and usage.startswith(" ".join(("Usage: tutorials", *path))), usage
    assert max(len(line) for line in text.splitlines()) <= 80, text
    # a flag takes no value; every other option names its value in capitals
    command = dict(commands())[path]
    for param in command.params:
        if param.param_type_name != "option" or param.hidden:
            continue
        names = ", ".join([*param.opts, *param.secondary_opts])
        (line,) = [line for line in text.splitlines() if line.startswith(f"  {names}")]
        value = line[len(names) + 2 :].split("  ")[0].strip()
        if param.is_flag:
            assert value == "", line
        else:
            assert re.fullmatch(r"[A-Z][A-Z_]*", value), line


@pytest.mark.parametrize(
    "path", [path for path, command in commands() if not hasattr(command, "commands")]
)
def test_every_command_shows_examples(path: tuple[str, ...]) -> None:
    text = help_of(*path)
    examples = text.split("Example:" if "Example:" in text else "Examples:")
    assert len(examples) == 2, text
    first = examples[1].splitlines()[1]
    assert first.startswith("    tutorials ") or "tutorials" in first, text


def test_options_read_as_prose() -> None:
    assert help_of("get").splitlines()[0] == "Usage: tutorials get [OPTIONS] ID"
    assert "  --json  Print JSON instead of text." in help_of("get")
    update = help_of("update")
    for wanted in (
        "  --name NAME ",
        "  --url URL ",
        "  --tag, -t TAG ",
        "  --clear-tags ",
        "  --if-version VERSION ",
    ):
        assert wanted in update, wanted
    assert "  --limit, -n N " in help_of("list")
    assert "[default: 20]" in help_of("list")
    assert help_of("import").splitlines()[0] == "Usage: tutorials import [OPTIONS] FILE"
    assert help_of("export").splitlines()[0] == "Usage: tutorials export [OPTIONS] [FILE]"
    assert "  --errors FILE " in help_of("import")


def test_a_flag_given_a_value_says_so_in_one_line() -> None:
    result = runner.invoke(app, ["get", "1", "--json", "true"])
    assert result.exit_code == 2
    assert result.stderr.endswith("Error: Got unexpected extra argument(s) (true)\n")
