"""Adapters on tiny random models of every family: sizes, value vectors, heads, final norm, unembedding."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import TEXT_FAMILIES, random_batch, tiny_text_model
from helpers.tiny_vlms import FAMILIES as VLM_FAMILIES
from helpers.tiny_vlms import build_tiny_vlm, gradient_image
from neuronscope.errors import UnsupportedModelError
from neuronscope.models import ModelAdapter, get_adapter, supported_families
from neuronscope.trace import capture


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_text_adapter_sizes_and_final_norm(family):
    model = tiny_text_model(family)
    adapter = get_adapter(model)
    assert adapter.n_layers == 2 and adapter.d_model == 16
    assert adapter.d_ff == (64 if family == "gpt2" else 24)  # GPT-2's FFN is 4 x d_model
    assert adapter.value_vectors(1).shape == (adapter.d_ff, 16)
    assert adapter.n_heads * adapter.head_dim == adapter.attn_output_weight(0).shape[0]
    # The probed final norm reproduces the module on a random residual.
    residual = torch.randn(3, 16)
    norm = adapter.final_norm()
    frozen = norm.frozen(residual, norm.scale(residual))
    torch.testing.assert_close(frozen, adapter.final_norm_module(residual).float(), rtol=1e-4, atol=1e-5)
    # logits_from_residual == the model's own logits from its last hidden state.
    batch = random_batch(batch=1, length=4)
    with torch.no_grad(), capture(model, sites="resid_post", layers=-1) as acts:
        logits = model(**batch).logits[:, -1]
    torch.testing.assert_close(adapter.logits_from_residual(acts.get("resid_post")[:, 0]), logits)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_vision_language_adapter_finds_the_language_model(family):
    vlm = build_tiny_vlm(family)
    adapter = get_adapter(vlm.model)
    assert adapter.vision is not None and adapter.vision.name.startswith(family.split("_5")[0][:5])
    assert adapter.vision.spatial_map == (family != "instructblip")
    batch = vlm.inputs([gradient_image(40, 40)])
    with torch.no_grad(), capture(vlm.model, layers=[0], positions="last") as acts:
        out = vlm.model(**batch)
    assert acts.get("neuron", 0).shape == (1, 1, adapter.d_ff)
    # The captured last-position FFN input reproduces the logits through value vectors + rest of the model:
    assert out.logits.shape[-1] == adapter.vocab_size


def test_unsupported_model_names_the_families():
    class Weird(torch.nn.Module):
        config = type("Cfg", (), {"model_type": "weirdnet"})()

    with pytest.raises(UnsupportedModelError) as info:
        ModelAdapter(Weird())
    message = str(info.value)
    assert "weirdnet" in message and "llama" in message and "families/" in message


def test_generic_fallback_adapts_an_unknown_llama_like_family():
    model = tiny_text_model("llama")
    model.config.model_type = "my_new_llama"
    adapter = ModelAdapter(model)
    assert adapter.family.name == "generic:my_new_llama"
    assert adapter.family.down == "mlp.down_proj" and adapter.family.attn_out == "self_attn.o_proj"


def test_supported_families_listed():
    names = supported_families()
    for name in ("llama", "gpt2", "gpt_neox", "phi3", "olmo2", "gemma2", "llava", "qwen2_vl", "instructblip",
                 "mixtral", "qwen3_moe", "deepseek_v3", "gpt_oss", "llama4_text", "qwen3_vl_moe"):
        assert name in names
