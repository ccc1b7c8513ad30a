"""``recipe vqa``, ``recipe logit-lens``, ``recipe base-vs-vlm``, ``recipe patches`` and ``recipe invariance`` from
the command line: bad input is one line, exit 2, and nothing written; the lens runs on the bundled model."""

from __future__ import annotations

import json

import pytest
from cli_helpers import assert_user_error

BAD = [
    (["recipe", "vqa"], "--questions"),
    (["recipe", "vqa", "--questions", "{tmp}/missing.jsonl", "-m", "m"], "missing.jsonl"),
    (["recipe", "vqa", "--bundled-scenes", "0"], "--bundled-scenes 0"),
    (["recipe", "logit-lens", "--images", "{tmp}/nowhere", "-m", "m"], "nowhere"),
    (["recipe", "logit-lens", "--bundled-scenes", "2", "--stages", "a"], "--stages"),
    (["recipe", "base-vs-vlm", "--bundled-facts"], "--base-model"),
    (["recipe", "base-vs-vlm", "--base-model", "b", "-m", "m"], "--bundled-facts"),
    (["recipe", "patches", "-m", "m", "--questions", "{tmp}/missing.jsonl"], "missing.jsonl"),
    (["recipe", "invariance", "-m", "m", "--images", "{tmp}", "--run", "{tmp}/no-run"], "no-run"),
]


@pytest.mark.parametrize(("args", "fragment"), BAD, ids=lambda value: " ".join(value) if isinstance(value, list)
                         else value)
def test_bad_input_is_one_line_and_writes_nothing(cli, tmp_path, args, fragment) -> None:
    out = tmp_path / "out"
    filled = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    assert_user_error(cli(*filled, "--out", out), fragment.replace("{tmp}", str(tmp_path)))
    assert not out.exists()


def test_logit_lens_on_the_bundled_model(cli, tmp_path) -> None:
    out = tmp_path / "lens"
    result = cli("recipe", "logit-lens", "--bundled-scenes", 1, "--drawn", 1, "--stages", "0,4", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stages"] == ["embeddings", "layer 3"] and set(metrics["localisation"]) == set(metrics["stages"])
    assert (out / "lens" / "0.embeddings.png").is_file() and "Logit lens over image tokens" in (
        out / "report.html").read_text()
