"""LPI against brute force: add the vector to the residual, read it out through the model's own final-norm module
(rescaled to the frozen scale), its own unembedding and soft-cap, and take the log-softmax."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import TEXT_FAMILIES, random_batch, tiny_text_model
from neuronscope.attribute.heads import HeadSourceScores, head_outputs
from neuronscope.attribute.log_probability_increase import (
    FrozenReadout,
    head_log_probability_increase,
    head_source_log_probability_increase,
    log_probability_increase,
    log_probability_increase_from_logits,
)
from neuronscope.attribute.registry import get_method
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import token_targets
from neuronscope.models import get_adapter
from neuronscope.models.attention import attention_module, value_states_from_projection
from neuronscope.trace import capture

TOL = dict(rtol=1e-4, atol=2e-5)


def _strong(model: torch.nn.Module) -> torch.nn.Module:
    """Scale value vectors and W_O up so that LPIs are O(0.1-1), not O(1e-3) (sharper tests)."""
    adapter = get_adapter(model)
    with torch.no_grad():
        for layer in range(adapter.n_layers):
            adapter.value_vectors(layer).mul_(15)
            adapter.attn_output_weight(layer).mul_(15)
    return model


def _batch(left_pad: tuple[int, ...] = (2,), rows: int = 2, seed: int = 1) -> Batch:
    inputs = random_batch(rows, 6, seed=seed, left_pad=left_pad)
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return Batch(inputs, [str(i) for i in range(rows)], inputs["attention_mask"].sum(-1))


@pytest.fixture(scope="module", params=TEXT_FAMILIES)
def family_model(request):
    return request.param, _strong(tiny_text_model(request.param))


# -- the brute-force oracle ----------------------------------------------------------------------------------------
def _frozen_module(module: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The norm module applied to ``x`` with its scale replaced by ``sigma``: rescale the module's own output."""
    x = x.float()
    eps = float(getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6)))
    if isinstance(module, torch.nn.LayerNorm):
        own = (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
        bias = module.bias if module.bias is not None else 0.0
        return (module(x) - bias) * own / sigma + bias
    own = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return module(x).float() * own / sigma


def _log_prob(model: torch.nn.Module, residual: torch.Tensor, sigma: torch.Tensor, target: int,
              vocabulary: torch.Tensor | None = None) -> torch.Tensor:
    adapter = get_adapter(model)
    logits = adapter.unembed_module(_frozen_module(adapter.final_norm_module, residual, sigma)).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    if vocabulary is not None:
        target = int((vocabulary == target).nonzero())
        logits = logits[..., vocabulary]
    return logits.log_softmax(-1)[..., target]


def _final_scale(model, acts) -> torch.Tensor:
    adapter = get_adapter(model)
    final = acts.get("resid_post", adapter.n_layers - 1).float()
    eps = float(getattr(adapter.final_norm_module, "variance_epsilon", getattr(adapter.final_norm_module, "eps", 0)))
    if isinstance(adapter.final_norm_module, torch.nn.LayerNorm):
        return (final.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    return (final.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def _post_write(module: torch.nn.Module | None, vector: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """A part of ``whole`` read through a post norm frozen at ``whole``'s scale (identity without a post norm)."""
    if module is None:
        return vector
    eps = float(getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6)))
    return _frozen_module(module, vector, (whole.float().pow(2).mean(-1, keepdim=True) + eps).sqrt())


def _post_module(model, layer: int, name: str):
    adapter = get_adapter(model)
    return getattr(adapter.layers[layer], name) if adapter.family.post_ffn_norm is not None else None


# -- tests ---------------------------------------------------------------------------------------------------------
def test_pure_math_by_hand():
    base = torch.tensor([0.0, 0.0, 0.0])
    delta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    got = log_probability_increase_from_logits(base, delta, 0)
    expected = torch.log(torch.tensor(torch.e / (torch.e + 2))) - torch.log(torch.tensor(1 / 3))
    assert torch.allclose(got, torch.stack([expected, torch.tensor(0.0)]))
    scaled = log_probability_increase_from_logits(base, delta, 0, scale=torch.tensor([3.0, 5.0]))
    assert torch.allclose(scaled, log_probability_increase_from_logits(base, delta * 3, 0))
    capped = log_probability_increase_from_logits(base, delta * 100, 0, softcap=2.0)  # tanh saturates at the cap
    assert torch.allclose(capped[0], torch.log(torch.tensor(torch.e ** 2 / (torch.e ** 2 + 2) * 3)), atol=1e-6)


def test_frozen_readout_at_the_final_residual_is_the_model(family_model):
    """bs(final residual) with σ of that residual reproduces the model's logits (norm bias, soft-cap included)."""
    _, model = family_model
    adapter = get_adapter(model)
    batch = _batch()
    with torch.no_grad(), capture(model, sites="resid_post", layers=adapter.n_layers - 1) as acts:
        logits = model(**batch.inputs).logits[:, -1]
    final = acts.get("resid_post")[:, 0]
    readout = FrozenReadout.from_adapter(adapter)
    z = readout.logits(final, adapter.final_norm().scale(final))
    if readout.softcap:
        z = torch.tanh(z / readout.softcap) * readout.softcap
    assert torch.allclose(z, logits, **TOL)


def test_neuron_lpi_equals_brute_force(family_model):
    family, model = family_model
    adapter = get_adapter(model)
    batch = _batch()
    targets = token_targets(batch, [5, 9])
    scores = log_probability_increase(model, batch, targets, chunk_size=7).values  # [2, 1, L, d_ff]
    residual_sites = ["resid_pre", "attn_out"] if adapter.family.parallel_residual else ["ffn_in"]
    with torch.no_grad(), capture(model, sites=["neuron", "ffn_out", "resid_post", *residual_sites]) as acts:
        model(**batch.inputs)
    sigma = _final_scale(model, acts)[:, 0]
    generator = torch.Generator().manual_seed(0)
    for layer in range(adapter.n_layers):
        residual = (acts.get("resid_pre", layer) + acts.get("attn_out", layer) if adapter.family.parallel_residual
                    else acts.get("ffn_in", layer))[:, 0]
        post = _post_module(model, layer, adapter.family.post_ffn_norm or "")
        for neuron in torch.randint(0, adapter.d_ff, (3,), generator=generator).tolist():
            for row, target in enumerate([5, 9]):
                write = acts.get("neuron", layer)[row, 0, neuron] * adapter.value_vectors(layer)[neuron]
                write = _post_write(post, write[None], acts.get("ffn_out", layer)[row])[0]
                with torch.no_grad():
                    expected = (_log_prob(model, residual[row] + write, sigma[row], target)
                                - _log_prob(model, residual[row], sigma[row], target))
                assert torch.allclose(scores[row, 0, layer, neuron], expected, **TOL), (family, layer, neuron)


def test_post_ffn_norm_writes_sum_to_the_ffn_write():
    """Gemma-2 / OLMo-2: Σ_i g_p ⊙ a_i w_i / σ_p = post_norm(ffn_out) — the neuron writes LPI scores add up."""
    for family in ("gemma2", "olmo2"):
        model = tiny_text_model(family)
        adapter = get_adapter(model)
        with torch.no_grad(), capture(model, sites=["neuron", "ffn_out"], layers=0) as acts:
            model(**_batch().inputs)
        writes = acts.get("neuron")[:, 0, :, None] * adapter.value_vectors(0)  # [B, d_ff, d]
        post = getattr(adapter.layers[0], adapter.family.post_ffn_norm)
        summed = _post_write(post, writes.sum(1), acts.get("ffn_out")[:, 0])
        with torch.no_grad():
            assert torch.allclose(summed, post(acts.get("ffn_out")[:, 0]), **TOL)


def test_gpt2_layer_norm_bias_matters():
    """The final LayerNorm's bias enters the frozen readout: dropping it (the reference's choice) changes the LPI,
    while the brute-force test above, which keeps it, matches."""
    model = _strong(tiny_text_model("gpt2"))
    batch = _batch()
    targets = token_targets(batch, [5, 9])
    bias = get_adapter(model).final_norm_module.bias
    with torch.no_grad():
        bias.copy_(3 * torch.randn(bias.shape, generator=torch.Generator().manual_seed(0)))
    with_bias = log_probability_increase(model, batch, targets, layers=[1]).values
    with torch.no_grad():
        bias.zero_()
    without = log_probability_increase(model, batch, targets, layers=[1]).values
    assert (with_bias - without).abs().max() > 10 * (with_bias.abs().max() * 1e-4)


def test_chunked_equals_unchunked_and_registered():
    model = _strong(tiny_text_model("llama"))
    batch = _batch()
    small = log_probability_increase(model, batch, chunk_size=1).values
    large = log_probability_increase(model, batch, chunk_size=10_000).values
    assert torch.allclose(small, large, atol=1e-6)
    assert get_method("log_probability_increase").function is log_probability_increase


@pytest.mark.parametrize("family", ["llama", "gemma2"])  # gemma2: a post-FFN norm scales the scored vectors
def test_products_queued_before_the_forward_give_the_same_scores(family, monkeypatch):
    """What a GPU does (the first layer's first products issued before the forward, within QUEUE_BYTES), forced
    on the CPU: the same scores to the bit, whether all, some or none of the chunks are queued."""
    from neuronscope.attribute import frozen_readout
    from neuronscope.attribute.residual import scored_value_vectors

    model = _strong(tiny_text_model(family))
    adapter = get_adapter(model)
    batch = _batch()
    plain = log_probability_increase(model, batch, chunk_size=5, layers=[1, 0]).values
    monkeypatch.setattr(frozen_readout, "QUEUE_DEVICES", ("cpu", "cuda"))
    for budget in (5 * 64 * 4, 10**9):  # one chunk of 5 neurons x V = 64 float32, or every chunk
        monkeypatch.setattr(frozen_readout, "QUEUE_BYTES", budget)
        queued = FrozenReadout.from_adapter(adapter).queue(scored_value_vectors(adapter, 1), 5)
        assert len(queued) == (1 if budget < 10**9 else -(-adapter.d_ff // 5))
        assert torch.equal(log_probability_increase(model, batch, chunk_size=5, layers=[1, 0]).values, plain)


def test_candidate_set_is_exact_log_softmax_over_candidates_and_targets():
    model = _strong(tiny_text_model("gpt2"))
    adapter = get_adapter(model)
    batch = _batch()
    targets = token_targets(batch, [5, 9])
    everything = log_probability_increase(model, batch, targets, candidates=torch.arange(adapter.vocab_size))
    full = log_probability_increase(model, batch, targets)
    assert torch.allclose(everything.values, full.values, atol=1e-6)

    candidates = [3, 11, 17, 40]
    subset = log_probability_increase(model, batch, targets, candidates=candidates, layers=[1]).values
    vocabulary = torch.tensor(sorted({*candidates, 5, 9}))
    with torch.no_grad(), capture(model, sites=["neuron", "ffn_in", "resid_post"]) as acts:
        model(**batch.inputs)
    sigma = _final_scale(model, acts)[:, 0]
    for row, target in enumerate([5, 9]):
        for neuron in (0, 13, 50):
            write = acts.get("neuron", 1)[row, 0, neuron] * adapter.value_vectors(1)[neuron]
            residual = acts.get("ffn_in", 1)[row, 0]
            with torch.no_grad():
                expected = (_log_prob(model, residual + write, sigma[row], target, vocabulary)
                            - _log_prob(model, residual, sigma[row], target, vocabulary))
            assert torch.allclose(subset[row, 0, 0, neuron], expected, **TOL)
    assert not torch.allclose(subset, full.values[:, :, 1:], atol=1e-4)


def test_padded_batch_equals_rows_alone():
    model = _strong(tiny_text_model("llama"))
    batch = _batch(left_pad=(2,), rows=2)
    targets = token_targets(batch, [5, 9])
    together = log_probability_increase(model, batch, targets).values
    lengths = batch.lengths.tolist()
    for row in range(2):
        ids = batch.input_ids[row:row + 1, batch.seq_len - lengths[row]:]
        alone = Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ["x"], torch.tensor([ids.shape[1]]))
        single = log_probability_increase(model, alone, token_targets(alone, [[5, 9][row]])).values
        assert torch.allclose(together[row], single[0], atol=1e-5)


def test_heads_sum_with_bias_to_attention_output(family_model):
    family, model = family_model
    adapter = get_adapter(model)
    with torch.no_grad(), capture(model, sites=["attn", "attn_out"], positions="all") as acts:
        model(**_batch().inputs)
    for layer in range(adapter.n_layers):
        outs = head_outputs(adapter, layer, acts.get("attn", layer))  # [B, T, H, d]
        bias = getattr(adapter.module(layer, adapter.family.attn_out), "bias", None)
        total = outs.sum(-2) + (bias if bias is not None else 0)
        assert torch.allclose(total, acts.get("attn_out", layer), **TOL), family


def test_head_lpi_equals_brute_force(family_model):
    family, model = family_model
    adapter = get_adapter(model)
    batch = _batch()
    scores = head_log_probability_increase(model, batch, chunk_size=8).values  # [B, 1, L, H]
    assert scores.shape == (2, 1, adapter.n_layers, adapter.n_heads)
    targets = model(**batch.inputs).logits[:, -1].argmax(-1).tolist()
    with torch.no_grad(), capture(model, sites=["attn", "attn_out", "resid_pre", "resid_post"]) as acts:
        model(**batch.inputs)
    sigma = _final_scale(model, acts)[:, 0]
    for layer in range(adapter.n_layers):
        outs = head_outputs(adapter, layer, acts.get("attn", layer))[:, 0]  # [B, H, d]
        post = _post_module(model, layer, "post_attention_layernorm")
        for row, target in enumerate(targets):
            for head in range(adapter.n_heads):
                write = _post_write(post, outs[row, head][None], acts.get("attn_out", layer)[row])[0]
                residual = acts.get("resid_pre", layer)[row, 0]
                with torch.no_grad():
                    expected = (_log_prob(model, residual + write, sigma[row], target)
                                - _log_prob(model, residual, sigma[row], target))
                assert torch.allclose(scores[row, 0, layer, head], expected, **TOL), (family, layer, head)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_source_and_attention_neuron_lpi_equal_brute_force(family):
    """Oracle: probabilities from the model's ``output_attentions`` (eager copy), value states from a hook on the
    value projection, then A[t, s] v_s W_O[slice] (and its coordinates) scored by brute force."""
    model = _strong(tiny_text_model(family))
    adapter = get_adapter(model)
    batch = _batch()
    heads = [(1, 3), (0, 1)]
    sources = torch.tensor([0, 3, 5])
    per_source = head_source_log_probability_increase(model, batch, heads=heads, sources=sources, chunk_size=2)
    neurons = head_source_log_probability_increase(model, batch, heads=heads, sources=sources, coordinates=True,
                                                   chunk_size=5)
    assert per_source.values.shape == (2, 1, 2, 3) and neurons.values.shape == (2, 1, 2, 3, adapter.head_dim)

    eager = _strong(tiny_text_model(family))
    eager.set_attn_implementation("eager")
    values = {}
    for layer in (0, 1):
        attention = attention_module(adapter, layer)
        kind = next(k for k in ("v_proj", "c_attn") if hasattr(attention, k))
        module = getattr(attention_module(get_adapter(eager), layer), kind)
        module.register_forward_hook(lambda m, a, out, layer=layer, kind=kind: values.__setitem__(
            layer, value_states_from_projection(adapter, kind, out)))
    with torch.no_grad(), capture(eager, sites=["resid_pre", "resid_post", "attn_out"]) as acts:
        out = eager(**batch.inputs, output_attentions=True)
    targets = out.logits[:, -1].argmax(-1).tolist()
    sigma = _final_scale(eager, acts)[:, 0]
    group = adapter.n_heads // adapter.n_kv_heads
    for slot, (layer, head) in enumerate(heads):
        probs = out.attentions[layer][:, head, -1]  # [B, T]
        rows = adapter.attn_output_weight(layer)[adapter.head_slice(head)]  # [d_head, d]
        post = _post_module(eager, layer, "post_attention_layernorm")
        for row, target in enumerate(targets):
            residual = acts.get("resid_pre", layer)[row, 0]

            def lpi(write, row=row, target=target, residual=residual, layer=layer, post=post):
                write = _post_write(post, write[None], acts.get("attn_out", layer)[row])[0]
                with torch.no_grad():
                    return (_log_prob(eager, residual + write, sigma[row], target)
                            - _log_prob(eager, residual, sigma[row], target))

            for k, source in enumerate(sources.tolist()):
                value = values[layer][row, source, head // group]  # [d_head]
                coefficients = probs[row, source] * value
                assert torch.allclose(per_source.values[row, 0, slot, k], lpi(coefficients @ rows), **TOL)
                for n in (0, adapter.head_dim - 1):
                    assert torch.allclose(neurons.values[row, 0, slot, k, n], lpi(coefficients[n] * rows[n]), **TOL)


def test_padding_sources_score_zero_and_results_round_trip(tmp_path):
    model = _strong(tiny_text_model("qwen2"))
    batch = _batch(left_pad=(2,))
    scores = head_source_log_probability_increase(model, batch, heads=[(1, 0)])
    assert torch.all(scores.values[0, 0, 0, :2] == 0)  # row 0 has two pad positions
    normalised = scores.normalised()
    assert float(normalised.min()) == 0.0 and float(normalised.max()) == 1.0
    scores.save(tmp_path / "src")
    loaded = HeadSourceScores.load(tmp_path / "src")
    assert torch.equal(loaded.values, scores.values) and torch.equal(loaded.heads, scores.heads)
    assert loaded.meta["unit"] == "head_source"


def test_attention_implementation_is_restored_and_errors_are_clear():
    model = tiny_text_model("llama")
    before = model.config._attn_implementation
    head_source_log_probability_increase(model, _batch(), heads=[(0, 0)])
    assert model.config._attn_implementation == before
    with pytest.raises(NeuronscopeError, match="head 9 is out of range"):
        head_source_log_probability_increase(model, _batch(), heads=[(0, 9)])
    with pytest.raises(NeuronscopeError, match="sources must be positions"):
        head_source_log_probability_increase(model, _batch(), heads=[(0, 0)], sources=[99])
    with pytest.raises(NeuronscopeError, match="candidate token ids"):
        log_probability_increase(model, _batch(), candidates=[1000])
    with pytest.raises(NeuronscopeError, match="unit must be"):
        log_probability_increase(model, _batch(), unit="patch")


def test_head_source_top_k_rows():
    values = torch.zeros(2, 1, 2, 3, 4)
    values[0, 0, 1, 2, 3] = 5.0  # head row 1, third source, coordinate 3
    values[1, 0, 0, 0, 1] = 2.0
    scores = HeadSourceScores(values, torch.tensor([[0, 2], [1, 3]]), torch.tensor([[4, 6, 8], [4, 6, 8]]))
    rows, top = scores.top_k(2)
    assert rows.tolist() == [[1, 3, 8, 3], [0, 2, 4, 1]] and top.tolist() == [5.0, 2.0]
    ragged = HeadSourceScores(values[..., 1], scores.heads, torch.tensor([[4, 6, 8], [1, 2, 3]]))
    with pytest.raises(NeuronscopeError, match="pass example="):
        ragged.top_k(1)
    assert ragged.top_k(1, example=1)[0].tolist() == [[0, 2, 1]]  # that example's own source positions


def test_image_patches_of_the_top_head_on_a_tiny_llava():
    """The VLM recipe: rank heads by LPI, then score the top head's contribution from each image token."""
    from PIL import Image

    from helpers.tiny_vlms import tiny_llava
    from neuronscope.models.image_layout import image_layout

    vlm = tiny_llava()
    image = Image.new("RGB", (48, 48), (200, 10, 10))
    inputs = vlm.inputs([image, image])
    batch = Batch(dict(inputs), ["a", "b"], inputs["attention_mask"].sum(-1))
    before = vlm.model.config.get_text_config()._attn_implementation
    heads = head_log_probability_increase(vlm.model, batch)
    top = heads.top_k(1)[0]
    positions = image_layout(vlm.model, inputs, 0).positions
    patches = head_source_log_probability_increase(vlm.model, batch, heads=top, sources=positions)
    assert patches.values.shape == (2, 1, 1, positions.numel())
    assert torch.isfinite(patches.values).all() and patches.values.abs().max() > 0
    assert vlm.model.config.get_text_config()._attn_implementation == before


def test_pure_math_docstring_examples_run():
    import doctest

    from neuronscope.attribute.comparative import query_scores

    for function in (log_probability_increase_from_logits, query_scores):
        finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        for test in finder.find(function, globs={"torch": torch, function.__name__: function}):
            runner.run(test)
        assert runner.failures == 0 and runner.tries > 0, function.__name__
