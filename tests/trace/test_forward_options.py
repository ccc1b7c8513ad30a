"""Forward options of an activations-only forward (trace/forward_options.py)."""

from __future__ import annotations

import torch

from helpers.tiny_models import tiny_text_model
from neuronscope.trace.forward_options import activations_only, takes_logits_to_keep


def test_a_causal_lm_keeps_one_positions_logits_and_no_cache():
    model = tiny_text_model("llama")
    assert takes_logits_to_keep(model)
    options = activations_only(model)
    assert options == {"use_cache": False, "logits_to_keep": 1}
    ids = torch.randint(3, 40, (2, 9))
    out = model(input_ids=ids, **options)
    assert out.logits.shape[1] == 1 and out.past_key_values is None
    torch.testing.assert_close(out.logits[:, -1], model(input_ids=ids).logits[:, -1])


def test_a_forward_without_the_option_gets_only_the_cache_switch():
    class Plain(torch.nn.Module):
        def forward(self, input_ids, use_cache=None):
            return input_ids

    assert not takes_logits_to_keep(Plain())
    assert activations_only(Plain()) == {"use_cache": False}


def test_the_attention_implementation_is_the_language_models_own():
    from helpers.pipeline_vlms import chat_vlm
    from neuronscope.models import get_adapter, lookup
    from neuronscope.trace.forward_options import attention_implementation, text_config

    model = tiny_text_model("llama")
    assert text_config(model) is model.config and lookup.text_config(model.config) is model.config
    model.config._attn_implementation = "eager"
    assert attention_implementation(model) == "eager"
    vlm = chat_vlm("llava", seed=1).model
    assert text_config(vlm) is vlm.config.text_config is lookup.text_config(vlm.config)
    assert get_adapter(vlm).text_config is vlm.config.text_config
    vlm.config.text_config._attn_implementation = "sdpa"
    assert attention_implementation(vlm) == "sdpa"
