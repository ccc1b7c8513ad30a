"""``prune`` and ``query-neurons`` on a tiny saved Llama: the kept set == the top of the LPI summed over prompts by
brute force (plain hooks), the pruned accuracy == a copy with the other neurons' down_proj columns zeroed, one
prompt at a time; the query scores == the library's scores of each prompt alone, summed (batched == one by one),
and the query-only / query-value split == membership in the brute-force LPI's top neurons."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from helpers.lpi_by_hand import hand_lpi, hand_sigma
from helpers.word_models import save_tiny_llama
from neuronscope import run
from neuronscope.attribute.query_neurons import summed_query_neuron_scores
from neuronscope.errors import OptionError
from neuronscope.inputs import encode_prompts
from neuronscope.inputs.targets import token_targets

PROMPTS = ["the capital of france is", "the colour of the sky is", "the cat and the dog", "grass is"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = save_tiny_llama(tmp_path_factory.mktemp("tiny"))
    return folder, LlamaForCausalLM.from_pretrained(folder).eval(), PreTrainedTokenizerFast.from_pretrained(folder)


def _one(model, tokenizer, prompt):
    batch = encode_prompts(tokenizer, [prompt], model=model)
    with torch.no_grad():
        logits = model(**batch.inputs).logits[0, -1]
    return batch, int(logits.argmax())


def _hand_grid(model, tokenizer) -> torch.Tensor:
    """[layers, d_ff] LPI of every neuron for each prompt's own prediction, summed over the prompts."""
    total = 0
    for prompt in PROMPTS:
        batch, token = _one(model, tokenizer, prompt)
        sigma = hand_sigma(model, batch)
        total = total + torch.stack([hand_lpi(model, batch, [token], layer, sigma)[0] for layer in range(2)])
    return total


def test_prune_keeps_the_brute_force_top_and_measures_zeroed_columns(tiny, tmp_path):
    folder, model, tokenizer = tiny
    out = tmp_path / "prune"
    run("prune", model=str(folder), prompt=PROMPTS, keep=[3, 12], n_random=2, out=out)
    data = json.loads((out / "pruning.json").read_text())
    assert data["layers"] == [1] and data["full_accuracy"] == 1.0
    grid = _hand_grid(model, tokenizer)
    for point in data["points"]:
        count = point["keep"]
        expected = torch.sort(-grid[1].double(), stable=True).indices[:count].tolist()
        assert sorted(index for _, index in point["kept"]) == sorted(expected)
        zeroed = copy.deepcopy(model)
        with torch.no_grad():
            zeroed.model.layers[1].mlp.down_proj.weight[:, [i for i in range(24) if i not in expected]] = 0
        hits = [int(zeroed(**_one(model, tokenizer, p)[0].inputs).logits[0, -1].argmax()) == _one(model, tokenizer, p)[1]
                for p in PROMPTS]
        assert point["accuracy"] == pytest.approx(sum(hits) / len(hits))
        assert len(point["random_kept"]) == 2 and all(len(s) == count and all(l_ == 1 for l_, _ in s)
                                                      for s in point["random_kept"])
    rows = list(csv.DictReader((out / "tables/pruning.csv").open()))
    assert [int(r["keep"]) for r in rows] == [3, 12] and (out / "plots/pruning_accuracy.png").is_file()
    assert "pruning.csv" in (out / "report.html").read_text()


def test_query_neurons_sum_of_single_prompts_and_split(tiny, tmp_path):
    folder, model, tokenizer = tiny
    out = tmp_path / "query"
    run("query-neurons", model=str(folder), prompt=PROMPTS, top_values=3, top_k=6, value_k=8, out=out)
    rows = list(csv.DictReader((out / "tables/query_neurons.csv").open()))
    alone = 0
    for prompt in PROMPTS:
        batch, token = _one(model, tokenizer, prompt)
        found = summed_query_neuron_scores(model, batch, token_targets(batch, [token]), top_values=3)
        alone = alone + found.scores.values[0, 0]
    order = torch.sort(-alone.reshape(-1).double(), stable=True).indices[:6]
    assert [(int(r["layer"]), int(r["index"])) for r in rows] == [(int(i) // 24, int(i) % 24) for i in order]
    for row in rows:
        assert float(row["query_score"]) == pytest.approx(float(alone[int(row["layer"]), int(row["index"])]),
                                                          rel=1e-4, abs=1e-6)
    grid = _hand_grid(model, tokenizer)
    top_values = {(int(i) // 24, int(i) % 24) for i in torch.sort(-grid.reshape(-1).double(), stable=True).indices[:8]}
    for row in rows:
        assert float(row["own_lpi"]) == pytest.approx(float(grid[int(row["layer"]), int(row["index"])]), abs=1e-5)
        assert row["kind"] == ("query-value" if (int(row["layer"]), int(row["index"])) in top_values else "query-only")
    assert (out / "tables/value_neurons.csv").is_file() and (out / "plots/query_neuron_layers.png").is_file()


def test_bad_options(tmp_path):
    with pytest.raises(OptionError, match="no prompts"):
        run("prune", model="x", out=tmp_path / "p")
    with pytest.raises(OptionError, match="--method"):
        run("prune", model="x", prompt=["a"], method="nope", out=tmp_path / "p")
    with pytest.raises(OptionError, match="--out"):
        run("query-neurons", model="x", prompt=["a"])
    assert not (tmp_path / "p").exists()
