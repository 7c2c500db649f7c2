"""The README tells the truth: every command in its command table exists with the options it shows, and every
``PATCHFLOW_*`` variable it names is a setting (or one of the few the tests and the CLI read directly)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer.main

from patchflow.cli import app
from patchflow.config import Settings
from patchflow.testing.ssm_endpoint import SSH_INVENTORY_ENV
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
#: Read outside Settings: by the test suite, the history recorder and the CLI's error handler.
NOT_SETTINGS = {
    "PATCHFLOW_TEST_POSTGRES_URL",
    "PATCHFLOW_DEBUG",
    "PATCHFLOW_RECORD_HISTORIES",
    SSH_INVENTORY_ENV,  # read by the fake SSM endpoint's command line, a test backend
}


def table_rows() -> list[str]:
    section = README.split("## Command line", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `patchflow ")]


def is_group(command: Any) -> bool:
    """typer vendors click, so test for a group by its subcommands."""
    return hasattr(command, "commands")


def resolve(words: list[str]) -> tuple[Any, list[str]]:
    """The click command named by the leading words, and the words left over."""
    command: Any = typer.main.get_command(app)
    while words and is_group(command) and words[0] in command.commands:
        command = command.commands[words.pop(0)]
    return command, words


def commands_in(row: str) -> list[tuple[str, list[str]]]:
    """(command text, options shown) for every `patchflow …` code span in the row's first cell."""
    cell = row.split(" | ", 1)[0]
    out = []
    for span in re.findall(r"`(patchflow [^`]+)`|`([a-z][a-z-]+ [^`]*)`", cell):
        text = span[0] or span[1]
        out.append((text, re.findall(r"(--[a-z][a-z0-9-]*)", text)))
    return out


ROWS = table_rows()


def test_the_command_table_is_found() -> None:
    assert len(ROWS) >= 25


def words_of(text: str) -> list[str]:
    """The command words of a span: lowercase words before the first argument or option."""
    out = []
    for word in text.split():
        if not re.fullmatch(r"[a-z][a-z-]*(\\\|[a-z][a-z-]*)*", word):
            break
        out.append(word)
    return out


@pytest.mark.parametrize("row", ROWS, ids=[r.split("`")[1][:60] for r in ROWS])
def test_each_documented_command_exists_with_its_options(row: str) -> None:
    root = typer.main.get_command(app)
    assert is_group(root)
    spans = commands_in(row)
    first_words = words_of(spans[0][0])[1:]  # without "patchflow"
    parent = root.commands.get(first_words[0], root)
    for text, options in spans:
        words = words_of(text)
        if words[0] == "patchflow":
            words, base = words[1:], root
        else:
            # A follow-up span ("`wave list`", "`describe ID`") names a command from the root or a sibling.
            base = root if words[0] in root.commands else parent
        targets = [base]
        for word in words:
            if not all(is_group(t) for t in targets):
                break  # the rest are arguments ("compare deb\\|rpm A B")
            next_targets = []
            for target in targets:
                for alternative in word.split("\\|"):
                    assert alternative in target.commands, (
                        f"{text!r}: no {alternative!r} in {sorted(target.commands)}"
                    )
                    next_targets.append(target.commands[alternative])
            targets = next_targets
        for target in targets:
            # A group is a command only when it runs without a subcommand (`patchflow emergency --cve …`).
            assert not is_group(target) or target.invoke_without_command, (
                f"{text!r} names a group, not a command"
            )
            known = {opt for param in target.params for opt in (*param.opts, *param.secondary_opts)}
            missing = [o for o in options if o not in known]
            assert not missing, f"{text!r}: {target.name} has no {missing}"


def test_every_documented_setting_exists() -> None:
    names = set(re.findall(r"PATCHFLOW_[A-Z_]+[A-Z]", README))
    fields = {f"PATCHFLOW_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(names - fields - NOT_SETTINGS)
    assert not unknown, unknown
    assert "PATCHFLOW_FREEZE_FILE" in names and "PATCHFLOW_PLAN" in names
