"""``intervene`` on attention heads (``--heads``, ``--heads-from`` a ``recipe icl`` folder, ``--draws`` random head
sets) against plain forward pre-hooks on the stock ``o_proj`` that scale the head's slice of its input, one
unpadded prompt per forward; bad input is one ``error:`` line and exit 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import LlamaForCausalLM

import neuronscope
from helpers.icl_words import save_icl_toy
from helpers.icl_words import word_tokenizer as icl_tokenizer
from helpers.word_models import save_tiny_llama, word_tokenizer
from neuronscope.cli.main import app

PROMPTS = [("the capital of france is", "paris"), ("grass is", "green"), ("the colour of the sky is", "blue")]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("heads-llama"))


def p_by_hand(model, tokenizer, prompt: str, token_id: int, heads=(), factor: float = 0.0,
              positions: str = "last") -> float:
    """P(token | prompt) at the last position with ``heads`` [(layer, head)] multiplied by ``factor`` in
    ``o_proj``'s input (at the last position or at every position)."""
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def scale(layer_heads):
        def hook(module, args):
            x = args[0].clone()
            rows = slice(None) if positions == "all" else slice(-1, None)
            for head in layer_heads:
                x[:, rows, head * head_dim:(head + 1) * head_dim] *= factor
            return (x,)
        return hook

    handles = [model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(scale(hs))
               for layer, hs in by_layer.items()]
    try:
        with torch.no_grad():
            logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].double()
    finally:
        for handle in handles:
            handle.remove()
    return float(logits.softmax(-1)[token_id])


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("positions", ["last", "all"])
def test_intervene_heads_and_random_heads_equal_hooks_on_o_proj(tiny_llama, tmp_path, positions) -> None:
    model = LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = word_tokenizer()
    out = tmp_path / "heads"
    result = neuronscope.run("intervene", model=str(tiny_llama), heads="1.2,0.1,-1.0", prompt=[p for p, _ in PROMPTS],
                             target=[t for _, t in PROMPTS], factor=3.0, positions=positions, draws=2, seed=4, out=out)
    heads = [(1, 2), (0, 1), (1, 0)]  # -1.0 is layer 1 of 2
    assert result.metrics["heads"] == ["1.2", "0.1", "1.0"]
    rows = read_rows(out / "tables" / "intervene.csv")
    draws = result.metrics["random_suppress"]["heads"]
    assert result.metrics["random_amplify"]["heads"] == draws and len(draws) == 2
    random_sets = [[tuple(int(x) for x in head.split(".")) for head in draw] for draw in draws]
    for draw in random_sets:  # as many heads, distinct, none of the chosen ones
        assert len(draw) == len(set(draw)) == 3 and not set(draw) & set(heads)
    pcrs: dict[str, list[list[float]]] = {"suppress": [[], []], "amplify": [[], []]}
    for row, (prompt, word) in zip(rows, PROMPTS, strict=True):
        token = tokenizer.convert_tokens_to_ids(word)
        before = p_by_hand(model, tokenizer, prompt, token)
        assert float(row["p_before"]) == pytest.approx(before, rel=1e-5)
        for mode, factor in (("suppress", 0.0), ("amplify", 3.0)):
            after = p_by_hand(model, tokenizer, prompt, token, heads, factor, positions)
            assert float(row[f"p_{mode}"]) == pytest.approx(after, rel=1e-5), mode
            randoms = [p_by_hand(model, tokenizer, prompt, token, draw, factor, positions) for draw in random_sets]
            assert float(row[f"p_random_{mode}"]) == pytest.approx(sum(randoms) / 2, rel=1e-5), mode
            for d, p in enumerate(randoms):
                pcrs[mode][d].append((p - before) / before)
    for mode, per_draw in pcrs.items():
        want = [sum(values) / len(values) for values in per_draw]
        assert result.metrics[f"random_{mode}"]["pcr_per_draw"] == pytest.approx(want, abs=1e-5)
        assert result.metrics[f"random_{mode}"]["pcr_mean"] == pytest.approx(sum(want) / 2, abs=1e-5)
    assert (out / "plots" / "pcr.png").stat().st_size > 1000  # mean PCR per condition, in the report
    assert 'alt="pcr"' in (out / "report.html").read_text()


def test_intervene_heads_from_a_recipe_icl_folder(tmp_path) -> None:
    model_dir, data_dir = save_icl_toy(tmp_path / "toy")
    recipe = tmp_path / "icl"
    neuronscope.run("recipe icl", model=str(model_dir), data=data_dir, out=recipe, limit=4, draws=1,
                    n_other_dataset=0, n_eval_other=0, fractions=[0.25], n_bias=2, n_attribution=2, n_merge=2)
    metrics = json.loads((recipe / "metrics.json").read_text())
    prompts = json.loads((recipe / "prompts.json").read_text())[f"evaluate_{metrics['label_kind']}"]
    top = [tuple(head) for head in metrics["heads"]["lpi_top"][:2]]
    runner = CliRunner()
    out = tmp_path / "iv"
    done = runner.invoke(app, ["intervene", "--heads-from", str(recipe), "--top-heads", "2", "--mode", "suppress",
                               "--out", str(out)])  # the model and the prompts come from the recipe's folder
    assert done.exit_code == 0, done.output
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = icl_tokenizer()
    rows = read_rows(out / "tables" / "intervene.csv")
    assert len(rows) == len(prompts) == 4
    for row, prompt in zip(rows, prompts, strict=True):
        token = tokenizer.convert_tokens_to_ids(prompt["label_words"][prompt["query_class"]])  # the true label
        assert int(row["token_id"]) == token
        assert float(row["p_before"]) == pytest.approx(p_by_hand(model, tokenizer, prompt["text"], token), rel=1e-5)
        assert float(row["p_suppress"]) == pytest.approx(p_by_hand(model, tokenizer, prompt["text"], token, top),
                                                         rel=1e-5)
    assert json.loads((out / "metrics.json").read_text())["heads"] == [f"{layer}.{head}" for layer, head in top]


@pytest.mark.parametrize(("args", "fragment"), [
    (["--heads", "1-2"], "layer.head pairs"),
    (["--heads", "1.2,1.2"], "twice"),
    (["--heads", "1.2", "--neurons", "0:1"], "not several"),
    (["--heads", "1.2", "--mode", "zero"], "heads take suppress"),
    (["--heads", "2.0,1.9"], "2.0, 1.9 are outside the model"),
    (["--heads-from", "nowhere"], "not a finished 'neuronscope recipe icl' folder"),
])
def test_intervene_heads_bad_input(tiny_llama, tmp_path, args, fragment) -> None:
    out = tmp_path / "never"
    result = CliRunner().invoke(app, ["intervene", "-m", str(tiny_llama), "--prompt", "grass is", "--out", str(out),
                                      *[str(tmp_path / a) if a == "nowhere" else a for a in args]])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert not out.exists()
