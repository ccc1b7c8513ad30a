"""Slot decoding (continuous batching, prefill in the decode calls) against the batched static decoder and
transformers' ``model.generate``: the same tokens, stops and pads, the same sites at every new token's producing
position, whatever the slots and chunk (prompts split over calls, several prompts in one call). The plan alone is
checked in ``test_slot_schedule.py``. The CUDA-graph replay is compared on the GPU (``benchmarks/bench_checks.py``)."""

from __future__ import annotations

import pytest
import torch

from helpers.pipeline_vlms import chat_vlm
from helpers.tiny_models import random_batch, tiny_text_model
from helpers.tiny_vlms import gradient_image
from neuronscope.inputs import Batch, encode_images, generate
from neuronscope.models import get_adapter
from neuronscope.trace.decode import buffered_generate
from neuronscope.trace.slot_decode import chunk_for, slot_blocker, slot_buffered_generate


class _Tokens:
    pad_token_id, eos_token_id = 0, 2

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in row) for row in rows]


def _text(family: str, rows: int = 5) -> tuple[torch.nn.Module, Batch]:
    model = tiny_text_model(family, seed=3)
    inputs = random_batch(batch=rows, length=7, seed=5, left_pad=(0, 3, 1, 5, 2)[:rows])
    return model, Batch(inputs, ["?"] * rows, inputs["attention_mask"].sum(-1))


def test_the_chunk_reads_a_prompt_while_a_slot_decodes():
    assert chunk_for(4, 600, 20) == 128
    assert chunk_for(1, 20, 20) == 32  # at least one bucket, at most the prompt rounded up
    assert chunk_for(8, 40, 2) == 64


def _compare(model, processor, batch, steps, slots, chunk, **options):
    adapter = get_adapter(model)
    sites = {"neuron": range(adapter.n_layers), "resid_post": [adapter.n_layers - 1]}
    expected, kept = buffered_generate(model, processor, batch, sites, steps, graphs=False, **options)
    assert slot_blocker(model, batch, options) is None
    got, buffers = slot_buffered_generate(model, processor, batch, sites, steps, slots=slots, chunk=chunk, **options)
    assert torch.equal(got.sequences, expected.sequences)
    assert got.prompt_len == expected.prompt_len and got.texts == expected.texts
    # a step after a prompt's end-of-sequence token is not run (the batched decoding runs it on padding)
    eos = model.generation_config.eos_token_id
    stopped = torch.isin(got.tokens, torch.tensor([eos] if isinstance(eos, int) else (eos or []))).long()
    ran = (stopped.cumsum(1) - stopped) == 0  # [rows, steps]: up to and with the first stop
    for site, layers in sites.items():
        for layer in layers:
            produced = buffers.get(site, layer)[:, :ran.shape[1]]
            torch.testing.assert_close(produced[ran], kept.get(site, layer)[:, :ran.shape[1]][ran], rtol=1e-10,
                                       atol=1e-12)
            assert not produced[~ran].any()  # not the activations of the slot's earlier prompt
    return got


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2", "olmo2"])
@pytest.mark.parametrize("slots,chunk", [(2, 4), (3, 16), (5, 3)])
def test_tokens_and_sites_equal_the_batched_decoding(family, slots, chunk):
    model, batch = _text(family)
    model.to(torch.float64)
    _compare(model, _Tokens(), batch, 6, slots, chunk)


def test_min_new_tokens_and_suppressed_tokens_act_as_in_generate():
    model, batch = _text("llama")
    model.to(torch.float64)
    got = _compare(model, _Tokens(), batch, 7, 2, 5, min_new_tokens=5, suppress_tokens=[5, 9])
    assert torch.equal(got.sequences, generate(model, _Tokens(), batch, max_new_tokens=7, min_new_tokens=5,
                                               suppress_tokens=[5, 9]).sequences)


def test_prompts_that_stop_are_padded_and_their_slots_taken_by_the_next():
    model, batch = _text("llama")
    model.to(torch.float64)
    free = generate(model, _Tokens(), batch, max_new_tokens=8).tokens
    for eos in ([int(t) for t in free[:, 3]], [int(t) for t in free[:, 1]], int(free[0, 5]), [int(t) for t in
                                                                                              free[:, 0]]):
        model.generation_config.eos_token_id = eos
        got = _compare(model, _Tokens(), batch, 8, 2, 4)
        assert torch.equal(got.sequences, generate(model, _Tokens(), batch, max_new_tokens=8).sequences), eos


def test_a_vision_language_model_through_its_image_features():
    vlm = chat_vlm("llava", seed=1)
    model, processor = vlm.model.to(torch.float64), vlm.processor
    images = [gradient_image(40, 30), gradient_image(30, 40).rotate(90), gradient_image(36, 36),
              gradient_image(40, 30).rotate(180)]
    batch = encode_images(processor, images, "Describe it.", assistant_prefix="An image of")
    got = _compare(model, processor, batch, 6, 2, 16)
    assert torch.equal(got.sequences, generate(model, processor, batch, max_new_tokens=6).sequences)


def test_what_it_cannot_decode_is_refused_in_one_line():
    model, batch = _text("gemma3_text")
    assert "cache layers" in slot_blocker(model, batch, {})
    with pytest.raises(ValueError, match="buffered_generate"):
        slot_buffered_generate(model, _Tokens(), batch, {"neuron": [0]}, 4, slots=2)


def test_auto_decodes_batched_while_the_cache_fits_and_through_the_slots_that_fit_otherwise():
    from neuronscope.trace.slot_decode import slot_choice, slots_that_fit

    assert slots_that_fit(rows=16, per_prompt=100, free=16 * 150) is None
    assert slots_that_fit(rows=16, per_prompt=100, free=16 * 150 - 1) == 15
    assert slots_that_fit(rows=16, per_prompt=100, free=460) == 3
    assert slots_that_fit(rows=16, per_prompt=100, free=10) == 1
    model, batch = _text("llama")
    assert slot_choice(model, batch, 4, "auto", {}) is None  # on a CPU: batched
    assert slot_choice(model, batch, 4, 3, {}) == 3 and slot_choice(model, batch, 4, 9, {}) == 5
    assert slot_choice(model, batch, 4, None, {}) is None
    with pytest.raises(ValueError, match="positive count"):
        slot_choice(model, batch, 4, 0, {})


def test_an_intervention_at_chosen_positions_keeps_the_batched_decoding():
    from neuronscope.trace import intervene, suppress
    from neuronscope.trace.slot_decode import slot_choice

    model, batch = _text("llama")
    neurons = torch.tensor([[0, 1], [1, 2]])
    with intervene(model, suppress(neurons, positions=[1, 2])):  # positions of a prompt, not rows of a packed call
        assert "not graph-safe" in slot_blocker(model, batch, {})
        with pytest.raises(ValueError, match="not graph-safe"):
            slot_buffered_generate(model, _Tokens(), batch, {"neuron": [0]}, 4, slots=2)
    with intervene(model, suppress(neurons, positions="all")):  # every position: the same in a packed call
        assert slot_blocker(model, batch, {}) is None
        _compare(model.to(torch.float64), _Tokens(), batch, 5, 2, 4)
    assert slot_choice(model, batch, 4, "auto", {}) is None


def test_a_vision_language_model_whose_tower_keeps_another_dtype():
    """The pool of prompt embeddings takes the decoder's dtype, not the first parameter's (the vision tower's)."""
    vlm = chat_vlm("llava", seed=1)
    model, processor = vlm.model.to(torch.bfloat16), vlm.processor
    model.model.vision_tower.to(torch.float32)
    model.model.multi_modal_projector.to(torch.float32)
    images = [gradient_image(40, 30), gradient_image(36, 36), gradient_image(20, 50)]
    batch = encode_images(processor, images, "Describe it.", assistant_prefix="An image of")
    got, _ = slot_buffered_generate(model, processor, batch, {"neuron": [0]}, 4, slots=2, chunk=16)
    assert torch.equal(got.sequences, buffered_generate(model, processor, batch, {"neuron": [0]}, 4,
                                                        graphs=False)[0].sequences)


def test_no_slot_or_no_prompt_row_is_refused():
    model, batch = _text("llama")
    for slots, chunk in ((0, 8), (2, 0)):
        with pytest.raises(ValueError, match="at least one slot and one prompt row"):
            slot_buffered_generate(model, _Tokens(), batch, {"neuron": [0]}, 4, slots=slots, chunk=chunk)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2"])
def test_the_cache_estimate_is_what_a_cache_of_the_model_holds(family):
    from neuronscope.trace.last_step import returned_cache
    from neuronscope.trace.slot_decode import cache_bytes

    model, batch = _text(family)
    out = model(input_ids=batch.input_ids[:1], use_cache=True)
    held = sum(tensor.numel() * tensor.element_size() for layer in returned_cache(out).layers
               for tensor in (layer.keys, layer.values))
    assert cache_bytes(model, batch.seq_len) == held


def test_stops_read_two_calls_late_give_the_same_tokens(monkeypatch):
    """On a GPU the host learns that a prompt stopped two calls late; forced here on the CPU: the slot keeps
    decoding padding meanwhile, and is taken by the next prompt only then."""
    from neuronscope.trace import slot_decode
    from neuronscope.trace.greedy_choice import LateReads

    original = slot_decode._LateStops.__init__

    def lagged(self, packed, lag=2):
        original(self, packed, lag)
        self.reads = LateReads(lag)

    monkeypatch.setattr(slot_decode._LateStops, "__init__", lagged)
    model, batch = _text("llama")
    model.to(torch.float64)
    free = generate(model, _Tokens(), batch, max_new_tokens=8).tokens
    for eos in ([int(t) for t in free[:, 3]], int(free[0, 5]), [int(t) for t in free[:, 0]]):
        model.generation_config.eos_token_id = eos
        got, _ = slot_buffered_generate(model, _Tokens(), batch, {"neuron": [0]}, 8, slots=2, chunk=4)
        assert torch.equal(got.sequences, generate(model, _Tokens(), batch, max_new_tokens=8).sequences), eos
