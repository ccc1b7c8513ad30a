"""The independent oracle of exact residual accounting, and the tests run against it on every text family the
adapter accepts (the ``tests/models/test_accounting_*.py`` files each run them over a group of families, so that
no file takes long).

The oracle never asks the adapter what the residual is. With plain forward hooks on the stock modules it measures,
at layer ``l`` and each scored position:

- ``r_l``, the residual before the FFN's write: the layer output in a forward where the FFN output projection's
  output is zeroed (the FFN is position-wise, so nothing else in the layer changes; parallel or sequential alike;
  BLOOM and MPT add the residual inside their FFN module, so the module's own output cannot be zeroed);
- ``F_l``, the FFN's write: the layer output minus ``r_l``; its map from the FFN output projection's output ``o_l``
  is read off coordinate-wise, ``c_l = F_l / o_l`` (multipliers, post-FFN norms: whatever the model does), so a
  neuron writes ``c_l ⊙ a_i w_i``;
- the attention write the same way (FFN and any parallel mixer zeroed, minus the layer input), per head through
  ``W_O``'s rows;
- the frozen readout: the model's own final-norm module rescaled to the final residual's scale, its unembedding
  and the family's logit post-processing, checked against the model's own logits first.

Then: hooked == plain bit for bit; LPIs of neurons and heads == the log-softmax recomputed from ``r_l`` and the
writes (float64, 1e-6); Σ contributions == <o_l − bias, u_t> (raw) and <F_l − c ⊙ bias, u_t> (``residual_write``);
zeroing a neuron moves the layer output by exactly its write (families whose write is linear) or by the exact
post-norm difference (post-FFN norms).

Gemma-4 adds a per-layer-input write and a layer scalar *after* the FFN's add: the oracle zeroes the former at
layer ``l`` (its projection) and divides by the latter, and otherwise measures the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from helpers.tiny_families import tiny_family_model
from neuronscope.attribute.contribution import contribution
from neuronscope.attribute.log_probability_increase import (
    head_log_probability_increase,
    log_probability_increase,
)
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models import get_adapter
from neuronscope.trace import capture, intervene, suppress


def scored_positions(inputs) -> tuple[int, ...]:
    """Two scored positions of a batch: the last and the third from last (5 and 3 for 6 tokens)."""
    length = int(inputs["input_ids"].shape[1])
    return (length - 1, length - 3)
F64 = dict(rtol=1e-9, atol=1e-10)

# What the test knows of each family's logit post-processing (checked against the model's own logits below).
LOGIT_SCALE = {"granite": lambda m: 1 / m.config.logits_scaling, "granite_swa": lambda m: 1 / m.config.logits_scaling,
               "hyperclovax": lambda m: m.config.logits_scaling, "cohere": lambda m: m.config.logit_scale,
               "cohere2": lambda m: m.config.logit_scale, "falcon_h1": lambda m: m.config.lm_head_multiplier,
               "minicpm3": lambda m: 1 / m.config.logits_scaling}
# Modules running in parallel with attention that the head oracle zeroes as well.
PARALLEL_MIXERS = {"falcon_h1": ("mamba",)}
# Writes after the FFN's residual add (zeroed at layer l by the oracle) and a scalar on the layer output.
AFTER_FFN = {"gemma4_text": ("per_layer_projection",)}


def _model_type(case: str) -> str:
    return case.partition(":")[0]


@dataclass
class Measured:
    x: dict[int, torch.Tensor]        # layer input        [B, P, d]
    y: dict[int, torch.Tensor]        # layer output
    a: dict[int, torch.Tensor]        # FFN output projection input  [B, P, d_ff]
    o: dict[int, torch.Tensor]        # FFN output projection output [B, P, d]
    h: dict[int, torch.Tensor]        # attention output projection input / output
    ho: dict[int, torch.Tensor]
    logits: torch.Tensor              # [B, P, V]


def _pick(tensor, positions):
    tensor = tensor[0] if isinstance(tensor, tuple) else tensor
    return tensor[:, list(positions)].detach().clone()


def _zero_output(module):
    return module.register_forward_hook(lambda m, a, out: (torch.zeros_like(out[0]), *out[1:])
                                        if isinstance(out, tuple) else torch.zeros_like(out))


def _run(model, inputs, zero: dict[int, list] | None = None, want: tuple[str, ...] = (),
         positions: tuple[int, ...] | None = None) -> dict:
    """One forward with plain hooks: zero the outputs of ``zero[layer]`` modules, keep the layer outputs at
    ``positions`` (default: the scored positions of ``inputs``)."""
    at = positions or scored_positions(inputs)
    adapter = get_adapter(model)
    spec, handles, seen = adapter.family, [], {}
    for modules in (zero or {}).values():
        handles += [_zero_output(module) for module in modules]
    for layer in range(adapter.n_layers):
        block = adapter.layers[layer]
        handles.append(block.register_forward_pre_hook(
            lambda m, a, k, layer=layer: seen.__setitem__(("x", layer), _pick(a[0] if a else k["hidden_states"], at)),
            with_kwargs=True))
        handles.append(block.register_forward_hook(
            lambda m, a, out, layer=layer: seen.__setitem__(("y", layer), _pick(out, at))))
        if "inner" in want and adapter.has_ffn(layer):
            down = adapter.module(layer, spec.down)
            handles.append(down.register_forward_pre_hook(
                lambda m, a, layer=layer: seen.__setitem__(("a", layer), _pick(a[0], at))))
            handles.append(down.register_forward_hook(
                lambda m, a, out, layer=layer: seen.__setitem__(("o", layer), _pick(out, at))))
        if "inner" in want and adapter.has_attention(layer):
            out_proj = adapter.module(layer, spec.attn_out)
            handles.append(out_proj.register_forward_pre_hook(
                lambda m, a, layer=layer: seen.__setitem__(("h", layer), _pick(a[0], at))))
            handles.append(out_proj.register_forward_hook(
                lambda m, a, out, layer=layer: seen.__setitem__(("ho", layer), _pick(out, at))))
    try:
        with torch.no_grad():
            seen["logits"] = _pick(model(**inputs).logits, at)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _layer_scale(adapter, layer) -> float:
    scalar = getattr(adapter.layers[layer], "layer_scalar", None)
    return 1.0 if scalar is None else float(scalar)


def _after_ffn(adapter, case, layer) -> list:
    names = AFTER_FFN.get(_model_type(case), ()) or AFTER_FFN.get(adapter.text_config.model_type, ())
    return [getattr(adapter.layers[layer], name) for name in names
            if getattr(adapter.layers[layer], name, None) is not None]


class Oracle:
    """Residuals, writes and the frozen readout of one tiny model, measured by plain hooks."""

    def __init__(self, case: str, model, inputs):
        self.case, self.model, self.inputs = case, model, inputs
        self.adapter = adapter = get_adapter(model)
        real = _run(model, inputs, want=("inner",))
        self.real = real
        self.r, self.F, self.c, self.A, self.ca = {}, {}, {}, {}, {}
        for layer in adapter.ffn_layers:
            ffn = adapter.module(layer, adapter.family.down)  # BLOOM / MPT add the residual inside their FFN module
            extras = _after_ffn(adapter, case, layer)
            scale = _layer_scale(adapter, layer)
            kept = _run(model, inputs, {layer: extras})[("y", layer)] / scale if extras or scale != 1 else \
                real[("y", layer)]
            self.r[layer] = _run(model, inputs, {layer: [ffn, *extras]})[("y", layer)] / scale
            self.F[layer] = kept - self.r[layer]
            self.c[layer] = self.F[layer] / real[("o", layer)]
        for layer in adapter.attention_layers:
            block = adapter.layers[layer]
            zero = [adapter.module(layer, adapter.family.down)] if adapter.has_ffn(layer) else []
            zero += [getattr(block, name) for name in PARALLEL_MIXERS.get(adapter.text_config.model_type, ())]
            zero += _after_ffn(adapter, case, layer)
            after = _run(model, inputs, {layer: zero})[("y", layer)] / _layer_scale(adapter, layer)
            self.A[layer] = after - real[("x", layer)]
            self.ca[layer] = self.A[layer] / real[("ho", layer)]
        self.final = real[("y", adapter.n_layers - 1)]
        self.sigma = self._scale(self.final)

    # -- readout -------------------------------------------------------------------------------------------
    def _norm(self):
        return self.adapter.final_norm_module

    def _centres(self) -> bool:
        name = type(self._norm()).__name__
        return "LayerNorm" in name or isinstance(self._norm(), torch.nn.LayerNorm)

    def _eps(self) -> float:
        module = self._norm()
        for name in ("variance_epsilon", "eps", "epsilon"):
            if isinstance(getattr(module, name, None), (int, float)):
                return float(getattr(module, name))
        return 1e-5  # OLMo's parameter-free LayerNorm hard-codes F.layer_norm(..., eps=1e-5)

    def _scale(self, z):
        eps = self._eps()
        if self._centres():
            return (z.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
        return (z.pow(2).mean(-1, keepdim=True) + eps).sqrt()

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The frozen readout of residuals ``z [..., P, d]`` (scale frozen at the final residual's, per position)."""
        module = self._norm()
        with torch.no_grad():
            bias = module(torch.full_like(z, 0.5)) if self._centres() else 0.0
            sigma = self.sigma if z.dim() == 3 else self.sigma[:, :, None]  # [B, P, 1] or [B, P, 1, 1]
            normed = (module(z) - bias) * self._scale(z) / sigma + bias
            raw = self.model.get_output_embeddings()(normed)
        scale = LOGIT_SCALE.get(_model_type(self.case), lambda m: 1.0)(self.model)
        raw = raw * scale
        cap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        return torch.tanh(raw / cap) * cap if cap else raw

    def lpi(self, r: torch.Tensor, v: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``log softmax(z(r + v))[w] − log softmax(z(r))[w]`` for ``r [B, P, d]``, writes ``v [B, P, k, d]``."""
        base = self.logits(r).log_softmax(-1)
        new = self.logits(r[:, :, None] + v).log_softmax(-1)  # sigma broadcasts over k
        index = targets[:, :, None, None].expand(*new.shape[:3], 1)
        return new.gather(-1, index)[..., 0] - base.gather(-1, targets[..., None])


def make_setup(cases: tuple[str, ...]):
    """The module-scoped ``setup`` fixture over ``cases``: ``(case, model, adapter, oracle, batch, targets)``."""

    @pytest.fixture(scope="module", params=cases)
    def setup(request):
        return build(request.param)

    return setup


def build(case: str):
    model = tiny_family_model(case, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 60, (2, 6), generator=generator)
    return build_for(case, model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})


def build_for(case: str, model, inputs: dict):
    """The setup tuple for any model and unpadded inputs (``case``'s model type names its logit facts)."""
    adapter = get_adapter(model)
    with torch.no_grad():  # stronger value vectors, so that LPIs are well away from zero
        for layer in adapter.ffn_layers:
            adapter.value_vectors(layer).mul_(4)
    positions = scored_positions(inputs)
    oracle = Oracle(case, model, inputs)
    predicted = oracle.real["logits"].argmax(-1)  # [B, P]
    rows = int(inputs["input_ids"].shape[0])
    targets = TargetSet(predicted, torch.tensor([positions] * rows), torch.ones(rows, 2, dtype=torch.bool))
    batch = Batch(inputs, ["row"] * rows, torch.full((rows,), int(inputs["input_ids"].shape[1])))
    return case, model, adapter, oracle, batch, targets


def build_vlm_setup(family: str):
    """The oracle setup of one tiny VLM family (float64, two same-size images, no padding)."""
    import numpy as np
    from PIL import Image

    from helpers.tiny_vlms import build_tiny_vlm, gradient_image
    from helpers.tiny_vlms_current import FAMILIES as CURRENT_FAMILIES
    from helpers.tiny_vlms_current import build_current_vlm

    vlm = build_current_vlm(family) if family in CURRENT_FAMILIES else build_tiny_vlm(family)
    model = vlm.model.double()
    image = gradient_image(40, 30)
    flipped = Image.fromarray(np.ascontiguousarray(np.asarray(image)[::-1]))
    inputs = dict(vlm.inputs([image, flipped]))
    inputs.pop("labels", None)
    assert bool((inputs["attention_mask"] == 1).all())
    inputs = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
    return build_for(model.config.model_type, model, inputs)


def test_oracle_readout_is_the_models_own(setup):
    case, model, adapter, oracle, _, _ = setup
    real = oracle.real["logits"]
    # some families return float32 logits from float64 models (Nemotron-H): compare at float32 precision there
    tol = F64 if real.dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(oracle.logits(oracle.final), real.double(), **tol)
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits_from_residual(oracle.final).double(), real.double(), **tol)


def test_hooked_forward_equals_plain(setup):
    case, model, adapter, oracle, batch, _ = setup
    ffn_sites = [s for s in ("neuron", "act", "up", "gate", "pre", "ffn_out", "ffn_in") if _has_site(adapter, s)]
    with torch.no_grad():
        plain = model(**batch.inputs).logits
        with capture(model, sites=ffn_sites, layers=adapter.ffn_layers, positions="all") as acts, \
                capture(model, sites=["attn", "attn_out"], layers=adapter.attention_layers, positions="all"), \
                capture(model, sites=["resid_pre", "resid_post"], positions="all"):
            hooked = model(**batch.inputs).logits
    assert torch.equal(plain, hooked)
    for layer in adapter.ffn_layers:
        at = list(scored_positions(batch.inputs))
        torch.testing.assert_close(acts.get("neuron", layer)[:, at], oracle.real[("a", layer)], **F64)


def _has_site(adapter, site) -> bool:
    from neuronscope.errors import SiteError
    from neuronscope.trace.sites import resolve_site

    try:
        resolve_site(adapter, site, adapter.ffn_layers[0])
        return True
    except SiteError:
        return False


def test_the_write_map_is_linear_in_the_ffn_output(setup):
    """c_l = F_l / o_l is one number per position for multiplier families, m · g / σ_p for post norms: the
    oracle's neuron writes are then exact shares of F_l."""
    case, model, adapter, oracle, _, _ = setup
    for layer in adapter.ffn_layers:
        a, w = oracle.real[("a", layer)], adapter.value_vectors(layer).detach()
        bias = _down_bias(adapter, layer)
        shares = oracle.c[layer] * (a @ w + bias)
        torch.testing.assert_close(shares, oracle.F[layer], **F64)


def _down_bias(adapter, layer) -> torch.Tensor:
    bias = getattr(adapter.module(layer, adapter.family.down), "bias", None)
    return torch.zeros(adapter.d_model, dtype=torch.float64) if bias is None else bias.detach()


def test_neuron_lpi_equals_log_softmax_from_the_measured_residual(setup):
    case, model, adapter, oracle, batch, targets = setup
    scores = log_probability_increase(model, batch, targets, compute_dtype=torch.float64).values
    for layer in adapter.ffn_layers:
        a, w = oracle.real[("a", layer)], adapter.value_vectors(layer).detach()  # [B, P, d_ff], [d_ff, d]
        writes = oracle.c[layer][:, :, None] * (a[..., None] * w)  # [B, P, d_ff, d]
        expected = oracle.lpi(oracle.r[layer], writes, targets.token_ids)
        assert expected.abs().max() > 1e-4  # a real signal
        torch.testing.assert_close(scores[:, :, layer].double(), expected, rtol=0, atol=1e-6)
    for layer in set(range(adapter.n_layers)) - set(adapter.ffn_layers):
        assert bool((scores[:, :, layer] == 0).all())  # hybrids: layers without an FFN have no neurons


def test_head_lpi_equals_log_softmax_from_the_layer_input(setup):
    case, model, adapter, oracle, batch, targets = setup
    scores = head_log_probability_increase(model, batch, targets, compute_dtype=torch.float64).values
    for layer in adapter.attention_layers:
        head_dim = adapter.head_dim_of(layer)
        site = oracle.real[("h", layer)].view(*targets.positions.shape, adapter.n_heads, head_dim)
        rows = adapter.attn_output_weight(layer).detach().view(adapter.n_heads, head_dim, -1)
        head_out = torch.einsum("bphk,hkd->bphd", site, rows)
        writes = oracle.ca[layer][:, :, None] * head_out
        expected = oracle.lpi(oracle.real[("x", layer)], writes, targets.token_ids)
        torch.testing.assert_close(scores[:, :, layer].double(), expected, rtol=0, atol=1e-6)


def test_contributions_sum_to_the_ffn_write(setup):
    case, model, adapter, oracle, batch, targets = setup
    raw = contribution(model, batch, targets).values
    written = contribution(model, batch, targets, residual_write=True).values
    u = adapter.unembedding().detach()[targets.token_ids]  # [B, P, d]
    for layer in adapter.ffn_layers:
        bias = _down_bias(adapter, layer)
        torch.testing.assert_close(raw[:, :, layer].sum(-1), ((oracle.real[("o", layer)] - bias) * u).sum(-1), **F64)
        share = oracle.F[layer] - oracle.c[layer] * bias
        # RMSNorm modules compute in float32 even in float64 models: a post-FFN norm rounds the model's own write
        tol = F64 if adapter.family.post_ffn_norm is None else dict(rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(written[:, :, layer].sum(-1), (share * u).sum(-1), **tol)
        a, w = oracle.real[("a", layer)], adapter.value_vectors(layer).detach()
        per_neuron = ((oracle.c[layer][:, :, None] * (a[..., None] * w)) * u[:, :, None]).sum(-1)
        torch.testing.assert_close(written[:, :, layer], per_neuron, **tol)


def test_zeroing_a_neuron_moves_the_residual_by_its_write(setup):
    case, model, adapter, oracle, batch, targets = setup
    index = adapter.d_ff // 2
    scored = scored_positions(batch.inputs)[0]
    positions = torch.tensor([[scored]] * len(batch))
    for layer in adapter.ffn_layers:
        down = adapter.module(layer, adapter.family.down)

        def zero_by_hand(module, args):
            value = args[0].clone()
            value[:, scored, index] = 0
            return (value,)

        handle = down.register_forward_pre_hook(zero_by_hand)
        by_hand = _run(model, batch.inputs)
        handle.remove()
        with intervene(model, suppress(torch.tensor([[layer, index]]), positions=positions)):
            suppressed = _run(model, batch.inputs)
        delta = (suppressed[("y", layer)] - oracle.real[("y", layer)])[:, 0] / _layer_scale(adapter, layer)
        torch.testing.assert_close(suppressed[("y", layer)], by_hand[("y", layer)], rtol=0, atol=0)
        a, w = oracle.real[("a", layer)][:, 0, index], adapter.value_vectors(layer).detach()[index]
        if adapter.family.post_ffn_norm is None and not _after_ffn(adapter, case, layer):
            torch.testing.assert_close(delta, -oracle.c[layer][:, 0] * a[:, None] * w, **F64)
        else:  # the exact (non-linear) change through the post-FFN norm module
            o = oracle.real[("o", layer)][:, 0]
            write = adapter.ffn_write(layer)
            expected = write.apply(o - a[:, None] * w) - write.apply(o)
            if not _after_ffn(adapter, case, layer):
                torch.testing.assert_close(delta, expected, **F64)
            assert math.isfinite(float(expected.detach().norm()))
