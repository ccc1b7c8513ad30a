"""Decode steps through the compiled text decoder (``compile=``): the same tokens and per-step sites as the
uncompiled decoding, calls under other hooks (other sites, an intervention, none) honoured rather than replaying the
first call's, the decoder's forward put back, and the refusals. ``aot_eager`` compiles through dynamo and AOT
autograd without generating kernels (exact); one test compiles with inductor on the CPU."""

from __future__ import annotations

import pytest
import torch

from helpers.pipeline_vlms import chat_vlm
from helpers.tiny_models import random_batch, tiny_text_model
from helpers.tiny_vlms import gradient_image
from neuronscope.attribute.streaming import caption_contributions
from neuronscope.errors import InputError
from neuronscope.inputs import Batch, encode_images
from neuronscope.models import get_adapter
from neuronscope.trace import amplify, intervene
from neuronscope.trace.compiled_decoder import compile_backend, compiled_decoder
from neuronscope.trace.decode import buffered_generate, greedy_generate, release_kept_decoding
from neuronscope.trace.slot_decode import buffered_decode


class _Tokens:
    pad_token_id, eos_token_id = 0, 2

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in row) for row in rows]


def _text(family: str = "llama"):
    model = tiny_text_model(family, seed=3).double()
    inputs = random_batch(batch=3, length=7, seed=5, left_pad=(0, 3, 1))
    return model, Batch(inputs, ["?"] * 3, inputs["attention_mask"].sum(-1))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2"])
def test_tokens_and_sites_equal_the_uncompiled_decoding(family):
    model, batch = _text(family)
    plain, plain_buffers = buffered_generate(model, _Tokens(), batch, {"neuron": [0, 1]}, 6)
    got, buffers = buffered_generate(model, _Tokens(), batch, {"neuron": [0, 1]}, 6, compile="aot_eager")
    assert torch.equal(got.sequences, plain.sequences)
    for layer in (0, 1):
        torch.testing.assert_close(buffers.get("neuron", layer), plain_buffers.get("neuron", layer), rtol=1e-12,
                                   atol=1e-12)
    assert "forward" not in vars(get_adapter(model).decoder)  # put back after the decoding


@pytest.mark.parametrize("prompt", [True, False])
def test_the_prompt_runs_compiled_where_asked(monkeypatch, prompt):
    """``COMPILE_PROMPT``: the prompt's forward goes through the compiled decoder too (or eagerly), with the same
    tokens and sites either way; the decode steps always compiled."""
    import neuronscope.trace.compiled_decoder as compiled
    import neuronscope.trace.decode as decode

    monkeypatch.setattr(compiled, "COMPILE_PROMPT", prompt)
    model, batch = _text()
    plain, plain_buffers = buffered_generate(model, _Tokens(), batch, {"neuron": [0, 1]}, 6, graphs=False)
    decoder, through_compiled = get_adapter(model).decoder, {}
    for stage in ("_prefill", "_decode"):  # whether the decoder's compiled forward is on when each stage starts
        def spied(self, *args, _stage=stage, _original=getattr(decode._StaticDecoder, stage)):
            through_compiled[_stage] = "forward" in vars(decoder)
            return _original(self, *args)

        monkeypatch.setattr(decode._StaticDecoder, stage, spied)
    got, buffers = buffered_generate(model, _Tokens(), batch, {"neuron": [0, 1]}, 6, compile="aot_eager",
                                     graphs=False)
    assert through_compiled == {"_prefill": prompt, "_decode": True}
    assert torch.equal(got.sequences, plain.sequences)
    for layer in (0, 1):
        torch.testing.assert_close(buffers.get("neuron", layer), plain_buffers.get("neuron", layer), rtol=1e-12,
                                   atol=1e-12)


def test_a_kept_decoding_compiles_its_prompt_once(monkeypatch):
    """Kept (``keep=True``): the first call runs its prompt eagerly (it allocates the step buffers; traced with none
    it would compile again at the next call, whose buffers exist), later calls through the compiled decoder; nothing
    compiles after the second call, and every call gives the uncompiled tokens and sites."""
    import neuronscope.trace.decode as decode

    model, batch = _text()
    plain, plain_buffers = buffered_generate(model, _Tokens(), batch, {"neuron": [0, 1]}, 6)
    decoder, through_compiled = get_adapter(model).decoder, []

    def spied(self, *args, _original=decode._StaticDecoder._prefill):
        through_compiled.append("forward" in vars(decoder))
        return _original(self, *args)

    monkeypatch.setattr(decode._StaticDecoder, "_prefill", spied)
    stats, graphs = torch._dynamo.utils.counters["stats"], []
    try:
        for _ in range(4):
            got, buffers = buffered_generate(model, _Tokens(), batch, {"neuron": [0, 1]}, 6, compile="aot_eager",
                                             keep=True)
            graphs.append(stats["unique_graphs"])
            assert torch.equal(got.sequences, plain.sequences)
            for layer in (0, 1):
                torch.testing.assert_close(buffers.get("neuron", layer), plain_buffers.get("neuron", layer),
                                           rtol=1e-12, atol=1e-12)
    finally:
        release_kept_decoding(model)
    assert through_compiled == [False, True, True, True]
    assert graphs[1] == graphs[2] == graphs[3] and graphs[1] - graphs[0] == 1  # the prompt, once


def test_calls_under_other_hooks_are_honoured():
    """Each call installs its own hooks: the compiled code must run the hooks of this call, never an earlier one's
    (dynamo guards on submodules' hooks: a different set compiles again)."""
    model, batch = _text()
    adapter = get_adapter(model)
    for sites in ({"neuron": [0]}, {"neuron": [0]}, {"act": [1]}, {"neuron": [1], "act": [0]}):
        plain, plain_buffers = buffered_generate(model, _Tokens(), batch, sites, 5)
        got, buffers = buffered_generate(model, _Tokens(), batch, sites, 5, compile="aot_eager")
        assert torch.equal(got.sequences, plain.sequences)
        assert set(buffers.buffers) == set(plain_buffers.buffers)
        for key, value in plain_buffers.buffers.items():
            torch.testing.assert_close(buffers.buffers[key], value, rtol=1e-12, atol=1e-12)
    neurons = torch.tensor([[layer, index] for layer in range(adapter.n_layers) for index in range(adapter.d_ff)])
    with intervene(model, amplify(neurons, 400.0, positions="all")):  # steady (graph-safe): compiled in
        expected = greedy_generate(model, _Tokens(), batch, 6)
        got = greedy_generate(model, _Tokens(), batch, 6, compile="aot_eager")
    assert torch.equal(got.sequences, expected.sequences)
    free = greedy_generate(model, _Tokens(), batch, 6)
    assert not torch.equal(free.sequences, expected.sequences)  # the intervention changed the tokens
    assert torch.equal(greedy_generate(model, _Tokens(), batch, 6, compile="aot_eager").sequences, free.sequences)


def test_hooks_added_where_there_were_none_when_it_compiled():
    """A first compiled call without hooks, then calls with hooks on modules that had none: dynamo, by default, puts
    no guard on an empty hook dict and would run the first call's code without them (found in review)."""
    model, batch = _text()
    adapter = get_adapter(model)
    greedy_generate(model, _Tokens(), batch, 6, compile="aot_eager")
    for sites in ({"neuron": [0]}, {"neuron": [0, 1]}):
        plain, plain_buffers = buffered_generate(model, _Tokens(), batch, sites, 6)
        got, buffers = buffered_generate(model, _Tokens(), batch, sites, 6, compile="aot_eager")
        assert torch.equal(got.sequences, plain.sequences)
        for key, value in plain_buffers.buffers.items():
            torch.testing.assert_close(buffers.buffers[key], value, rtol=1e-12, atol=1e-12)
    neurons = torch.tensor([[0, index] for index in range(adapter.d_ff)])
    torch._dynamo.reset()
    greedy_generate(model, _Tokens(), batch, 6, compile="aot_eager")
    with intervene(model, amplify(neurons, 50.0, positions="all")):
        expected = greedy_generate(model, _Tokens(), batch, 6)
        got = greedy_generate(model, _Tokens(), batch, 6, compile="aot_eager")
    assert torch.equal(got.sequences, expected.sequences)
    assert not torch.equal(expected.sequences, greedy_generate(model, _Tokens(), batch, 6).sequences)


def test_new_hooks_of_the_same_code_reuse_the_compiled_code():
    model, batch = _text()
    stats = torch._dynamo.utils.counters["stats"]  # counts for the whole process
    graphs = []
    for _ in range(3):
        buffered_generate(model, _Tokens(), batch, {"neuron": [0, 1]}, 6, compile="aot_eager")
        graphs.append(stats["unique_graphs"])
    assert graphs[0] == graphs[1] == graphs[2]  # compiled by the first call only


def test_more_hook_sets_than_dynamos_default_limit_still_compile():
    """Dynamo compiles a code object 8 times by default, then runs it uncompiled; transformers' forward wrappers share
    their code across model classes, so the compiled calls allow more."""
    model, batch = _text()
    stats = torch._dynamo.utils.counters["stats"]
    before = stats["unique_graphs"]
    site_sets = [{site: layers} for site in ("neuron", "act", "up", "gate", "resid_post") for layers in ([0], [1])]
    for sites in site_sets:
        plain, plain_buffers = buffered_generate(model, _Tokens(), batch, sites, 3)
        got, buffers = buffered_generate(model, _Tokens(), batch, sites, 3, compile="aot_eager")
        assert torch.equal(got.sequences, plain.sequences)
        for key, value in plain_buffers.buffers.items():
            torch.testing.assert_close(buffers.buffers[key], value, rtol=1e-12, atol=1e-12)
    assert stats["unique_graphs"] - before >= len(site_sets)  # each set compiled, none run uncompiled


def test_a_vision_language_models_text_decoder():
    vlm = chat_vlm("llava", seed=1)
    vlm.model.to(torch.float64)
    images = [gradient_image(40, 30), gradient_image(30, 40)]
    batch = encode_images(vlm.processor, images, "Describe it.", assistant_prefix="An image of")
    plain = caption_contributions(vlm.model, vlm.processor, batch, max_new_tokens=5, top_k=20, slots=None)
    got = caption_contributions(vlm.model, vlm.processor, batch, max_new_tokens=5, top_k=20, slots=None,
                                compile="aot_eager")
    assert torch.equal(got.generation.sequences, plain.generation.sequences)
    assert torch.equal(got.flat_indices, plain.flat_indices)
    torch.testing.assert_close(got.values, plain.values, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("images", [True, False])
def test_the_prompts_image_encoding_runs_compiled_where_asked(monkeypatch, images):
    """With the prompt compiled, the model's ``get_image_features`` (vision tower and projector) runs compiled too,
    put on the base model's instance for the prompt only (``COMPILE_IMAGES``); the same tokens and scores as the
    uncompiled decoding either way, and nothing left on the instance after."""
    import neuronscope.trace.compiled_decoder as compiled
    import neuronscope.trace.decode as decode
    from neuronscope.models.decoding import image_encoder

    monkeypatch.setattr(compiled, "COMPILE_IMAGES", images)
    vlm = chat_vlm("llava", seed=1)
    vlm.model.to(torch.float64)
    encoder = image_encoder(vlm.model)
    assert encoder is vlm.model.model and image_encoder(tiny_text_model("llama")) is None
    batch = encode_images(vlm.processor, [gradient_image(40, 30), gradient_image(30, 40)], "Describe it.",
                          assistant_prefix="An image of")
    plain = caption_contributions(vlm.model, vlm.processor, batch, max_new_tokens=4, top_k=20, slots=None)
    seen = []

    def spied(self, *args, _original=decode._StaticDecoder._prefill):
        seen.append("get_image_features" in vars(encoder))
        return _original(self, *args)

    monkeypatch.setattr(decode._StaticDecoder, "_prefill", spied)
    got = caption_contributions(vlm.model, vlm.processor, batch, max_new_tokens=4, top_k=20, slots=None,
                                compile="aot_eager")
    assert seen == [images] and "get_image_features" not in vars(encoder)
    assert torch.equal(got.generation.sequences, plain.generation.sequences)
    assert torch.equal(got.flat_indices, plain.flat_indices)
    torch.testing.assert_close(got.values, plain.values, rtol=1e-10, atol=1e-12)


def test_inductor_on_the_cpu():
    model, batch = _text()
    model.float()
    plain = greedy_generate(model, _Tokens(), batch, 5)
    assert torch.equal(greedy_generate(model, _Tokens(), batch, 5, compile=True).sequences, plain.sequences)


def test_refusals_and_backends():
    assert compile_backend(False) is None and compile_backend(True) == "inductor"
    assert compile_backend("aot_eager") == "aot_eager"
    with pytest.raises(InputError, match="compile must be"):
        compile_backend(3)
    model, batch = _text()
    with pytest.raises(InputError, match="not to slot decoding"):
        buffered_decode(model, _Tokens(), batch, {"neuron": [0]}, 4, slots=2, compile=True)
    with intervene(model, amplify(torch.tensor([[0, 1]]), 3.0, positions="last")):  # positions picked on the host
        with pytest.raises(InputError, match="graph-safe hooks only"):
            greedy_generate(model, _Tokens(), batch, 4, compile="aot_eager")
    decoder = get_adapter(model).decoder
    decoder.forward = decoder.forward  # another tool's instance forward
    try:
        with pytest.raises(InputError, match="already has its own forward"):
            with compiled_decoder(model, "aot_eager"):
                pass
    finally:
        del decoder.forward
    with pytest.raises(RuntimeError, match="inside"):
        with compiled_decoder(model, "aot_eager"):
            assert "forward" in vars(decoder)
            raise RuntimeError("inside")
    assert "forward" not in vars(decoder)
