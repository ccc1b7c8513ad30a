"""greedy_generate (static cache, the decode steps graph-ready) against transformers' own ``model.generate``:
the same tokens, stops and pads, the same activations at every step, and the decode clock right on every path.
The CUDA-graph replay itself is compared with the eager decoding on the GPU (``benchmarks/bench_checks.py``)."""

from __future__ import annotations

import pytest
import torch

from helpers.pipeline_vlms import chat_vlm
from helpers.tiny_models import random_batch, tiny_text_model
from helpers.tiny_vlms import gradient_image
from neuronscope.inputs import Batch, encode_images, generate
from neuronscope.models import get_adapter
from neuronscope.trace import decode
from neuronscope.trace.decode import DecodeClock, greedy_generate, static_decode_blocker
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.sites import resolve_site


class _Tokens:
    """The least a processor must give: pad / end-of-sequence ids and decoding."""

    pad_token_id, eos_token_id = 0, 2

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in row) for row in rows]


def _text(family: str, left_pad=(0, 3, 1)) -> tuple[torch.nn.Module, Batch]:
    model = tiny_text_model(family, seed=3)
    inputs = random_batch(batch=3, length=7, seed=5, left_pad=left_pad)
    return model, Batch(inputs, ["?"] * 3, inputs["attention_mask"].sum(-1))


def _no_fallback(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("fell back to model.generate")

    monkeypatch.setattr(decode, "_clocked_generate", refuse)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gpt2", "olmo2"])
@pytest.mark.parametrize("options", [{}, {"min_new_tokens": 6, "suppress_tokens": [5, 9]}])
def test_tokens_equal_generate(family, options, monkeypatch):
    model, batch = _text(family)
    expected = generate(model, _Tokens(), batch, max_new_tokens=8, **options)
    assert static_decode_blocker(model, batch, options) is None
    _no_fallback(monkeypatch)
    got = greedy_generate(model, _Tokens(), batch, max_new_tokens=8, graphs=False, **options)
    assert torch.equal(got.sequences, expected.sequences)
    assert got.prompt_len == expected.prompt_len and got.texts == expected.texts


def test_the_generation_configs_own_processors_apply(monkeypatch):
    model, batch = _text("llama")
    free = generate(model, _Tokens(), batch, max_new_tokens=6).tokens
    barred = free[:, :2].unique().tolist()  # tokens the model would otherwise pick
    model.generation_config.suppress_tokens, model.generation_config.min_new_tokens = barred, 4
    expected = generate(model, _Tokens(), batch, max_new_tokens=6)
    _no_fallback(monkeypatch)
    got = greedy_generate(model, _Tokens(), batch, max_new_tokens=6, graphs=False)
    assert torch.equal(got.sequences, expected.sequences)
    assert not torch.isin(got.tokens, torch.tensor(barred)).any() and not torch.equal(got.tokens, free)


def test_rows_that_stop_are_padded_and_decoding_ends_when_all_stop(monkeypatch):
    model, batch = _text("llama")
    free = generate(model, _Tokens(), batch, max_new_tokens=6).tokens
    model.generation_config.eos_token_id = int(free[0, 1])  # row 0 stops at step 1
    expected = generate(model, _Tokens(), batch, max_new_tokens=6)
    _no_fallback(monkeypatch)
    got = greedy_generate(model, _Tokens(), batch, max_new_tokens=6, graphs=False)
    assert torch.equal(got.sequences, expected.sequences)
    assert (got.tokens[0, 2:] == 0).all()
    model.generation_config.eos_token_id = [int(t) for t in free[:, 0]]  # every row stops at step 0
    expected = generate(model, _Tokens(), batch, max_new_tokens=6)
    got = greedy_generate(model, _Tokens(), batch, max_new_tokens=6, graphs=False)
    assert torch.equal(got.sequences, expected.sequences) and got.tokens.shape[1] == 1


@pytest.mark.parametrize("lagged", [False, True])
def test_stops_read_one_step_late_give_the_same_tokens(monkeypatch, lagged):
    """On a GPU whether every row has stopped is read one step late, so that the next step is queued meanwhile
    (``trace.greedy_choice.StopFlags``): the step after the last stop only writes padding and is not counted. Forced here on the CPU:
    rows that stop at different steps, all at the first step, or never."""
    original = decode.StopFlags.__init__
    monkeypatch.setattr(decode.StopFlags, "__init__", lambda self, unfinished: original(self, unfinished, lagged))
    model, batch = _text("llama")
    free = generate(model, _Tokens(), batch, max_new_tokens=8).tokens
    for eos in ([int(t) for t in free[:, 3]], [int(t) for t in free[:, 1]], int(free[0, 5]), 1):
        model.generation_config.eos_token_id = eos
        expected = generate(model, _Tokens(), batch, max_new_tokens=8)
        got = greedy_generate(model, _Tokens(), batch, max_new_tokens=8, graphs=False)
        assert torch.equal(got.sequences, expected.sequences), eos


def _per_step(model, run, steps: int) -> tuple[torch.Tensor, list[int]]:
    """Run ``run(clock)`` with a hook that writes every layer's neuron site at the clock's step."""
    adapter = get_adapter(model)
    clock = DecodeClock.on(model)
    buffers: dict[int, torch.Tensor] = {}
    seen: list[int] = []

    def keep(layer):
        def hook(tensor, call):
            if layer not in buffers:
                buffers[layer] = torch.zeros(tensor.shape[0], steps, tensor.shape[-1], dtype=tensor.dtype)
            buffers[layer].index_copy_(1, clock.on_device(tensor.device), tensor[:, -1:])
            if layer == 0:
                seen.append(int(clock.step))

        return hook

    with HookSet(adapter) as hooks:
        for layer in range(adapter.n_layers):
            hooks.add(resolve_site(adapter, "neuron", layer), keep(layer))
        run(clock)
    return torch.stack([buffers[layer] for layer in sorted(buffers)], 1), seen


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_activations_and_clock_equal_on_the_static_and_the_fallback_path(family):
    model, batch = _text(family)
    model.to(torch.float64)
    steps = 5
    # model.generate with the clock ticked before each forward call (the fallback) ...
    plain, ticks = _per_step(model, lambda clock: decode._clocked_generate(model, _Tokens(), batch, steps, clock),
                             steps)
    # ... and the static decoding (the fallback itself for gemma3_text, whose cache has sliding-window layers)
    got, seen = _per_step(model, lambda clock: greedy_generate(model, _Tokens(), batch, max_new_tokens=steps,
                                                              clock=clock, graphs=False), steps)
    assert seen == ticks == list(range(steps))
    torch.testing.assert_close(got, plain, rtol=1e-10, atol=1e-12)


def test_a_vision_language_model_decodes_statically(monkeypatch):
    vlm = chat_vlm("llava", seed=1)
    model, processor = vlm.model, vlm.processor
    images = [gradient_image(40, 30), gradient_image(30, 40).rotate(90)]
    batch = encode_images(processor, images, "Describe it.", assistant_prefix="An image of")
    expected = generate(model, processor, batch, max_new_tokens=6)
    _no_fallback(monkeypatch)
    got = greedy_generate(model, processor, batch, max_new_tokens=6, graphs=False)
    assert torch.equal(got.sequences, expected.sequences) and got.texts == expected.texts
    from neuronscope.trace.hooks import foreign_hooks

    # transformers installs its output-capturing hooks on the vision tower on first use: not counted as foreign
    assert any(sub._forward_hooks for sub in model.modules()) and foreign_hooks(model) == 0


def test_what_it_does_not_cover_falls_back_to_generate():
    model, batch = _text("gemma3_text")  # sliding-window layers: the cache is not one static length
    assert "cache layers" in static_decode_blocker(model, batch, {})
    expected = generate(model, _Tokens(), batch, max_new_tokens=5)
    assert torch.equal(greedy_generate(model, _Tokens(), batch, max_new_tokens=5).sequences, expected.sequences)
    model, batch = _text("llama")
    assert "repetition_penalty" in static_decode_blocker(model, batch, {"repetition_penalty": 1.2})
    model.generation_config.no_repeat_ngram_size = 2
    assert "no_repeat_ngram_size" in static_decode_blocker(model, batch, {})
    expected = generate(model, _Tokens(), batch, max_new_tokens=5)
    assert torch.equal(greedy_generate(model, _Tokens(), batch, max_new_tokens=5).sequences, expected.sequences)
    vlm = chat_vlm("qwen2_vl", seed=1)
    batch = encode_images(vlm.processor, [gradient_image(40, 30)], "Describe it.")
    assert "inputs" in static_decode_blocker(vlm.model, batch, {})
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(model, _Tokens(), _text("llama")[1], max_new_tokens=0)


def test_step_buffers_hold_what_capture_at_the_last_position_holds():
    from neuronscope.trace import capture
    from neuronscope.trace.decode import StepBuffers

    model, batch = _text("qwen3")
    model.to(torch.float64)
    adapter = get_adapter(model)
    layers = list(range(adapter.n_layers))
    with capture(model, sites=["neuron", "resid_post"], layers=layers, positions="last") as acts:
        generate(model, _Tokens(), batch, max_new_tokens=5)
    clock = DecodeClock.on(model)
    buffers = StepBuffers(clock, 5)
    with HookSet(adapter) as hooks:
        buffers.install(hooks, adapter, "neuron", layers)
        buffers.install(hooks, adapter, "resid_post", [layers[-1]])
        produced = greedy_generate(model, _Tokens(), batch, max_new_tokens=5, clock=clock, graphs=False)
    steps = produced.tokens.shape[1]
    torch.testing.assert_close(buffers.stack("neuron", steps), acts.stack("neuron").transpose(1, 2), rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(buffers.get("resid_post", layers[-1])[:, :steps], acts.get("resid_post", layers[-1]),
                               rtol=1e-10, atol=1e-12)
    from neuronscope.trace.decode import buffered_generate

    again, kept = buffered_generate(model, _Tokens(), batch, {"neuron": layers, "resid_post": [layers[-1]]}, 5,
                                    graphs=False)
    assert torch.equal(again.sequences, produced.sequences)
    torch.testing.assert_close(kept.stack("neuron", steps), acts.stack("neuron").transpose(1, 2), rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(kept.get("resid_post", layers[-1])[:, :steps], acts.get("resid_post", layers[-1]),
                               rtol=1e-10, atol=1e-12)


def test_hooks_not_declared_graph_safe_are_counted_and_honoured_step_by_step(monkeypatch):
    """An intervention picks its positions on the host at each call: greedy_generate counts its hooks as foreign
    (so a GPU would decode without graphs) and the static decoding still applies it at every step as
    model.generate does."""
    from neuronscope.trace.hooks import foreign_hooks
    from neuronscope.trace.intervene import amplify, intervene

    model, batch = _text("llama")
    adapter = get_adapter(model)
    neurons = torch.stack([torch.ones(24, dtype=torch.long), torch.arange(24)], 1)  # all of layer 1
    with HookSet(adapter, graph_safe=True):
        assert foreign_hooks(model) == 0
    # a tiny random model's FFN writes are small: amplified 1000x they change the tokens
    with intervene(model, amplify(neurons, 1000.0, positions="last") + amplify(neurons[:4], 1000.0, positions=[0, 2])):
        assert foreign_hooks(model) > 0
        expected = generate(model, _Tokens(), batch, max_new_tokens=6)
        _no_fallback(monkeypatch)
        got = greedy_generate(model, _Tokens(), batch, max_new_tokens=6, graphs=False)
    assert torch.equal(got.sequences, expected.sequences)
    assert not torch.equal(expected.sequences, generate(model, _Tokens(), batch, max_new_tokens=6).sequences)
    assert foreign_hooks(model) == 0


def test_an_accelerate_hook_counts_as_foreign():
    from neuronscope.trace.hooks import foreign_hooks

    model, _ = _text("llama")
    assert foreign_hooks(model) == 0
    model.model.layers[0]._hf_hook = object()  # what accelerate's add_hook_to_module leaves on a module
    assert foreign_hooks(model) == 1
