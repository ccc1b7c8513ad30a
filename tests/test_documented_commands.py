"""Every ``neuronscope ...`` command written in the README, RESULTS.md and docs/ parses: its command exists and its
options are options of that command (a renamed or removed option in a document is caught here, not by a user)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"\[|\bNAME\b|\.\.\.|<")


def _commands(text: str) -> list[str]:
    """Commands in code blocks (continuation lines joined, comments dropped) and in `backticks`."""
    found = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line.strip())
            line = re.sub(r"^(\.venv/bin/)", "", line)
            if line.startswith("neuronscope "):
                found += [part.strip() for part in re.split(r"&&|;", line) if part.strip().startswith("neuronscope ")]
    for inline in re.findall(r"`(neuronscope [^`]+)`", text):
        found += [part.strip() for part in re.split(r"&&|;", inline) if part.strip().startswith("neuronscope ")]
    return [command for command in found if not PLACEHOLDER.search(command)]


CASES = [(path.name, command) for path in DOCUMENTS if path.exists() for command in _commands(path.read_text())]


def test_the_documents_hold_commands() -> None:
    assert len(CASES) > 20, CASES


@pytest.mark.parametrize(("document", "command"), CASES, ids=[f"{d}:{c[:60]}" for d, c in CASES])
def test_documented_command_parses(document: str, command: str) -> None:
    from neuronscope.cli.main import app

    args = shlex.split(command)[1:]
    try:
        context = app.make_context("neuronscope", list(args), resilient_parsing=False)
    except click.exceptions.Exit:  # --help
        return
    command_object: click.Command = app
    while isinstance(command_object, click.Group) and context.protected_args + context.args:
        rest = [*context.protected_args, *context.args]
        name, command_object, rest = command_object.resolve_command(context, rest)
        try:
            context = command_object.make_context(name, list(rest), parent=context)
        except click.exceptions.Exit:
            return
        except click.UsageError as error:
            pytest.fail(f"{document}: `{command}`: {error.format_message()}")
