"""``causal-effect`` on a tiny saved Llama: the continuations with the set suppressed == greedy generation of a copy
whose down_proj columns of those neurons are zeroed (one prompt at a time); rates, drop and specificity == counted
by hand on those texts; random sets have the set's size."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from helpers.word_models import save_tiny_llama
from neuronscope import run
from neuronscope.errors import OptionError

PROMPTS = ["the capital of france is", "the colour of the sky is", "the cat and the dog"]
OTHERS = [{"prompt": "grass is", "target": "green"}, {"prompt": "the sky is", "target": "blue"}]
NEURONS = [(0, 3), (1, 5), (1, 7), (1, 11)]


def _greedy(model, tokenizer, prompt, steps=6) -> str:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def _rate(texts, word) -> float:
    return sum(any(t in (word, word + "s", word + "es") for t in text.split()) for text in texts) / len(texts)


def test_continuations_equal_zeroed_columns_and_rates_by_hand(tmp_path):
    folder = save_tiny_llama(tmp_path / "tiny")
    model = LlamaForCausalLM.from_pretrained(folder).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    before = [_greedy(model, tokenizer, p) for p in PROMPTS]
    word = before[0].split()[0]  # a word the model does write
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for layer, index in NEURONS:
            zeroed.model.layers[layer].mlp.down_proj.weight[:, index] = 0
    after = [_greedy(zeroed, tokenizer, p) for p in PROMPTS]
    others = tmp_path / "others.jsonl"
    others.write_text("".join(json.dumps(r) + "\n" for r in OTHERS))
    out = tmp_path / "causal"
    run("causal-effect", model=str(folder), neurons=",".join(f"{a}:{b}" for a, b in NEURONS), prompt=PROMPTS,
        words=[word], others=others, draws=2, max_new_tokens=6, out=out)
    texts = json.loads((out / "continuations.json").read_text())
    assert texts["located"]["before"] == before and texts["located"]["after"] == after
    rows = list(csv.DictReader((out / "tables/causal_effect.csv").open()))
    assert [r["set"] for r in rows] == ["located", "random 0", "random 1"]
    assert [int(r["neurons"]) for r in rows] == [4, 4, 4]
    drop = _rate(before, word) - _rate(after, word)
    assert float(rows[0]["rate_before"]) == pytest.approx(_rate(before, word)) and _rate(before, word) > 0
    assert float(rows[0]["drop"]) == pytest.approx(drop)
    other_drops = []
    for record in OTHERS:
        b, a = _greedy(model, tokenizer, record["prompt"]), _greedy(zeroed, tokenizer, record["prompt"])
        other_drops.append(_rate([b], record["target"]) - _rate([a], record["target"]))
    assert float(rows[0]["specificity"]) == pytest.approx(drop - sum(other_drops) / 2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["random_drop_mean"] == pytest.approx((float(rows[1]["drop"]) + float(rows[2]["drop"])) / 2)
    assert (out / "plots/causal_effect.png").is_file() and "causal_effect.csv" in (out / "report.html").read_text()


def test_bad_options(tmp_path):
    with pytest.raises(OptionError, match="--words"):
        run("causal-effect", model="x", neurons="0:1", prompt=["a"], out=tmp_path / "c")
    with pytest.raises(OptionError, match="prompts"):
        run("causal-effect", model="x", neurons="0:1", words=["a"], out=tmp_path / "c")
    assert not (tmp_path / "c").exists()
