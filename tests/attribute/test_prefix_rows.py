"""IG's 'sequence' path (all rows as query tokens of one sequence over a shared prefix cache) against the plain path
and Captum; its 4-D mask against rows run one by one with their own cache; the row planner."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from captum.attr import IntegratedGradients

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.attribute.integrated_gradients import integrated_gradients
from neuronscope.attribute.prefix_rows import RowPlanner, shared_prefix_mask
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import token_targets
from neuronscope.models import get_adapter
from neuronscope.trace.last_step import cache_keyword

EXACT = dict(rtol=1e-7, atol=1e-13)
# eager attention runs its softmax in float32 even for float64 models: rounding at float32's level
EAGER = dict(rtol=1e-5, atol=1e-10)


def _batch(inputs: dict) -> Batch:
    mask = inputs["attention_mask"]
    return Batch({**inputs, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}, [""] * len(mask), mask.sum(-1))


def _model(family: str, attention: str = "sdpa", **config):
    model = tiny_text_model(family, dtype=torch.float64)
    for key, value in config.items():
        setattr(model.config, key, value)
    model.set_attn_implementation(attention)
    return model


def _captum(model, ids: torch.Tensor, layer: int, token: int, steps: int) -> torch.Tensor:
    """Captum's right Riemann IG (= the 'dai' grid) of P(token) w.r.t. layer's neuron site at the last position,
    through a raw pre-hook on the stock FFN output projection."""
    adapter = get_adapter(model)
    down = adapter.module(layer, adapter.family.down)
    position = ids.numel() - 1

    def function(x: torch.Tensor) -> torch.Tensor:
        def replace(module, args):
            hidden = args[0].clone()
            hidden[:, position] = x
            return (hidden,)

        handle = down.register_forward_pre_hook(replace)
        try:
            return model(input_ids=ids[None].expand(x.shape[0], -1)).logits[:, position].softmax(-1)[:, token]
        finally:
            handle.remove()

    seen = []
    handle = down.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, position].detach()))
    with torch.no_grad():
        model(input_ids=ids[None])
    handle.remove()
    return IntegratedGradients(function).attribute(seen[0], baselines=0.0, n_steps=steps, method="riemann_right")[0]


# llama: GQA (4 heads, 2 KV heads), gpt_neox: MHA with parallel residual, gpt2: MHA with Conv1D projections
@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gpt2"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_sequence_equals_plain_and_captum(family, attention):
    model = _model(family, attention)
    ids = random_batch(batch=1, length=6, seed=3)["input_ids"][0]
    batch = _batch({"input_ids": ids[None], "attention_mask": torch.ones(1, 6, dtype=torch.long)})
    targets = token_targets(batch, 11)
    fast = integrated_gradients(model, batch, targets, steps=5, method="sequence")
    plain = integrated_gradients(model, batch, targets, steps=5, method="plain").values
    assert fast.meta["path"] == "sequence"
    tolerance = EXACT if attention == "sdpa" else EAGER
    torch.testing.assert_close(fast.values, plain, **tolerance)
    for layer in range(get_adapter(model).n_layers):
        torch.testing.assert_close(fast.values[0, 0, layer], _captum(model, ids, layer, 11, 5), **tolerance)


@pytest.mark.parametrize("grid", ["dai", "linspace"])
def test_both_grids_several_layers_targets_and_padding(grid):
    model = _model("qwen2")
    batch = _batch(random_batch(batch=2, length=7, seed=5, left_pad=(3, 0)))
    targets = token_targets(batch, [[5, 9], [9, 13]])
    targets.positions[1, 1] = 2  # an inner position: a short prefix
    targets.positions[0, 1] = 3  # the first real token of a padded row: no prefix at all
    fast = integrated_gradients(model, batch, targets, steps=4, grid=grid, layers=[1, 0]).values
    plain = integrated_gradients(model, batch, targets, steps=4, grid=grid, layers=[1, 0], method="plain").values
    packed = integrated_gradients(model, batch, targets, steps=4, grid=grid, layers=[1, 0], method="packed").values
    assert fast.abs().min() > 0
    torch.testing.assert_close(fast, plain, **EXACT)
    torch.testing.assert_close(packed, plain, **EXACT)


def test_sliding_window_layers_get_their_own_mask():
    """Gemma-3 with a window of 3 over a 7-token prompt: sliding layers cache 2 keys, full layers 6, so the mask is
    a dict per layer type; scores still equal the plain path (which sees the whole sequence)."""
    torch.manual_seed(0)
    config = T.Gemma3TextConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                intermediate_size=24, head_dim=4, vocab_size=64, sliding_window=3,
                                layer_types=["sliding_attention", "full_attention"])
    model = T.AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    batch = _batch(random_batch(batch=1, length=7, seed=2))
    targets = token_targets(batch, 8)
    with torch.no_grad():
        out = model(input_ids=batch.input_ids[:, :6], use_cache=True)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    mask = shared_prefix_mask(model, cache, 6, 4, "cpu")
    assert isinstance(mask, dict) and mask["sliding_attention"].shape[-1] == 2 + 4
    assert mask["full_attention"].shape[-1] == 6 + 4
    fast = integrated_gradients(model, batch, targets, steps=3)
    assert fast.meta["path"] == "sequence"
    torch.testing.assert_close(fast.values, integrated_gradients(model, batch, targets, steps=3,
                                                                 method="plain").values, **EXACT)


def test_mask_rows_see_prefix_and_themselves_only():
    """The hidden states of R query tokens run together under the mask equal R separate single-token runs, each
    with its own copy of the cache, even though the rows carry different inputs (so attending to one another
    would show)."""
    model = _model("llama")
    ids = random_batch(batch=1, length=5, seed=4)["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        rows = torch.tensor([[7, 30, 7, 12]])
        import copy

        mask = shared_prefix_mask(model, cache, 5, 4, "cpu")
        assert mask[0, 0].int().tolist()[1] == [1, 1, 1, 1, 1, 0, 1, 0, 0]
        together = model(input_ids=rows, attention_mask=mask, position_ids=torch.full((1, 4), 5),
                         use_cache=True, **{cache_keyword(model): copy.deepcopy(cache)}).logits[0]
        for j in range(4):
            alone = model(input_ids=rows[:, j:j + 1], position_ids=torch.tensor([[5]]), use_cache=True,
                          **{cache_keyword(model): copy.deepcopy(cache)}).logits[0, 0]
            torch.testing.assert_close(together[j], alone, **EXACT)


def test_flash_attention_falls_back_to_packed():
    model = _model("llama")
    model.config._attn_implementation = "flash_attention_2"  # no 4-D masks there: the mask says no
    assert shared_prefix_mask(model, None, 0, 3, "cpu") is None
    model.set_attn_implementation("sdpa")


def test_small_memory_budget_splits_rows_into_balanced_chunks_with_the_same_scores():
    model = _model("llama")
    batch = _batch(random_batch(batch=1, length=6, seed=6))
    targets = token_targets(batch, 9)
    whole = integrated_gradients(model, batch, targets, steps=5).values
    planner = RowPlanner.for_model(model)
    per_row = planner.modelled(1, 5)
    split = integrated_gradients(model, batch, targets, steps=5, memory_budget=3.5 * per_row).values
    torch.testing.assert_close(split, whole, **EXACT)
    assert RowPlanner(per_row=1.0, per_row_key=0.0, budget=3.0).chunks(10, 5, torch.device("cpu")) == [3, 3, 2, 2]
    assert RowPlanner(per_row=1.0, per_row_key=0.0, budget=100.0, limit=4).chunks(10, 5,
                                                                                   torch.device("cpu")) == [4, 3, 3]


def test_planner_correction_and_shrink():
    planner = RowPlanner(per_row=10.0, per_row_key=1.0, budget=1000.0)
    planner.observe(rows=4, prefix=6, peak_bytes=2 * 4 * (10 + 10))  # measured twice the model
    assert planner.correction == pytest.approx(2.0)
    assert planner.modelled(4, 6) == pytest.approx(160.0)
    planner.shrink(8)
    assert planner.limit == 4 and max(planner.chunks(20, 6, torch.device("cpu"))) <= 4


def test_float32_sequence_equals_plain_to_1e_5():
    """The fp32 agreement the H200 benchmark states for 7B (there ≤ 1e-3 relative to the largest score)."""
    torch.manual_seed(0)
    config = T.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=64)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    batch = _batch(random_batch(batch=1, length=9, seed=8))
    targets = token_targets(batch, 5)
    fast = integrated_gradients(model, batch, targets, steps=20).values
    plain = integrated_gradients(model, batch, targets, steps=20, method="plain").values
    assert float((fast - plain).abs().max() / plain.abs().max()) < 1e-5


def test_planner_tries_each_size_twice_round_by_round_then_uses_the_fastest():
    """Sizes are tried on a call's first chunk only (it runs every layer; a later chunk may enter the decoder at a
    deeper layer and cost less per row), so the rest of a call takes the fastest size known so far."""
    planner = RowPlanner(per_row=1.0, per_row_key=0.0, budget=1000.0)
    cpu = torch.device("cpu")
    assert planner.candidates(100, 5, cpu) == [100, 50, 25]
    assert planner.next_chunk(100, 5, cpu) == (100, 100)
    planner.timed(100, 100, 2.0)  # 50 rows/s
    assert planner.next_chunk(100, 5, cpu) == (50, 50)
    planner.timed(50, 50, 0.5)  # 100 rows/s
    assert planner.next_chunk(50, 5, cpu, total=100) == (50, None)  # the rest of a 100-row prompt: not a trial
    assert planner.next_chunk(100, 5, cpu) == (25, 25)
    planner.timed(25, 25, 0.5)  # 50 rows/s
    assert planner.next_chunk(100, 5, cpu) == (100, 100)  # second round: a first chunk pays one-time costs
    planner.timed(100, 100, 1.25)  # 80 rows/s: its best
    assert not planner.settled(100, 5, cpu)
    assert planner.next_chunk(100, 5, cpu) == (50, 50)
    planner.timed(50, 50, 1.0)  # 50 rows/s: the best stays 100
    assert planner.next_chunk(100, 5, cpu) == (25, 25)
    planner.timed(25, 25, 1.0)
    assert planner.settled(100, 5, cpu)
    assert planner.next_chunk(100, 5, cpu) == (50, None)  # the fastest, balanced
    assert planner.next_chunk(70, 5, cpu, total=100) == (35, None)
    assert planner.chunks(100, 5, cpu) == [50, 50]


def test_repeated_calls_with_size_trials_give_the_same_scores():
    """32 rows per prompt: the per-model planner tries 32, 16 and 8 rows per chunk over the first calls; every
    call still gives the plain path's scores."""
    model = _model("llama")
    batch = _batch(random_batch(batch=1, length=6, seed=7))
    targets = token_targets(batch, 9)
    plain = integrated_gradients(model, batch, targets, steps=16, method="plain").values
    for _ in range(3):
        torch.testing.assert_close(integrated_gradients(model, batch, targets, steps=16).values, plain, **EXACT)
    from neuronscope.attribute.prefix_rows import planner_for

    assert set(planner_for(model).speeds) == {32, 16, 8}
    budget = 64 * planner_for(model).per_row  # a memory budget gets its own planner, kept between calls too
    for _ in range(6):  # first chunks 32 | 16 | 8 | 32 | 16 | 8: each size tried twice
        torch.testing.assert_close(integrated_gradients(model, batch, targets, steps=16, memory_budget=budget).values,
                                   plain, **EXACT)
    assert planner_for(model, budget=budget) is planner_for(model, budget=budget)
    assert set(planner_for(model, budget=budget).trials.values()) == {2}  # each size tried twice, then no more


def test_bf16_agreement_is_stated():
    """bf16 against float32, the same random Llama (d = 64, 3 layers, m = 20): measured on a CPU, the bf16 scores
    differ from float32's by 1.0 % of the largest score (top-10 overlap 0.9, top-50 1.0), and bf16's sequence path
    from bf16's plain path by 0.13 % (top-10 1.0): bf16 rounding, which the bounds below leave room for."""
    import copy

    torch.manual_seed(0)
    config = T.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=64)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    batch = _batch(random_batch(batch=1, length=9, seed=8))
    targets = token_targets(batch, 5)
    full = integrated_gradients(model, batch, targets, steps=20).values
    half_model = copy.deepcopy(model).to(torch.bfloat16)
    half = integrated_gradients(half_model, batch, targets, steps=20).values
    plain_half = integrated_gradients(half_model, batch, targets, steps=20, method="plain").values
    assert half.dtype == torch.float32  # probabilities and sums in float32 for bf16 models

    def overlap(a, b, k):
        return len(set(a.flatten().topk(k).indices.tolist()) & set(b.flatten().topk(k).indices.tolist())) / k

    assert float((half - full).abs().max() / full.abs().max()) < 0.05 and overlap(half, full, 50) >= 0.8
    assert float((half - plain_half).abs().max() / plain_half.abs().max()) < 0.02
