"""Integrated gradients' rows joining the decoder in segments at their own layers (attribute/ig_segments.py,
trace/layer_entry.py): the layout of a chunk's rows, and scores equal to the plain loop's in float64 while each
decoder layer runs only for the rows that need it."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from helpers.ig_cases import EAGER, EXACT, float64_model, one_row_batch
from helpers.tiny_models import CONFIGS, TEXT_FAMILIES, random_batch
from neuronscope.attribute.ig_segments import SEGMENTS, Segment, chunk_layout
from neuronscope.attribute.integrated_gradients import integrated_gradients
from neuronscope.inputs.targets import token_targets
from neuronscope.models import get_adapter
from neuronscope.trace.layer_entry import can_enter, entered_at

_model, _batch = float64_model, one_row_batch


def test_a_slice_of_the_layers_from_a_residual_gives_the_plain_hidden_states():
    """Layers 1-2 of a 4-layer model, started from the plain forward's input to layer 1: the kept output of layer 2
    and the final logits (layers 1-3) equal the plain forward's; the layer list is restored afterwards."""
    config = CONFIGS["llama"]()
    config.num_hidden_layers = 4
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    adapter = get_adapter(model)
    ids = random_batch(batch=1, length=5, seed=2)["input_ids"]
    with torch.no_grad():
        plain = model(input_ids=ids, output_hidden_states=True)
        with entered_at(adapter, 1, plain.hidden_states[1][0], stop=3) as entry:
            model(input_ids=ids)
        torch.testing.assert_close(entry.output, plain.hidden_states[3], **EXACT)
        with entered_at(adapter, 1, plain.hidden_states[1][0]):
            logits = model(input_ids=ids).logits
    torch.testing.assert_close(logits, plain.logits, **EXACT)
    assert model.model.layers is adapter.layers and len(model.model.layers) == 4
    with pytest.raises(ValueError, match="residual"):
        with entered_at(adapter, 2, None):
            pass


ENTERED = ("gpt2", "gpt_neox", "llama", "qwen2", "qwen3", "phi3", "olmo2")  # mistral, gemma2/3: sliding windows


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_chunks_enter_the_decoder_at_their_first_layer_with_the_same_scores(family):
    """Rows of layer 1 only: their chunk runs layer 1 alone, fed the scored token's input to it (read from the
    prefix run); the scores equal the plain loop's. Layer 0 runs once for the prefix and once for the chunk of
    layer-0 rows, not a third time. Sliding-window families keep every layer (``can_enter`` is False)."""
    model = _model(family, "eager" if family == "gemma2" else "sdpa")
    batch = _batch(9, 4)
    targets = token_targets(batch, 7)
    adapter = get_adapter(model)
    calls = []
    handle = adapter.layers[0].register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        fast = integrated_gradients(model, batch, targets, steps=3, batch_size=3)
    finally:
        handle.remove()
    plain = integrated_gradients(model, batch, targets, steps=3, method="plain").values
    assert fast.meta["path"] == "sequence"
    torch.testing.assert_close(fast.values, plain, **(EAGER if family == "gemma2" else EXACT))
    entered = family in ENTERED
    assert can_enter(adapter) == entered
    assert len(calls) == (2 if entered else 3)
    name = next(name for name in ("layers", "h") if hasattr(adapter.decoder, name))
    assert getattr(adapter.decoder, name) is adapter.layers  # the layer list is back in place


def test_chunk_layout_stacks_the_segments_rows_in_layer_order():
    layers = torch.tensor([5, 0, 3]).repeat_interleave(2)  # layer-major rows, layers in the caller's order
    alphas = torch.arange(10, dtype=torch.float64)
    plan, segments = chunk_layout(layers, alphas, 4, enter=True)
    assert segments == [Segment(0, 3, 2), Segment(3, 5, 4), Segment(5, None, 6)]
    assert {layer: (rows.tolist(), a.tolist()) for layer, (rows, a) in plan.items()} == {
        0: ([0, 1], [6.0, 7.0]), 3: ([2, 3], [8.0, 9.0]), 5: ([4, 5], [4.0, 5.0])}
    plan, segments = chunk_layout(layers, alphas, 4, enter=False)
    assert segments == [Segment(0, None, 6)] and plan[5][0].tolist() == [0, 1]
    _, segments = chunk_layout(torch.arange(32).repeat_interleave(20), torch.zeros(640), 0, enter=True)
    assert len(segments) == SEGMENTS and [s.join for s in segments] == list(range(0, 32, 4))
    assert [s.rows for s in segments] == [80 * (k + 1) for k in range(SEGMENTS)]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("batch_size", [None, 8])
def test_rows_join_the_decoder_in_segments_with_the_same_scores(family, batch_size):
    """Six layers scored in the order 5, 0, 3, 1 (4 steps: 16 rows): one chunk of segments joining at layers 0, 1,
    3 and 5, or two chunks of 8 rows; every decoder layer runs once for the prefix and once per chunk that reaches
    it; the scores equal the plain loop's in float64."""
    config = CONFIGS[family]()
    for name in ("num_hidden_layers", "n_layer"):
        if hasattr(config, name):
            setattr(config, name, 6)
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    batch = _batch(10, 6)
    targets = token_targets(batch, 7)
    adapter = get_adapter(model)
    calls = {layer: 0 for layer in range(6)}
    handles = [adapter.layers[layer].register_forward_pre_hook(
        lambda module, args, layer=layer: calls.__setitem__(layer, calls[layer] + 1)) for layer in range(6)]
    try:
        fast = integrated_gradients(model, batch, targets, steps=4, layers=[5, 0, 3, 1], batch_size=batch_size)
    finally:
        for handle in handles:
            handle.remove()
    plain = integrated_gradients(model, batch, targets, steps=4, layers=[5, 0, 3, 1], method="plain").values
    torch.testing.assert_close(fast.values, plain, **EXACT)
    if batch_size is None:  # prefix + one chunk (layer 0 joins first)
        assert calls == {layer: 2 for layer in range(6)}
    else:  # chunks of layers {5, 0} and {3, 1}: the second starts at layer 1
        assert calls == {0: 2, 1: 3, 2: 3, 3: 3, 4: 3, 5: 3}


@pytest.mark.parametrize("case", ["lfm2", "falcon_h1", "jamba", "nemotron_h", "qwen3_next"])
def test_hybrid_decoders_take_the_plain_path(case):
    """Mamba, short-convolution and linear-attention mixers would mix rows put side by side in one sequence (the
    scores came out wrong, or the call failed on the mask); IG on hybrids runs the plain path and equals it."""
    from helpers.tiny_families import tiny_family_model

    model = tiny_family_model(case, dtype=torch.float64)
    adapter = get_adapter(model)
    assert any(mixer != "attention" for mixer in adapter.mixers)
    batch = _batch(8, 3)
    targets = token_targets(batch, 7)
    fast = integrated_gradients(model, batch, targets, steps=3, layers=adapter.ffn_layers)
    plain = integrated_gradients(model, batch, targets, steps=3, layers=adapter.ffn_layers, method="plain").values
    assert fast.meta["path"] == "plain"
    assert fast.values.abs().max() > 0
    torch.testing.assert_close(fast.values, plain, **EXACT)
    assert not can_enter(adapter)


@pytest.mark.parametrize("case", ["bloom", "mpt", "falcon:alibi"])
def test_alibi_decoders_run_their_rows_as_batch_rows(case):
    """ALiBi adds a bias from each key's position: rows put side by side in one sequence would be seen at other
    positions (MPT's scores came out 5 % off, BLOOM failed on the 4-D mask). They take the packed path."""
    from helpers.tiny_families import tiny_family_model

    if case == "falcon:alibi":
        config = T.FalconConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, vocab_size=64,
                                alibi=True, bias=True)
        torch.manual_seed(0)
        model = T.AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    else:
        model = tiny_family_model(case, dtype=torch.float64)
    adapter = get_adapter(model)
    assert adapter.position_bias
    batch = _batch(9, 5)
    targets = token_targets(batch, 7)
    fast = integrated_gradients(model, batch, targets, steps=3)
    plain = integrated_gradients(model, batch, targets, steps=3, method="plain").values
    assert fast.meta["path"] == "packed"
    torch.testing.assert_close(fast.values, plain, **EAGER)
    assert not get_adapter(tiny_family_model("falcon", dtype=torch.float64)).position_bias


def _dense_cases() -> list[str]:
    from helpers.tiny_families import CASES

    return list(CASES)


@pytest.mark.parametrize("case", _dense_cases())
def test_every_dense_family_gets_the_plain_scores_by_default(case):
    """Whatever path a family takes (sequence with segments, sequence over every layer, packed, plain), in one
    chunk or in chunks of 3 rows, its scores are the plain loop's (float64; eager attention's float32 softmax
    aside)."""
    from helpers.tiny_families import tiny_family_model

    model = tiny_family_model(case, dtype=torch.float64)
    adapter = get_adapter(model)
    if adapter.moe is not None:
        pytest.skip("mixture-of-experts: tests/attribute/test_moe_gradients.py")
    batch = _batch(9, 8)
    targets = token_targets(batch, 7)
    layers = adapter.ffn_layers
    plain = integrated_gradients(model, batch, targets, steps=3, layers=layers, method="plain").values
    scale = float(plain.abs().max())
    assert scale > 0
    for batch_size in (None, 3):
        fast = integrated_gradients(model, batch, targets, steps=3, layers=layers, batch_size=batch_size).values
        assert float((fast - plain).abs().max()) <= 1e-6 * scale


def test_the_prefix_run_keeps_every_layers_input_at_the_scored_position():
    """entry_prefix's residuals are the plain forward's hidden states (the input of each layer) at the scored
    position, and its cache holds the prefix and the scored token."""
    from neuronscope.attribute.ig_segments import entry_prefix

    model = _model("llama")
    ids = random_batch(batch=1, length=6, seed=4)["input_ids"]
    positions = torch.arange(6)[None]
    with torch.no_grad():
        plain = model(input_ids=ids, output_hidden_states=True)
    cache, residuals = entry_prefix(model, ids, positions, torch.tensor([4]))
    expected = torch.stack([plain.hidden_states[layer][0, 4] for layer in range(get_adapter(model).n_layers)])
    torch.testing.assert_close(residuals, expected, **EXACT)
    assert cache.get_seq_length() == 6


def test_rows_mask_hides_the_prefix_keys_it_is_told_to():
    from neuronscope.attribute.prefix_rows import rows_mask

    visible = torch.tensor([True, False, True])
    mask = rows_mask(visible, 2, True, torch.float32)
    assert mask.shape == (1, 1, 2, 5)
    assert mask[0, 0].int().tolist() == [[1, 0, 1, 1, 0], [1, 0, 1, 0, 1]]
    additive = rows_mask(visible, 2, False, torch.float32)[0, 0]
    assert torch.equal(additive == 0, mask[0, 0]) and additive.min() == torch.finfo(torch.float32).min
