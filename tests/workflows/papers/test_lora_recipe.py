"""``recipe lora`` on the real tiny stories260k Llama, a few steps: its accuracies == one prompt at a time by plain
argmax (the base model, a LoRA retrained from split.json with the same seed, and a copy with the pruned neurons'
down_proj columns zeroed); the keep-sets sit in the pruned layers with the asked count; answer tokens by hand."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from neuronscope.errors import NeuronscopeError, OptionError
from neuronscope.inputs import encode_prompts
from neuronscope.measure.pruning import deep_layers
from neuronscope.models import get_adapter
from neuronscope.workflows.papers.lora import answer_token, arithmetic_prompts, run_lora
from neuronscope.workflows.specs.papers import LoRAOptions

pytest.importorskip("peft")

SETTINGS = {"limit": 6, "rank": 2, "steps": 4, "learning_rate": 2e-2, "top_k": 5, "keep_fraction": 0.25,
            "n_random": 1, "seed": 2}


def _one_by_one(model, tokenizer, pairs) -> float:
    right = 0
    with torch.no_grad():
        for prompt, answer in pairs:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]])
            right += int(model(input_ids=ids).logits[0, -1].argmax()) == answer_token(tokenizer, prompt, answer)
    return right / len(pairs)


@pytest.fixture(scope="module")
def recipe(stories260k, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    metrics = run_lora(out, model=stories260k, **SETTINGS)
    return out, metrics


def test_accuracies_equal_plain_runs(recipe, stories260k):
    from neuronscope.inputs.targets import token_targets
    from neuronscope.measure.lora import train_lora

    out, metrics = recipe
    model, tokenizer = stories260k.model, stories260k.tokenizer
    split = json.loads((out / "split.json").read_text())
    train, test = [tuple(p) for p in split["train"]], [tuple(p) for p in split["test"]]
    assert len(train) == len(test) == SETTINGS["limit"] and metrics["n_test"] == SETTINGS["limit"]
    assert metrics["base_test"] == pytest.approx(_one_by_one(model, tokenizer, test))
    assert metrics["base_train"] == pytest.approx(_one_by_one(model, tokenizer, train))
    batch = encode_prompts(tokenizer, [p for p, _ in train], model=model)
    targets = token_targets(batch, [answer_token(tokenizer, p, a) for p, a in train])
    tuned = train_lora(model, batch, targets, rank=2, steps=4, learning_rate=2e-2, seed=2)
    assert metrics["lora_test"] == pytest.approx(_one_by_one(tuned.model, tokenizer, test))
    losses = [float(line.split(",")[1]) for line in (out / "tables/lora_losses.csv").read_text().splitlines()[1:]]
    assert losses == pytest.approx(tuned.losses, rel=1e-4)


def test_pruned_accuracy_equals_zeroed_columns(recipe, stories260k):
    out, metrics = recipe
    model, tokenizer = stories260k.model, stories260k.tokenizer
    adapter = get_adapter(model)
    kept = json.loads((out / "pruning_kept.json").read_text())
    layers = deep_layers(adapter.n_layers, 0.25)
    assert kept["layers"] == layers
    test = [tuple(p) for p in json.loads((out / "split.json").read_text())["test"]]
    for row in metrics["pruning"]:
        neurons = kept[row["keep_set"]]
        assert len(neurons) == row["kept"] == round(0.25 * len(layers) * adapter.d_ff)
        assert all(layer in layers for layer, _ in neurons)
        zeroed = copy.deepcopy(model)
        with torch.no_grad():
            for layer in layers:
                keep = {index for l_, index in neurons if l_ == layer}
                drop = [i for i in range(adapter.d_ff) if i not in keep]
                zeroed.model.layers[layer].mlp.down_proj.weight[:, drop] = 0
        assert row["accuracy_pruned"] == pytest.approx(_one_by_one(zeroed, tokenizer, test))
    assert [row["keep_set"] for row in metrics["pruning"]] == ["cna", "random 0"]
    assert (out / "plots/pruning_accuracy.png").is_file() and (out / "tables/lora_top_neurons.csv").is_file()
    assert "pruning.csv" in (out / "report.html").read_text()


def test_prompts_and_answer_tokens_by_hand(stories260k):
    pairs = arithmetic_prompts()
    assert len(pairs) == 110 and ("9-4=", "5") in pairs and ("4+5=", "9") in pairs
    assert all(0 <= int(a) <= 9 for _, a in pairs)
    tokenizer = stories260k.tokenizer
    full, head = tokenizer("3+4=7", add_special_tokens=False)["input_ids"], tokenizer("3+4=", add_special_tokens=False)["input_ids"]
    assert answer_token(tokenizer, "3+4=", "7") == full[len(head)]
    assert len({answer_token(tokenizer, p, a) for p, a in pairs}) == 10


def test_bad_options(tmp_path):
    with pytest.raises(OptionError, match="keep-fraction"):
        LoRAOptions(out=tmp_path / "x", keep_fraction=0.0)
    with pytest.raises(OptionError, match="limit"):
        LoRAOptions(out=tmp_path / "x", limit=1)
    with pytest.raises(NeuronscopeError, match="limit"):
        run_lora(tmp_path / "y", model=object(), limit=1)


def test_cli_without_peft_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    import sys

    from click.testing import CliRunner

    from neuronscope.cli.main import app

    monkeypatch.setitem(sys.modules, "peft", None)
    result = CliRunner().invoke(app, ["recipe", "lora", "--out", str(tmp_path / "lora")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and "neuronscope[lora]" in result.stderr
    assert not (tmp_path / "lora").exists()
