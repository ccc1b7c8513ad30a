"""Specific selection and specificity on every run (workflows/specificity.py, locate / intervene / edit make) on a
tiny Llama with planted neurons, against forwards with plain hooks on the stock modules.

The planted model: the target words' unembedding rows are orthogonal (``u_t = 3 e_k``); in layer 1, neurons COMMON
have a constant activation (zeroed gate/up rows, biases) and a value vector along every target word, so every
prompt's contribution ranks them first; neuron OWN has a constant activation and a value vector along "paris" only,
so only the target fact's prompt scores it.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from helpers.word_models import word_tokenizer
from neuronscope.workflows import run

COMMON, OWN = [(1, 3), (1, 7)], (1, 11)
TARGET = {"prompt": "the capital of france is", "target": "paris"}
BACKGROUND = [{"prompt": "the capital of a country is", "target": "city", "group": "same template"},
              {"prompt": "the capital of the country is", "target": "rome", "group": "same template"},
              {"prompt": "the colour of the sky is", "target": "blue", "group": "other templates"},
              {"prompt": "grass is", "target": "green", "group": "other templates"},
              {"prompt": "the cat and the dog", "target": "animal", "group": "other templates"}]
WORDS = ["paris", "city", "rome", "blue", "green", "animal"]


def planted_llama(folder: Path) -> Path:
    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=24, max_position_embeddings=64, mlp_bias=True,
                         pad_token_id=1, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.5)
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.zero_()
        ids = tokenizer.convert_tokens_to_ids(WORDS)
        model.lm_head.weight[ids] = 3.0 * torch.eye(16)[: len(ids)]
        mlp = model.model.layers[1].mlp
        every = torch.eye(16)[: len(ids)].sum(0)
        for index, value in [(COMMON[0][1], 10.0 * every), (COMMON[1][1], 9.0 * every), (OWN[1], 6.0 * torch.eye(16)[0])]:
            mlp.gate_proj.weight[index] = 0.0
            mlp.up_proj.weight[index] = 0.0
            mlp.gate_proj.bias[index], mlp.up_proj.bias[index] = 4.0, 1.0  # activation silu(4) at every position
            mlp.down_proj.weight[:, index] = value
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("planted")
    prompts, background = root / "prompts.jsonl", root / "background.jsonl"
    prompts.write_text(json.dumps(TARGET) + "\n")
    background.write_text("".join(json.dumps(row) + "\n" for row in BACKGROUND))
    return {"model": planted_llama(root / "llama"), "prompts": prompts, "background": background, "root": root}


def probability(model: LlamaForCausalLM, prompt: str, word: str, zeroed: list[tuple[int, int]] = ()) -> float:
    """P(word) after ``prompt``; ``zeroed`` neurons' down_proj inputs set to 0 at the last position only."""
    tokenizer = word_tokenizer()

    def hook(layer: int):
        def zero(module, args):
            x = args[0].clone()
            for zl, index in zeroed:
                if zl == layer:
                    x[:, -1, index] = 0.0
            return (x,)
        return zero

    handles = [block.mlp.down_proj.register_forward_pre_hook(hook(n)) for n, block in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].double()
    finally:
        for handle in handles:
            handle.remove()
    return float(logits.softmax(-1)[tokenizer.convert_tokens_to_ids(word)])


def change(model: LlamaForCausalLM, row: dict, zeroed: list[tuple[int, int]]) -> float:
    before = probability(model, row["prompt"], row["target"])
    return (probability(model, row["prompt"], row["target"], zeroed) - before) / before


def median_change(model: LlamaForCausalLM, group: str | None, zeroed: list[tuple[int, int]]) -> float:
    rows = [TARGET] if group is None else [row for row in BACKGROUND if row["group"] == group]
    return statistics.median(change(model, row, zeroed) for row in rows)


def selected(folder: Path) -> list[tuple[int, int]]:
    return [(row["layer"], row["index"]) for row in json.loads((folder / "neurons.json").read_text())["neurons"]]


def test_specific_selection_drops_the_common_neurons_and_keeps_the_facts_own(files) -> None:
    model = LlamaForCausalLM.from_pretrained(files["model"]).eval()
    common = {"model": str(files["model"]), "prompts": files["prompts"], "background": files["background"],
              "top_k": 3, "draws": 2, "layers": "1"}
    plain, root = files["root"] / "plain", files["root"]
    run("locate", **common, out=plain)
    assert selected(plain)[:2] == COMMON and OWN in selected(plain)
    for rule in ("contrast", "inverse-frequency"):
        folder = root / rule
        run("locate", **common, selection=rule, out=folder)
        chosen = selected(folder)
        assert chosen[0] == OWN and not set(COMMON) & set(chosen), rule
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["selection"]["rule"] == rule and metrics["background_prompts_scored"] == len(BACKGROUND)
        assert (folder / "background_scores.safetensors").exists()
        table = metrics["specificity"]
        # the figures in metrics.json equal forwards with the selection zeroed by plain hooks
        assert table["target prompts"]["median change"] == pytest.approx(median_change(model, None, chosen), rel=1e-4)
        for group in ("same template", "other templates"):
            row = table[f"background: {group}"]
            assert row["prompts"] == sum(r["group"] == group for r in BACKGROUND)
            assert row["median change"] == pytest.approx(median_change(model, group, chosen), rel=1e-4, abs=1e-9)
            assert row["random median change"] is not None
    plain_table = json.loads((plain / "metrics.json").read_text())["specificity"]
    run("locate", **{**common, "top_k": 1}, selection="contrast", out=root / "own")
    assert selected(root / "own") == [OWN]
    specific_table = json.loads((root / "own" / "metrics.json").read_text())["specificity"]
    assert plain_table["background: same template"]["median change"] < -0.5  # the template's neurons hit every fact
    # the fact's own neuron moves other facts' answers only through the final norm: far less than the template's
    assert abs(specific_table["background: same template"]["median change"]) < 0.5
    assert specific_table["target prompts"]["median change"] < -0.2  # the fact's own neuron still moves its answer
    assert "specificity (x0 at the last position" in (root / "own" / "summary.txt").read_text()


def test_plain_locate_without_background_scores_only_its_prompts(files) -> None:
    folder = files["root"] / "quiet"
    result = run("locate", model=str(files["model"]), prompts=files["prompts"], top_k=3, specificity=False,
                 out=folder)
    assert result.metrics["background_prompts_scored"] == 0 and "specificity" not in result.metrics
    assert not (folder / "specificity.json").exists() and not (folder / "background_scores.safetensors").exists()


def test_intervene_reports_each_group_as_computed_by_hand(files) -> None:
    model = LlamaForCausalLM.from_pretrained(files["model"]).eval()
    neurons = [COMMON[0], OWN]
    out = files["root"] / "intervene"
    result = run("intervene", model=str(files["model"]), prompts=files["prompts"], background=files["background"],
                 neurons="1:3,1:11", mode="suppress", draws=1, out=out)
    table = json.loads((out / "metrics.json").read_text())["specificity"]
    assert table == result.metrics["specificity"]
    assert table["target prompts"]["median change"] == pytest.approx(median_change(model, None, neurons), rel=1e-4)
    for group in ("same template", "other templates"):
        assert table[f"background: {group}"]["median change"] == pytest.approx(
            median_change(model, group, neurons), rel=1e-4, abs=1e-9)
    saved = json.loads((out / "specificity.json").read_text())["suppress"]
    assert saved["n_neurons"] == 2 and saved["n_random"] == 1
    assert any(line.startswith("specificity (") for line in result.lines)
    assert "background: same template" in (out / "report.html").read_text()


def test_edit_make_measures_locality_before_saving(files) -> None:
    model = LlamaForCausalLM.from_pretrained(files["model"]).eval()
    out = files["root"] / "edit"
    run("edit make", model=str(files["model"]), neurons="1:11", kind="erase", prompts=files["prompts"],
        background=files["background"], draws=0, out=out)
    table = json.loads((out / "metrics.json").read_text())["specificity"]
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[:, OWN[1]] = 0.0
    original = LlamaForCausalLM.from_pretrained(files["model"]).eval()

    def by_hand(rows: list[dict]) -> float:
        return statistics.median((probability(model, r["prompt"], r["target"])
                                  - probability(original, r["prompt"], r["target"]))
                                 / probability(original, r["prompt"], r["target"]) for r in rows)

    assert table["target prompts"]["median change"] == pytest.approx(by_hand([TARGET]), rel=1e-4)
    others = [r for r in BACKGROUND if r["group"] == "other templates"]
    assert table["background: other templates"]["median change"] == pytest.approx(by_hand(others), rel=1e-4,
                                                                                  abs=1e-9)
    assert (out / "edit.safetensors").exists() and (out / "specificity.json").exists()


def test_paraphrase_selection_keeps_neurons_in_most_prompts_top_sets(files) -> None:
    from neuronscope.results.scores import NeuronScores

    prompts = files["root"] / "paraphrases.jsonl"
    rows = [TARGET, {"prompt": "the capital of france is the city", "target": "paris"},
            {"prompt": "capital of france is", "target": "paris"}]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    folder = files["root"] / "paraphrase"
    result = run("locate", model=str(files["model"]), prompts=prompts, selection="paraphrase", top_k=5,
                 specificity=False, out=folder)
    scores = NeuronScores.load(folder / "scores").dense()[:, 0].double()  # [3 prompts, layers, d_ff]
    in_top = (scores > 0.2 * scores.amax(dim=(1, 2), keepdim=True)).sum(0) >= 2  # more than half of 3
    mean = scores.mean(0)
    want = sorted(((float(mean[layer, i]), layer, i) for layer, i in in_top.nonzero().tolist()),
                  key=lambda t: (-t[0], t[1], t[2]))
    assert selected(folder) == [(layer, i) for _, layer, i in want[:5]]
    assert result.metrics["selection"] == {"name": "paraphrase", "rule": "plain", "strength": 1.0, "agreement": 2,
                                           "membership": 0.2}
