"""The greedy decoder's static cache set-up without host reads of the device (trace/static_cache.py): the first
step's mask equals the one transformers builds after a real prompt, per family, padded or not; the step counters
are made on the device with their value and dtype; a HookSet takes a call's offset from the decoder's word, not
from the device. (That the GPU no longer waits is measured by benchmarks/probe_stages.py.)"""

from __future__ import annotations

import gc

import pytest
import torch
from transformers import DynamicCache, StaticCache
from transformers.masking_utils import create_masks_for_generate

from helpers.pipeline_vlms import chat_vlm
from helpers.tiny_models import TEXT_FAMILIES, random_batch, tiny_text_model
from neuronscope.inputs import Batch
from neuronscope.models import get_adapter
from neuronscope.trace.decode import static_decode_blocker
from neuronscope.trace.forward_options import attention_implementation
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.static_cache import drive, driven_length, first_step_mask, new_static_cache


def _transformers_mask(model, inputs, steps: int) -> torch.Tensor:
    """What the decoder asked transformers for before: the first decode step's mask after the prompt's forward."""
    mask = inputs["attention_mask"]
    rows, prompt = mask.shape
    cache = StaticCache(config=model.config, max_cache_len=prompt + steps)
    position = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.no_grad():
        model(**inputs, position_ids=position, use_cache=True, past_key_values=cache)
    grown = torch.cat([mask, mask.new_ones(rows, 1)], 1)
    embeds = torch.empty((rows, 1, 0), dtype=model.dtype)
    return create_masks_for_generate(model.config, embeds, grown, cache, position[:, -1:] + 1)


@pytest.mark.parametrize("left_pad", [(0, 3, 1), ()])
@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_the_first_step_mask_is_the_one_transformers_builds_after_the_prompt(family, left_pad):
    model = tiny_text_model(family, seed=2)
    inputs = random_batch(batch=3, length=7, seed=4, left_pad=left_pad)
    batch = Batch(inputs, ["?"] * 3, inputs["attention_mask"].sum(-1))
    if static_decode_blocker(model, batch, {}) is not None or attention_implementation(model) != "sdpa":
        pytest.skip("not decoded statically under sdpa: transformers' own mask is used")
    theirs = _transformers_mask(model, inputs, steps=5)
    ours = first_step_mask(inputs["attention_mask"], 7 + 5)
    # Qwen2 / Qwen3 give one mask per attention kind (here only full attention): the decoder used to take that for
    # "no 4-D mask" and decode eagerly; the model takes the 4-D mask for each (the tokens: test_decode.py)
    for mask in theirs.values() if isinstance(theirs, dict) else [theirs]:
        assert ours.dtype == mask.dtype == torch.bool and ours.shape == mask.shape
        assert torch.equal(ours, mask)


def test_the_first_step_mask_of_a_vision_language_model_is_the_one_transformers_builds():
    vlm = chat_vlm("llava", seed=1)
    model = vlm.model
    assert attention_implementation(model) == "sdpa"
    ids = torch.randint(5, 50, (2, 6))
    inputs = {"input_ids": ids, "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])}
    assert torch.equal(first_step_mask(inputs["attention_mask"], 6 + 4), _transformers_mask(model, inputs, 4))


def test_the_step_counters_are_made_on_the_device_with_their_value_and_dtype():
    model = tiny_text_model("llama")
    plain = StaticCache(config=model.config, max_cache_len=9)
    made = new_static_cache(model.config, 9, torch.device("meta"))
    for before, layer in zip(plain.layers, made.layers, strict=True):
        assert layer.cumulative_length.device.type == "meta" and not layer.is_initialized
        assert layer.cumulative_length.dtype == before.cumulative_length.dtype
        assert layer.cumulative_length.shape == before.cumulative_length.shape
    here = new_static_cache(model.config, 9, torch.device("cpu"))  # already there: left as it is
    assert all(int(layer.cumulative_length) == 0 for layer in here.layers)


def test_a_driven_length_is_weakly_kept_and_unhashable_caches_are_never_driven():
    class Cache:
        pass

    cache = Cache()
    assert driven_length(cache) is None
    drive(cache, 7)
    assert driven_length(cache) == 7
    drive(cache, 8)
    assert driven_length(cache) == 8
    del cache
    gc.collect()

    class Unhashable:
        __hash__ = None

    odd = Unhashable()
    drive(odd, 3)
    assert driven_length(odd) is None


def test_a_hook_set_takes_the_offset_the_decoder_drives_the_cache_at():
    model = tiny_text_model("llama")
    adapter = get_adapter(model)
    ids = torch.randint(3, 60, (1, 4))
    cache = DynamicCache(config=model.config)
    with HookSet(adapter) as hooks, torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        assert hooks.call.offset == 0  # read from the cache
        model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True)
        assert hooks.call.offset == 4
        drive(cache, 11)  # the decoder's word wins over what the cache holds
        model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True)
        assert hooks.call.offset == 11
