"""``workflows.common.load``: ``--text-only`` builds the model's adapter for text-only scoring, so a
vision-language model whose image tokens have no layout reader loads for the text workflows (and is refused
without the flag)."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from helpers.tiny_vlms import _tiny_clip_vision, _tiny_llama
from neuronscope.errors import UnsupportedModelError
from neuronscope.models import get_adapter
from neuronscope.models.loading import LoadedModel
from neuronscope.workflows.common import load
from neuronscope.workflows.options import ModelOptions


def _vipllava() -> torch.nn.Module:  # a VLM family without a layout reader (text-only in `neuronscope models`)
    config = T.VipLlavaConfig(vision_config=_tiny_clip_vision(32, 8), text_config=_tiny_llama(64, 0),
                              image_token_index=5)
    return T.VipLlavaForConditionalGeneration(config).eval()


def test_text_only_option_builds_a_text_only_adapter():
    model = _vipllava()
    loaded = load(ModelOptions(text_only=True), LoadedModel(model, None, "tiny-vipllava"))
    assert loaded.model is model
    adapter = get_adapter(model)  # what every workflow step calls afterwards
    assert adapter.text_only and adapter.vision is None and adapter.family.name == "llama"


def test_without_the_option_the_vlm_is_refused_naming_it():
    model = _vipllava()
    load(ModelOptions(), LoadedModel(model, None, "tiny-vipllava"))
    with pytest.raises(UnsupportedModelError, match="text_only"):
        get_adapter(model)
    assert ModelOptions().text_only is False
