"""``explain``, ``intervene`` and ``evaluate`` against hand computations on the saved tiny model."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from cli_helpers import assert_user_error, load_tiny


def neurons_of(run) -> list[tuple[int, int]]:
    return [(n["layer"], n["index"]) for n in json.loads((run / "neurons.json").read_text())["neurons"]]


def probability_by_hand(model, tokenizer, prompt: str, word: str, scale: dict | None = None) -> float:
    """P(word | prompt) at the last position; ``scale`` {(layer, index): factor} multiplies value-vector columns,
    which is the same as multiplying those neurons' activations at every position."""
    originals = {}
    with torch.no_grad():
        for (layer, index), factor in (scale or {}).items():
            weight = model.model.layers[layer].mlp.down_proj.weight
            originals[(layer, index)] = weight[:, index].clone()
            weight[:, index] *= factor
        try:
            logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].double()
        finally:
            for (layer, index), column in originals.items():
                model.model.layers[layer].mlp.down_proj.weight[:, index] = column
    return float(logits.softmax(-1)[tokenizer.convert_tokens_to_ids(word)])


def test_explain_top_tokens_and_layer_plot(cli, tiny_model, located_run, tmp_path) -> None:
    model, tokenizer = load_tiny(tiny_model)
    result = cli("explain", "-m", tiny_model, "--neurons", "1:3,0:7,-1:5", "-k", 4, "--bottom")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for line, (layer, index) in zip([text for text in lines if "bottom" not in text][:3], [(1, 3), (0, 7), (1, 5)],
                                    strict=True):
        logits = model.lm_head.weight @ model.model.layers[layer].mlp.down_proj.weight[:, index]
        want = [repr(tokenizer.decode([t])) for t in logits.topk(4).indices.tolist()]
        assert line.split()[1:] == want and line.split()[0] == f"{layer}:{index}"
    assert "neurons per layer: 0:1 1:2" in result.output

    out = tmp_path / "explained"
    result = cli("explain", "--run", located_run, "--out", out, "-k", 3)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "explain.json").read_text())["neurons"]
    assert [(r["layer"], r["neuron"]) for r in rows] == neurons_of(located_run)
    assert (out / "plots" / "layers.png").is_file() and (out / "report.html").is_file()
    assert json.loads((out / "config.json").read_text())["model"] == str(tiny_model)  # taken from the run

    assert_user_error(cli("explain", "-m", tiny_model, "--neurons", "2:1,0:24"), "2:1", "0:24", "outside the model")
    assert_user_error(cli("explain", "-m", tiny_model), "--neurons", "--run")
    assert_user_error(cli("explain", "--run", tmp_path / "nothing"), "run folder not found")


@pytest.mark.parametrize("positions", ["all"])
def test_intervene_probabilities_and_pcr_equal_weight_edits(cli, tiny_model, tmp_path, positions) -> None:
    model, tokenizer = load_tiny(tiny_model)
    prompts = ["the capital of france is", "grass is"]
    out = tmp_path / "iv"
    result = cli("intervene", "-m", tiny_model, "--neurons", "1:3,0:7,1:5", "--prompt", prompts[0], "--prompt",
                 prompts[1], "--target", "paris", "--target", "green", "--positions", positions, "--factor", 3,
                 "--out", out)
    assert result.exit_code == 0, result.output
    with open(out / "tables" / "intervene.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    neurons = [(1, 3), (0, 7), (1, 5)]
    pcrs = {"suppress": [], "amplify": []}
    for row, prompt, word in zip(rows, prompts, ["paris", "green"], strict=True):
        before = probability_by_hand(model, tokenizer, prompt, word)
        suppressed = probability_by_hand(model, tokenizer, prompt, word, {n: 0.0 for n in neurons})
        amplified = probability_by_hand(model, tokenizer, prompt, word, {n: 3.0 for n in neurons})
        assert float(row["p_before"]) == pytest.approx(before, rel=1e-5)
        assert float(row["p_suppress"]) == pytest.approx(suppressed, rel=1e-5)
        assert float(row["p_amplify"]) == pytest.approx(amplified, rel=1e-5)
        pcrs["suppress"].append((suppressed - before) / before)
        pcrs["amplify"].append((amplified - before) / before)
    metrics = json.loads((out / "metrics.json").read_text())
    for mode, values in pcrs.items():
        assert metrics[mode]["pcr"]["mean"] == pytest.approx(sum(values) / 2, abs=1e-5)
        assert metrics[mode]["pcr"]["n"] == 2


def test_intervene_defaults_to_the_runs_prompts(cli, located_run) -> None:
    result = cli("intervene", "--run", located_run, "--mode", "suppress")
    assert result.exit_code == 0, result.output
    assert "suppress: mean PCR" in result.output and "n 3" in result.output and "amplify" not in result.output


def test_intervene_bad_input(cli, tiny_model, located_run, tmp_path) -> None:
    assert_user_error(cli("intervene", "-m", tiny_model, "--neurons", "0:1", "--prompt", "x", "--mode", "twist"),
                      "--mode")
    assert_user_error(cli("intervene", "-m", tiny_model, "--neurons", "0:1", "--prompt", "x", "--positions", "9"),
                      "--positions")
    assert_user_error(cli("intervene", "--run", located_run, "--neurons", "0:1"), "either --neurons or --run")
    assert_user_error(cli("intervene", "-m", tiny_model, "--neurons", "0:1"), "no prompts")
    assert_user_error(cli("intervene", "-m", tiny_model, "--neurons", "0:1", "--prompt", "a", "--prompt", "b",
                          "--target", "x", "--target", "y", "--target", "z"), "3 --target flags for 2 --prompt")


def test_evaluate_located_vs_random(cli, tiny_model, located_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(located_run, run)
    result = cli("evaluate", run, "--draws", 3, "--seed", 1, "--positions", "all")
    assert result.exit_code == 0, result.output
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert json.loads((run / "metrics.json").read_text())["evaluation"] == evaluation
    model, tokenizer = load_tiny(tiny_model)
    neurons = neurons_of(run)
    prompts = [("the capital of france is", "paris"), ("the colour of the sky is", "blue"), ("grass is", "green")]
    ratios = []
    for prompt, word in prompts:
        before = probability_by_hand(model, tokenizer, prompt, word)
        ratios.append((probability_by_hand(model, tokenizer, prompt, word, {n: 0.0 for n in neurons}) - before)
                      / before)
    assert evaluation["suppress"]["located_mean_pcr"] == pytest.approx(sum(ratios) / 3, abs=1e-5)
    assert evaluation["suppress"]["random_mean_pcr"]["n"] == 3
    with open(run / "tables" / "evaluation.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * (1 + 3)
    assert (run / "plots" / "evaluation_pcr.png").is_file()
    assert "evaluation" in (run / "report.html").read_text()
    assert json.loads((run / "evaluate_config.json").read_text())["draws"] == 3
    # The locate results are untouched.
    for name in ("neurons.csv", "scores.safetensors", "config.json"):
        assert (run / name).read_bytes() == (located_run / name).read_bytes()
    assert_user_error(cli("evaluate", tmp_path / "missing"), "run folder not found")
