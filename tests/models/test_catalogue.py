"""The catalogue covers every model type of the installed transformers, and what it says is what the adapter does.

A new transformers release that adds a causal-LM or image-text-to-text model type makes
``test_every_installed_model_type_is_verified_or_refused`` fail until the type is verified (a spec or a layout
reader, with its tiny config in the tests) or refused with a reason.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import transformers as T
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
)

from helpers.tiny_families import CASES, VLM_ONLY, tiny_family_model
from helpers.tiny_moe import CONFIGS
from helpers.tiny_vlms import FAMILIES as OLD_VLMS
from helpers.tiny_vlms_current import FAMILIES as CURRENT_VLMS
from helpers.tiny_vlms_current import build_current_vlm
from neuronscope.errors import SiteError, UnsupportedModelError
from neuronscope.models import ModelAdapter, get_adapter
from neuronscope.models.catalogue import catalogue, format_catalogue, status_of
from neuronscope.trace import capture


def test_every_installed_model_type_is_verified_or_refused():
    installed = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    generic = sorted(t for t in installed if status_of(t).status == "generic")
    assert not generic, f"model types neither verified nor refused with a reason: {generic}"
    for row in catalogue():
        assert row.note, row


def test_verified_types_are_the_ones_the_tests_build():
    tested_text = {case.partition(":")[0] for case in CASES} | set(VLM_ONLY)
    vlm_builders = {"llava_pixtral": "llava"}
    tested_vision = {vlm_builders.get(name, name) for name in (*OLD_VLMS, *CURRENT_VLMS)}
    tested_vision |= {"blip-2", "blip_2"}  # the InstructBLIP family's reader, shared (no spatial map)
    tested_vision |= {"qwen3_vl_moe"}  # helpers.tiny_moe.tiny_qwen3_vl_moe
    # the MoE families' tiny configs (helpers.tiny_moe), by the model types of their text configs
    tested_moe = {CONFIGS[name]().model_type for name in CONFIGS}
    tested_moe |= {"llama4", "qwen3_vl_moe_text"}  # llama4_text's wrapper type; the text config of qwen3_vl_moe
    for row in catalogue():
        if row.status != "verified":
            continue
        tested = {"text": tested_text, "moe": tested_moe}.get(row.kind, tested_vision)
        assert row.model_type in tested, f"{row.model_type} is listed as verified but no test builds it"


def test_the_catalogue_imports_without_torch():
    code = "import sys, neuronscope.models.catalogue; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_format_lists_each_status():
    text = format_catalogue()
    for status in ("verified", "text-only", "refused"):
        assert f"{status} (" in text
    verified = text.split("verified (", 1)[1].split("\ntext-only (", 1)[0]
    assert "mixtral" in verified and "mixture of experts" in verified  # MoE families are covered (models/moe)
    assert "ernie4_5_moe" in text.split("refused (", 1)[1]  # an MoE family models/moe does not cover stays refused


@pytest.mark.parametrize("model_type, words", [
    ("ernie4_5_moe", ("mixture-of-experts", "moe/families.py")),
    ("opt", ("fc1",)),
    ("mamba", ("no FFN",)),
    ("doge", ("rescaled",)),
    ("bart", ("encoder-decoder",)),
])
def test_refused_types_are_refused_with_their_reason(model_type, words):
    config = T.CONFIG_MAPPING[model_type]()
    small = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=24, vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
                 decoder_attention_heads=4, encoder_attention_heads=4, decoder_ffn_dim=24, encoder_ffn_dim=24,
                 num_local_experts=2, num_experts=2, moe_intermediate_size=8, state_size=4, ffn_dim=24)
    config = type(config)(**{k: v for k, v in small.items() if hasattr(config, k)})
    model = T.AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedModelError) as info:
        ModelAdapter(model)
    assert all(word in str(info.value) for word in words), str(info.value)


def test_moe_layers_found_in_a_hybrid_are_refused_as_moe():
    config = T.Qwen3NextConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               intermediate_size=24, vocab_size=64, head_dim=4, num_experts=2,
                               moe_intermediate_size=8, shared_expert_intermediate_size=8, linear_num_key_heads=2,
                               linear_num_value_heads=2, linear_key_head_dim=4, linear_value_head_dim=4,
                               layer_types=["linear_attention", "full_attention"])
    with pytest.raises(UnsupportedModelError, match="mixture-of-experts"):
        ModelAdapter(T.AutoModelForCausalLM.from_config(config))


def test_hybrid_mixers_are_named_per_layer():
    model = tiny_family_model("nemotron_h")
    adapter = get_adapter(model)
    assert adapter.mixers == ("mamba", "none", "attention", "none")
    assert adapter.ffn_layers == [1, 3] and adapter.attention_layers == [2]
    with pytest.raises(SiteError, match="mamba"):
        with capture(model, sites="neuron", layers=[0]):
            pass
    with pytest.raises(SiteError, match="not softmax attention"):
        with capture(model, sites="attn", layers=[1]):
            pass
    with torch.no_grad(), capture(model, sites="neuron") as acts:  # all layers: the FFN layers
        model(input_ids=torch.tensor([[3, 4, 5]]))
    assert acts.layers == [1, 3]
    assert get_adapter(tiny_family_model("falcon_h1")).mixers == ("attention+mamba",) * 2
    assert set(get_adapter(tiny_family_model("lfm2")).mixers) == {"short_conv", "attention"}


def _renamed(case: str, model_type: str):
    model = tiny_family_model(case)
    model.config.model_type = model_type
    return model


def test_the_generic_fallback_accepts_only_what_it_can_check():
    adapter = ModelAdapter(_renamed("llama", "my_new_llama"))
    assert adapter.generic and adapter.family.name == "generic:my_new_llama"
    with pytest.raises(UnsupportedModelError, match="post-FFN or sandwich"):
        ModelAdapter(_renamed("gemma2", "my_new_gemma"))
    with pytest.raises(UnsupportedModelError, match="residual_multiplier"):
        ModelAdapter(_renamed("granite", "my_new_granite"))
    with pytest.raises(UnsupportedModelError, match="logit_scale"):
        ModelAdapter(_renamed("cohere", "my_new_cohere"))


def test_a_declared_readout_that_differs_from_the_model_is_refused_when_scoring():
    from neuronscope.attribute.log_probability_increase import log_probability_increase
    from neuronscope.inputs import Batch

    model = tiny_family_model("granite")
    adapter = get_adapter(model)
    object.__setattr__(adapter, "readout", type(adapter.readout)(scale=1.0))  # forget logits_scaling
    ids = torch.tensor([[3, 4, 5, 6]])
    batch = Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ["x"], torch.tensor([4]))
    with pytest.raises(UnsupportedModelError, match="not the readout"):
        log_probability_increase(model, batch)


def test_vlm_text_families_are_the_verified_specs():
    for family in CURRENT_VLMS:
        adapter = get_adapter(build_current_vlm(family).model)
        assert adapter.vision is not None and not adapter.generic, family
