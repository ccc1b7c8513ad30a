"""``recipe icl`` on a tiny random Llama with a word-level tokenizer and a toy SST-2 file: through ``neuronscope.run``
its accuracies equal one-prompt-at-a-time forwards (clean, and with the top head's slice of ``o_proj``'s input
zeroed at the last position by a plain pre-hook), its files load back, and through the CLI it writes the report's
sections; a missing data folder is one line and exit 2, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

import neuronscope
from helpers.icl_words import save_icl_toy, word_tokenizer
from neuronscope.cli.main import app
from neuronscope.results.base import load_result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(model folder, data folder holding icl/sst2_872.tsv)."""
    return save_icl_toy(tmp_path_factory.mktemp("icl"))


def _accuracy_by_hand(model, tokenizer, prompts: list[dict], heads: list[list[int]] = ()) -> tuple[float, float]:
    """(accuracy, mean p(true class) over the label set), one unpadded prompt per forward; ``heads`` zeroed in
    ``o_proj``'s input at the last position."""
    head_dim = model.config.hidden_size // model.config.num_attention_heads

    def zero(layer_heads):
        def hook(module, args):
            x = args[0].clone()
            for head in layer_heads:
                x[:, -1, head * head_dim:(head + 1) * head_dim] = 0
            return (x,)
        return hook

    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    handles = [model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(zero(hs))
               for layer, hs in by_layer.items()]
    correct, p_true = [], []
    try:
        for prompt in prompts:
            ids = tokenizer.convert_tokens_to_ids(prompt["label_words"])
            with torch.no_grad():
                logits = model(**tokenizer(prompt["text"], return_tensors="pt")).logits[0, -1, ids]
            correct.append(float(int(logits.argmax()) == prompt["query_class"]))
            p_true.append(float(logits.softmax(-1)[prompt["query_class"]]))
    finally:
        for handle in handles:
            handle.remove()
    return sum(correct) / len(correct), sum(p_true) / len(p_true)


def test_recipe_icl_accuracies_equal_forwards_by_hand_and_files_load(tiny, tmp_path):
    model_dir, data_dir = tiny
    out = tmp_path / "icl"
    result = neuronscope.run("recipe icl", model=str(model_dir), data=data_dir, out=out, limit=6, draws=2,
                             n_other_dataset=0, fractions=[0.1, 0.2])
    metrics = json.loads((out / "metrics.json").read_text())
    assert result.metrics["label_kind"] == metrics["label_kind"] in ("natural", "unrelated")
    kind = metrics["label_kind"]
    prompts = json.loads((out / "prompts.json").read_text())
    assert {len(prompts[name]) for name in ("locate_natural", "locate_unrelated", f"evaluate_{kind}")} == {6}
    located = {p["text"].rsplit("Review: ", 1)[1] for p in prompts[f"locate_{kind}"]}
    evaluated = {p["text"].rsplit("Review: ", 1)[1] for p in prompts[f"evaluate_{kind}"]}
    assert not located & evaluated  # evaluation queries are disjoint from the locate queries

    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = word_tokenizer()
    accuracy, p_true = _accuracy_by_hand(model, tokenizer, prompts[f"evaluate_{kind}"])
    clean = metrics["ablation"]["clean"]
    assert clean["accuracy"] == pytest.approx(accuracy) and clean["p_true"] == pytest.approx(p_true, abs=1e-5)
    assert metrics["locate_accuracy"][kind]["accuracy"] == pytest.approx(
        _accuracy_by_hand(model, tokenizer, prompts[f"locate_{kind}"])[0])
    assert metrics["head_counts"] == [1, 2]  # ceil(0.1 x 8), ceil(0.2 x 8) of 2 x 4 heads
    for n in metrics["head_counts"]:
        top = metrics["heads"]["lpi_top"][:n]
        accuracy, p_true = _accuracy_by_hand(model, tokenizer, prompts[f"evaluate_{kind}"], top)
        ablated = metrics["ablation"][f"lpi_top_{n}"]
        assert ablated["accuracy"] == pytest.approx(accuracy) and ablated["p_true"] == pytest.approx(p_true, abs=1e-5)
        randoms = [metrics["ablation"][f"random_{n}_{d}"]["accuracy"] for d in range(2)]
        assert metrics["ablation"][f"random_{n}_summary"] == pytest.approx(
            {"mean": sum(randoms) / 2, "min": min(randoms), "max": max(randoms)})

    heads = load_result(out / "heads_lpi.json")
    tensors = load_file(str(out / "heads.safetensors"))
    torch.testing.assert_close(tensors["lpi_combined"], torch.tensor(heads.combined, dtype=torch.float32))
    assert tensors["ablation_per_label"].shape == (2, 2, 4)
    assert heads.top(2).tolist() == metrics["heads"]["lpi_top"]
    for name in ("heads_ablation", "positions", "towers", "merge", "bias_majority", "bias_recency"):
        assert type(load_result(out / f"{name}.json")).__name__  # every result reads back by its format
    bias = load_result(out / "bias_majority.json")
    assert bias.n_prompts == 12 and len(bias.random) == 2  # 6 queries x 2 label mixes; one row per random draw
    csv_rows = (out / "tables" / "heads.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 8 and csv_rows[0].startswith("layer,head,lpi_rank,lpi_combined")


def test_recipe_icl_cli_writes_the_report_sections_and_refuses_a_missing_data_folder(tiny, tmp_path):
    model_dir, data_dir = tiny
    runner = CliRunner()
    out = tmp_path / "cli"
    done = runner.invoke(app, ["recipe", "icl", "-m", str(model_dir), "--data", str(data_dir / "icl"), "--out",
                               str(out), "--limit", "3", "--draws", "1", "--n-other-dataset", "0",
                               "--label-kind", "unrelated"])
    assert done.exit_code == 0, done.output
    assert json.loads((out / "metrics.json").read_text())["label_kind"] == "unrelated"
    html = (out / "report.html").read_text()
    for section in ("In context heads", "Demonstrations", "Two towers", "Shallow merge", "Bias"):
        assert f">{section}<" in html, section
    for figure in ("1_in_context_heads/heads_lpi.png", "1_in_context_heads/ablation_vs_random.png",
                   "2_demonstrations/first_prompt.png", "3_two_towers/attention_vs_similarity.png",
                   "4_shallow_merge/merge_by_layer.png", "5_bias/bias_before_after.png"):
        assert (out / "plots" / figure).stat().st_size > 1000, figure
    assert json.loads((out / "cli_config.json").read_text())["label_kind"] == "unrelated"

    missing = tmp_path / "missing"
    for data, fragment in ((tmp_path / "nowhere", "icl/sst2_872.tsv"), (None, "--data")):
        args = ["recipe", "icl", "-m", str(model_dir), "--out", str(missing)] + (["--data", str(data)] if data else [])
        failed = runner.invoke(app, args)
        assert failed.exit_code == 2 and "Traceback" not in failed.output, failed.output
        lines = [line for line in failed.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], failed.stderr
        assert not missing.exists()
    failed = runner.invoke(app, ["recipe", "icl", "-m", str(model_dir), "--data", str(data_dir), "--out",
                                 str(missing)])  # the other data set's accuracy is asked for by default
    assert failed.exit_code == 2 and "agnews_test_7600.tsv" in failed.stderr and "--n-other-dataset 0" in failed.stderr
    assert not missing.exists()
    failed = runner.invoke(app, ["recipe", "icl", "--data", str(data_dir), "--out", str(missing), "--shots", "2"])
    assert failed.exit_code == 2 and "--shots 2" in failed.stderr
