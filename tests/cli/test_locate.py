"""``neuronscope locate``: scores equal a hand computation, selection rules, config files, resume, bad input,
out-of-memory back-off, and a 2-process gloo run equal to the single-process run."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_user_error, contribution_by_hand, load_tiny

import neuronscope.workflows.locate as locate_module
from neuronscope.results.scores import NeuronScores

PROMPTS = ["the capital of france is", "the colour of the sky is", "the capital of a country is a",
           "the cat and the dog", "grass is"]
TARGETS = ["paris", "blue", "city", "prediction", "green"]


def expected_token(model, tokenizer, prompt: str, target: str) -> int:
    if target == "prediction":
        with torch.no_grad():
            return int(model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].argmax())
    return tokenizer.convert_tokens_to_ids(target)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_scores_and_selection_equal_a_hand_computation(cli, tiny_model, prompts_file, tmp_path) -> None:
    out = tmp_path / "run"
    result = cli("locate", "--model", tiny_model, "--prompts", prompts_file, "--top-k", 6, "--batch-size", 2,
                 "--out", out)
    assert result.exit_code == 0, result.output
    model, tokenizer = load_tiny(tiny_model)
    scores = NeuronScores.load(out / "scores")
    assert scores.values.shape == (5, 1, 2, 24)
    for row, (prompt, target) in enumerate(zip(PROMPTS, TARGETS, strict=True)):
        token = expected_token(model, tokenizer, prompt, target)
        torch.testing.assert_close(scores.values[row, 0], contribution_by_hand(model, tokenizer, prompt, token),
                                   atol=1e-5, rtol=1e-5)
    # Selection: the 6 largest mean scores, best first.
    mean = scores.values.double().mean(dim=(0, 1))
    top = mean.flatten().topk(6)
    rows = read_csv(out / "neurons.csv")
    assert [(int(r["layer"]), int(r["index"])) for r in rows] == [(int(f) // 24, int(f) % 24) for f in top.indices]
    assert [float(r["score"]) for r in rows] == pytest.approx(top.values.tolist())
    neurons = json.loads((out / "neurons.json").read_text())["neurons"]
    assert [(n["layer"], n["index"]) for n in neurons] == [(int(r["layer"]), int(r["index"])) for r in rows]
    # Top tokens of each selected neuron: topk(W_U w_i) by hand.
    tokens = json.loads((out / "top_tokens.json").read_text())
    for n in neurons:
        logits = model.lm_head.weight @ model.model.layers[n["layer"]].mlp.down_proj.weight[:, n["index"]]
        want = [tokenizer.decode([t]) for t in logits.topk(10).indices.tolist()]
        assert [t for t, _ in tokens[f"{n['layer']}:{n['index']}"]] == want
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "locate" and config["top_k"] == 6 and config["method"] == "contribution"
    assert config["prompts"] == str(prompts_file)
    for name in ("report.html", "plots/layers.png", "plots/scores.png", "metrics.json", "meta.json"):
        assert (out / name).is_file(), name
    assert "6:" not in result.stderr


def test_threshold_and_layers(cli, tiny_model, tmp_path) -> None:
    out = tmp_path / "run"
    result = cli("locate", "-m", tiny_model, "--prompt", "the capital of france is", "--target", "paris",
                 "--layers", "1", "--threshold", 0.5, "--out", out)
    assert result.exit_code == 0, result.output
    model, tokenizer = load_tiny(tiny_model)
    by_hand = contribution_by_hand(model, tokenizer, "the capital of france is",
                                   tokenizer.convert_tokens_to_ids("paris"))[1]
    keep = (by_hand > 0.5 * by_hand.max()).nonzero()[:, 0]
    keep = keep[by_hand[keep].argsort(descending=True)]
    rows = read_csv(out / "neurons.csv")
    assert [(int(r["layer"]), int(r["index"])) for r in rows] == [(1, int(i)) for i in keep]
    assert NeuronScores.load(out / "scores").values.shape == (1, 1, 1, 24)


def test_config_file_with_flags_winning(cli, tiny_model, prompts_file, tmp_path) -> None:
    config = tmp_path / "locate.yaml"
    config.write_text(f"model: {tiny_model}\nprompts: {prompts_file}\ntop-k: 3\nexplain_k: 2\n")
    out = tmp_path / "run"
    result = cli("locate", "--config", config, "--top-k", 2, "--out", out)
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["top_k"] == 2 and recorded["explain_k"] == 2 and recorded["model"] == str(tiny_model)
    assert len(read_csv(out / "neurons.csv")) == 2


def test_resumed_run_equals_an_uninterrupted_one(cli, tiny_model, prompts_file, tmp_path, monkeypatch) -> None:
    whole = tmp_path / "whole"
    assert cli("locate", "-m", tiny_model, "--prompts", prompts_file, "--batch-size", 1, "--out", whole).exit_code == 0

    real = locate_module.score_chunk
    calls: list[int] = []

    def crash_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise RuntimeError("killed half-way")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(locate_module, "score_chunk", crash_after_two)
    killed = tmp_path / "killed"
    result = cli("locate", "-m", tiny_model, "--prompts", prompts_file, "--batch-size", 1, "--out", killed)
    assert isinstance(result.exception, RuntimeError)
    assert not (killed / "scores.safetensors").exists()
    assert len(list((killed / "examples").glob("*.safetensors"))) == 2

    calls.clear()
    monkeypatch.setattr(locate_module, "score_chunk", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    result = cli("locate", "-m", tiny_model, "--prompts", prompts_file, "--batch-size", 1, "--out", killed,
                 "--resume")
    assert result.exit_code == 0, result.output
    assert len(calls) == 3  # only the unfinished prompts were scored again
    assert torch.equal(NeuronScores.load(whole / "scores").values, NeuronScores.load(killed / "scores").values)
    assert (whole / "neurons.csv").read_text() == (killed / "neurons.csv").read_text()
    assert len(json.loads((killed / "meta.json").read_text())["resumes"]) == 1


def test_resume_with_other_options_is_refused(cli, tiny_model, prompts_file, tmp_path) -> None:
    out = tmp_path / "run"
    assert cli("locate", "-m", tiny_model, "--prompts", prompts_file, "--out", out).exit_code == 0
    before = digest(out)
    result = cli("locate", "-m", tiny_model, "--prompts", prompts_file, "--out", out, "--resume", "--top-k", 3)
    assert_user_error(result, "another config", "top_k")
    assert digest(out) == before


def test_an_earlier_run_is_never_lost(cli, tiny_model, prompts_file, tmp_path) -> None:
    out = tmp_path / "run"
    assert cli("locate", "-m", tiny_model, "--prompts", prompts_file, "--out", out).exit_code == 0
    before = digest(out)
    assert_user_error(cli("locate", "-m", tiny_model, "--prompts", prompts_file, "--out", out),
                      "already holds results")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 1}\n')
    assert_user_error(cli("locate", "-m", tiny_model, "--prompts", bad, "--out", out, "--overwrite"),
                      "line 1: field 'prompt'")
    assert digest(out) == before
    # Overwriting a folder that is not a neuronscope run is refused.
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"not really")
    assert_user_error(cli("locate", "-m", tiny_model, "--prompts", prompts_file, "--out", other, "--overwrite"),
                      "not a neuronscope run folder")
    assert (other / "holiday.jpg").read_bytes() == b"not really"


def test_malformed_inputs_give_one_line_per_problem(cli, tiny_model, tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 3}\n{"target": "paris"}\nnot json\n{"prompt": "fine", "target": 5}\n')
    lines = assert_user_error(cli("locate", "-m", tiny_model, "--prompts", bad, "--out", tmp_path / "r"))
    assert len(lines) == 5  # a header and one line per problem
    assert any("line 1: field 'prompt'" in line for line in lines)
    assert any("line 2: field 'prompt': missing" in line for line in lines)
    assert any("line 3: invalid JSON" in line for line in lines)
    assert any("line 4: field 'target'" in line for line in lines)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_user_error(cli("locate", "-m", tiny_model, "--prompts", empty, "--out", tmp_path / "r"), "empty")
    assert_user_error(cli("locate", "-m", tiny_model, "--prompts", tmp_path / "missing.jsonl", "--out",
                          tmp_path / "r"), "missing.jsonl")
    lines = assert_user_error(cli("locate", "-m", tiny_model, "--prompt", "the cat", "--prompt", "grass is",
                                  "--target", "zebra", "--target", "id:9999", "--out", tmp_path / "r"))
    assert len(lines) == 2 and "zebra" in lines[0] and "9999" in lines[1]
    assert_user_error(cli("locate", "-m", tiny_model, "--prompt", "x", "--method", "nope", "--out", tmp_path / "r"),
                      "unknown attribution method 'nope'", "contribution")
    assert_user_error(cli("locate", "-m", tiny_model, "--prompt", "the cat", "--layers", "7", "--out",
                          tmp_path / "r"), "layer")
    assert_user_error(cli("locate", "-m", tiny_model, "--prompt", "the cat", "--layers", "one", "--out",
                          tmp_path / "r"), "--layers")
    assert_user_error(cli("locate", "-m", tiny_model, "--prompt", "x", "--option", "bogus=1", "--out",
                          tmp_path / "r"), "bogus")
    assert_user_error(cli("locate", "-m", tiny_model, "--prompt", "x", "--site", "elbow", "--out", tmp_path / "r"),
                      "--site 'elbow'")
    assert_user_error(cli("locate", "-m", tiny_model, "--prompt", "x", "--chat", "--out", tmp_path / "r"),
                      "no chat template")
    assert_user_error(cli("locate", "--prompt", "x", "--out", tmp_path / "r"), "--model")
    assert_user_error(cli("locate", "-m", tmp_path / "no-model", "--prompt", "x", "--out", tmp_path / "r"),
                      "not found")
    config = tmp_path / "c.yaml"
    config.write_text("top_k: many\nbogus: 1\n")
    lines = assert_user_error(cli("locate", "-m", tiny_model, "--prompt", "x", "--config", config, "--out",
                                  tmp_path / "r"))
    assert len(lines) == 2 and "top_k" in lines[0] and "bogus" in lines[1]
    assert not (tmp_path / "r").exists()


def test_out_of_memory_backs_off_and_gives_the_same_scores(cli, tiny_model, prompts_file, tmp_path) -> None:
    one = tmp_path / "one"
    assert cli("locate", "-m", tiny_model, "--prompts", prompts_file, "--batch-size", 1, "--out", one).exit_code == 0
    small_gpu = tmp_path / "small-gpu"
    result = cli("locate", "-m", tiny_model, "--prompts", prompts_file, "--batch-size", 4, "--out", small_gpu,
                 env={"NEURONSCOPE_SIMULATE_OOM_ABOVE": "1"})
    assert result.exit_code == 0, result.output
    assert "out of memory at batch size 4; going on with 2" in result.stderr
    assert "out of memory at batch size 2; going on with 1" in result.stderr
    torch.testing.assert_close(NeuronScores.load(one / "scores").values,
                               NeuronScores.load(small_gpu / "scores").values)


@pytest.mark.slow
def test_two_process_gloo_run_equals_the_single_process_run(cli, tiny_model, prompts_file, tmp_path) -> None:
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker below: the same reduction order, so bit-equal results
    try:
        assert cli("locate", "-m", tiny_model, "--prompts", prompts_file, "--batch-size", 1, "--out",
                   single).exit_code == 0
    finally:
        torch.set_num_threads(threads)
    parallel = tmp_path / "parallel"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "neuronscope.cli.main", "locate", "-m", str(tiny_model), "--prompts", str(prompts_file),
         "--batch-size", "1", "--out", str(parallel)],
        capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ledgers = sorted(p.name for p in (parallel / "progress").iterdir())
    assert ledgers == ["rank-00000-of-00002.jsonl", "rank-00001-of-00002.jsonl"]
    assert len((parallel / "progress" / ledgers[1]).read_text().splitlines()) == 2  # prompts 1 and 3
    assert torch.equal(NeuronScores.load(single / "scores").values, NeuronScores.load(parallel / "scores").values)
    assert (single / "neurons.csv").read_text() == (parallel / "neurons.csv").read_text()
    assert (single / "top_tokens.json").read_text() == (parallel / "top_tokens.json").read_text()


def test_dtype_and_device_map_options(cli, tiny_model, tmp_path) -> None:
    reference, bf16, spread = tmp_path / "fp32", tmp_path / "bf16", tmp_path / "auto"
    args = ["locate", "-m", tiny_model, "--prompt", "the capital of france is", "--target", "paris", "--out"]
    assert cli(*args, reference).exit_code == 0
    assert cli(*args, bf16, "--dtype", "bf16").exit_code == 0
    assert cli(*args, spread, "--device-map", "auto").exit_code == 0
    exact = NeuronScores.load(reference / "scores")
    half = NeuronScores.load(bf16 / "scores")
    assert half.meta["model"]["dtype"] == "bfloat16"
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bf16"
    scale = exact.values.abs().max()
    torch.testing.assert_close(half.values, exact.values, atol=0.05 * float(scale), rtol=0.05)
    torch.testing.assert_close(NeuronScores.load(spread / "scores").values, exact.values)
    assert_user_error(cli(*args, tmp_path / "x", "--dtype", "fp8"), "--dtype 'fp8'", "use one of", "bf16")


def test_keep_top_stores_sparse_scores_and_selects_from_their_mean(cli, tiny_model, prompts_file, tmp_path) -> None:
    dense_run, sparse_run = tmp_path / "dense", tmp_path / "sparse"
    args = ["locate", "-m", tiny_model, "--prompts", prompts_file, "--batch-size", 1, "--top-k", 4, "--out"]
    assert cli(*args, dense_run).exit_code == 0
    result = cli(*args, sparse_run, "--keep-top", 5)
    assert result.exit_code == 0, result.output
    dense = NeuronScores.load(dense_run / "scores").values  # [5, 1, 2, 24]
    sparse = NeuronScores.load(sparse_run / "scores")
    assert sparse.sparse and sparse.values.shape == (5, 1, 5) and sparse.shape == (2, 24)
    # By hand: keep each prompt's 5 best scores, zero elsewhere, average over prompts.
    flat = dense.flatten(2)
    kept = torch.zeros_like(flat).scatter(-1, flat.topk(5, dim=-1).indices, flat.topk(5, dim=-1).values)
    torch.testing.assert_close(sparse.dense(), kept.view_as(dense))
    mean = kept.double().mean(dim=(0, 1))
    order = mean.topk(4).indices
    rows = read_csv(sparse_run / "neurons.csv")
    assert [(int(r["layer"]), int(r["index"])) for r in rows] == [(int(i) // 24, int(i) % 24) for i in order]
    assert all(p.stat().st_size <= 1024 for p in (sparse_run / "examples").glob("*.safetensors"))
