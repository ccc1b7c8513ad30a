"""``recipe base-vs-vlm`` on a tiny test pair (a tiny LLaVA and a Llama holding a copy of its language model):
an identical pair gives CNA 0 and full agreement; a VLM whose neurons were changed gives CNA == the LPI difference
computed separately in each model; the text model copied out of a LLaVA gives the same logits."""

from __future__ import annotations

import csv

import pytest
import torch

from helpers.pipeline_vlms import chat_vlm
from neuronscope.attribute.log_probability_increase import log_probability_increase
from neuronscope.bundled.base_lm import text_model_of
from neuronscope.errors import OptionError
from neuronscope.inputs import encode_prompts
from neuronscope.inputs.targets import token_targets
from neuronscope.workflows import run
from neuronscope.workflows.specs.vision import BaseVsVLMOptions

PROMPTS = ["ab cd", "the sky", "hello"]


def _pair(tmp_path, amplified=()):
    vlm = chat_vlm("llava", seed=6)
    base = text_model_of(vlm.model)
    base.save_pretrained(tmp_path / "base")
    vlm.processor.tokenizer.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        for layer, index in amplified:
            vlm.model.model.language_model.layers[layer].mlp.down_proj.weight[:, index] *= 4.0
    vlm.model.save_pretrained(tmp_path / "vlm")
    vlm.processor.save_pretrained(tmp_path / "vlm")
    return vlm, base


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_copied_text_model_gives_the_llavas_logits():
    vlm = chat_vlm("llava", seed=6)
    text = text_model_of(vlm.model)
    batch = encode_prompts(vlm.processor.tokenizer, PROMPTS, model=text)
    with torch.no_grad():
        assert torch.equal(text(**batch.inputs).logits, vlm.model(**batch.inputs).logits)


def test_an_identical_pair_agrees_fully(tmp_path):
    _pair(tmp_path)
    result = run("recipe base-vs-vlm", model=str(tmp_path / "vlm"), base_model=str(tmp_path / "base"),
                 prompt=PROMPTS, top_k=5, out=tmp_path / "cna")
    assert result.metrics["neurons"]["top_overlap"] == 1.0 and result.metrics["heads"]["top_overlap"] == 1.0
    assert result.metrics["neurons"]["spearman"] == pytest.approx(1.0)
    assert result.metrics["base_accuracy"] == result.metrics["vlm_accuracy"] == 1.0  # targets: base's prediction
    assert all(float(row["cna"]) == 0.0 for row in _read(tmp_path / "cna" / "tables" / "cna_neurons.csv"))


def _base_sigma(model, batch) -> torch.Tensor:
    """RMS of the final norm's input at the last position, by a plain pre-hook on the stock module: ``[1, 1]``."""
    captured = {}
    norm = model.model.norm
    handle = norm.register_forward_pre_hook(lambda module, args: captured.__setitem__("x", args[0][0, -1].double()))
    try:
        with torch.no_grad():
            model(**batch.inputs)
    finally:
        handle.remove()
    return torch.sqrt(captured["x"].pow(2).mean() + norm.variance_epsilon).reshape(1, 1)


def test_cna_equals_the_lpi_difference_computed_in_each_model(tmp_path):
    vlm, base = _pair(tmp_path, amplified=[(1, 3), (0, 10)])
    result = run("recipe base-vs-vlm", model=str(tmp_path / "vlm"), base_model=str(tmp_path / "base"),
                 prompt=PROMPTS, target=["a"], leading_space=False, top_k=8, out=tmp_path / "cna")
    token = vlm.processor.tokenizer.convert_tokens_to_ids("a")
    lpi_base, lpi_vlm, correct = [], [], {"base": 0, "vlm": 0}
    for prompt in PROMPTS:
        batch = encode_prompts(vlm.processor.tokenizer, prompt, model=base)
        targets = token_targets(batch, token)
        lpi_base.append(log_probability_increase(base, batch, targets).values[0, 0])
        # CNA's default reads both models at the base run's final-norm scale (the reference's): the VLM's LPI
        # here freezes its final norm at the base's σ, read off the stock norm module's input.
        lpi_vlm.append(log_probability_increase(vlm.model, batch, targets,
                                                final_scale=_base_sigma(base, batch)).values[0, 0])
        with torch.no_grad():
            correct["base"] += int(base(**batch.inputs).logits[0, -1].argmax()) == token
            correct["vlm"] += int(vlm.model(**batch.inputs).logits[0, -1].argmax()) == token
    mean_base, mean_vlm = torch.stack(lpi_base).mean(0), torch.stack(lpi_vlm).mean(0)
    rows = _read(tmp_path / "cna" / "tables" / "cna_neurons.csv")
    expected = torch.sort((mean_vlm - mean_base).flatten(), descending=True, stable=True)
    width = mean_base.shape[1]
    assert [(int(r["layer"]), int(r["index"])) for r in rows] == [
        divmod(int(i), width) for i in expected.indices[:8]]
    for row in rows:
        layer, index = int(row["layer"]), int(row["index"])
        assert float(row["cna"]) == pytest.approx(float(mean_vlm[layer, index] - mean_base[layer, index]), abs=2e-6)
        assert float(row["base_lpi"]) == pytest.approx(float(mean_base[layer, index]), abs=2e-6)
    assert result.metrics["base_accuracy"] == correct["base"] / 3 and result.metrics["vlm_accuracy"] == correct["vlm"] / 3
    assert (tmp_path / "cna" / "plots" / "top_neurons_per_layer.png").is_file()


def test_options_are_checked_before_any_model(tmp_path):
    with pytest.raises(OptionError, match="--base-model"):
        BaseVsVLMOptions(model="m", prompt=["x"], out=tmp_path / "x")
    with pytest.raises(OptionError, match="not both or neither"):
        BaseVsVLMOptions(base_model="b", out=tmp_path / "x")
    with pytest.raises(OptionError, match="not both or neither"):
        BaseVsVLMOptions(base_model="b", bundled_facts=True, prompt=["x"], out=tmp_path / "x")
    BaseVsVLMOptions(base_model="b", bundled_facts=True, out=tmp_path / "x")  # the bundled VLM is the default
