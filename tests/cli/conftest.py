"""Fixtures of the CLI tests: a tiny random Llama saved to a folder, a prompts file, an in-process runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import save_tiny_llama


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture()
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "the capital of france is", "target": "paris"},
            {"prompt": "the colour of the sky is", "target": "blue"},
            {"prompt": "the capital of a country is a", "target": "city"},
            {"prompt": "the cat and the dog", "target": "prediction"},
            {"prompt": "grass is", "target": "green"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture()
def cli():
    """``cli(*args, env=None)`` runs the neuronscope app in-process and returns the result."""
    from click.testing import CliRunner

    from neuronscope.cli.main import app

    runner = CliRunner()

    def invoke(*args: object, env: dict[str, str] | None = None):
        return runner.invoke(app, [str(arg) for arg in args], env=env)

    return invoke




@pytest.fixture(scope="session")
def located_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished locate run (4 neurons) on three prompts; copy it before changing it."""
    from click.testing import CliRunner

    from neuronscope.cli.main import app

    folder = tmp_path_factory.mktemp("located") / "run"
    prompts = folder.parent / "prompts.jsonl"
    rows = [{"prompt": "the capital of france is", "target": "paris"},
            {"prompt": "the colour of the sky is", "target": "blue"},
            {"prompt": "grass is", "target": "green"}]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = CliRunner().invoke(app, ["locate", "-m", str(tiny_model), "--prompts", str(prompts), "--top-k", "4",
                                      "--out", str(folder)])
    assert result.exit_code == 0, result.output
    return folder
