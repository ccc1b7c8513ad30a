"""The generic fallback for model types the registry does not know (remote code, newer transformers releases).

It finds the FFN and attention by the usual module names, takes the residual facts it can read from the config
(``use_parallel_residual`` / ``parallel_attn``, ``final_logit_softcapping``) and refuses anything it cannot place:
norm modules other than one attention and one FFN input norm (a post-FFN or sandwich norm), or config fields that
rescale the residual or the logits. Then :func:`check_generic` runs one short forward and checks, layer by layer
with plain hooks, that the layer output is the layer input plus the attention output plus the FFN output (in the
order the spec says) and that the logits are the readout of the last residual; a model that fails is refused with
the error it measured. So the fallback either accounts exactly or does not run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from neuronscope.errors import UnsupportedModelError
from neuronscope.models.spec import FamilySpec

if TYPE_CHECKING:
    from neuronscope.models.adapter import ModelAdapter

_MLP = ("mlp", "feed_forward", "ffn")
_DOWN = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "w2", "fc_out", "proj_out", "wo")
_ACT = ("act_fn", "act", "activation_fn", "activation")
_ATTN = ("self_attn", "attn", "attention", "self_attention")
_ATTN_OUT = ("o_proj", "out_proj", "dense", "c_proj", "wo")
_ATTN_NORM = ("input_layernorm", "ln_1", "attention_norm", "attention_layernorm", "norm_1")
_FFN_NORM = ("post_attention_layernorm", "ln_2", "pre_feedforward_layernorm", "ffn_norm", "feedforward_layernorm",
             "norm_2")
_PARALLEL_FIELDS = ("use_parallel_residual", "parallel_attn", "parallel_residual")
_SCALING_FIELDS = ("residual_multiplier", "logits_scaling", "logit_scale", "lm_head_multiplier", "scale_depth",
                   "residual_scale", "attn_out_multiplier", "ssm_out_multiplier", "mlp_multiplier")
TOLERANCE = 1e-4


def _first(module: nn.Module, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if isinstance(getattr(module, name, None), nn.Module)), None)


def _refuse(model_type: str, why: str) -> UnsupportedModelError:
    from neuronscope.models.lookup import unsupported

    return unsupported(model_type, f"the generic fallback cannot account for it exactly: {why}")


def generic_spec(layer: nn.Module, config: Any, model_type: str) -> FamilySpec:
    """A spec found by module names in one decoder layer, or an :class:`UnsupportedModelError` saying what is
    missing or what it cannot place."""
    mlp = _first(layer, _MLP)
    down = _first(getattr(layer, mlp), _DOWN) if mlp else None
    attn = _first(layer, _ATTN)
    attn_out = _first(getattr(layer, attn), _ATTN_OUT) if attn else None
    if down is None:
        raise _refuse(model_type, f"no FFN output projection named one of {', '.join(_DOWN)} in {', '.join(_MLP)}")
    if attn_out is None:
        raise _refuse(model_type, "no attention output projection found")
    attn_norm, ffn_norm = _first(layer, _ATTN_NORM), _first(layer, _FFN_NORM)
    norms = [name for name, child in layer.named_children() if "norm" in type(child).__name__.lower()]
    unplaced = [name for name in norms if name not in (attn_norm, ffn_norm)]
    if unplaced:
        raise _refuse(model_type, f"norm modules {unplaced} sit where the fallback cannot tell (a post-FFN or "
                                  "sandwich norm?)")
    scaling = [name for name in _SCALING_FIELDS if getattr(config, name, None) not in (None, 1, 1.0)]
    if scaling:
        raise _refuse(model_type, f"the config rescales the residual or the logits ({', '.join(scaling)})")
    parallel = any(bool(getattr(config, name, False)) for name in _PARALLEL_FIELDS) or ffn_norm is None
    mlp_module = getattr(layer, mlp)
    act = _first(mlp_module, _ACT)
    attention = getattr(layer, attn)
    value = "v_proj" if isinstance(getattr(attention, "v_proj", None), nn.Module) else None
    softcap = getattr(config, "final_logit_softcapping", None)
    return FamilySpec(
        name=f"generic:{model_type}",
        model_types=(model_type,),
        down=f"{mlp}.{down}",
        act=f"{mlp}.{act}" if act else None,
        up=f"{mlp}.up_proj" if hasattr(mlp_module, "up_proj") else None,
        gate=f"{mlp}.gate_proj" if hasattr(mlp_module, "gate_proj") else None,
        attn_out=f"{attn}.{attn_out}",
        ffn_norm=None if parallel else ffn_norm,
        attn_norm=attn_norm,
        parallel_residual=parallel,
        value=value,
        logits=(("softcap", "config.final_logit_softcapping"),) if softcap else (),
        conv1d=type(getattr(mlp_module, down)).__name__ == "Conv1D",
        notes="generic fallback: found by module names and self-checked on one forward at load time",
    )


def _relative(error: torch.Tensor, reference: torch.Tensor) -> float:
    return float(error.float().norm() / (reference.float().norm() + 1e-12))


def check_generic(adapter: ModelAdapter) -> None:
    """Run one 6-token forward and check the spec's residual identities and readout; refuse on a mismatch."""
    model, spec = adapter.model, adapter.family
    seen: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def keep(key: tuple[str, int], use_input: bool):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any = None) -> None:
            value = (args[0] if args else kwargs.get("hidden_states")) if use_input else output
            seen[key] = (value[0] if isinstance(value, tuple) else value).detach()
        return hook

    try:
        for layer in range(adapter.n_layers):
            block = adapter.layers[layer]
            handles.append(block.register_forward_pre_hook(keep(("in", layer), True), with_kwargs=True))
            handles.append(block.register_forward_hook(
                lambda m, a, k, o, layer=layer: keep(("out", layer), False)(m, a, k, o), with_kwargs=True))
            handles.append(adapter.module(layer, spec.down).register_forward_hook(
                lambda m, a, o, layer=layer: seen.__setitem__(("ffn", layer), o.detach())))
            handles.append(adapter.module(layer, spec.attn_out).register_forward_hook(
                lambda m, a, o, layer=layer: seen.__setitem__(("attn", layer), o.detach())))
        device = adapter.unembedding().device
        ids = torch.arange(6, device=device)[None] % max(adapter.vocab_size, 1)
        with torch.no_grad():
            logits = model(input_ids=ids).logits
    finally:
        for handle in handles:
            handle.remove()
    worst = 0.0
    for layer in range(adapter.n_layers):
        x, out = seen[("in", layer)], seen[("out", layer)]
        predicted = x + seen[("attn", layer)].to(x.device) + seen[("ffn", layer)].to(x.device)
        worst = max(worst, _relative(out - predicted, out))
    with torch.no_grad():
        readout = adapter.logits_from_residual(seen[("out", adapter.n_layers - 1)])
    logit_error = _relative(readout.to(logits.device) - logits, logits)
    if worst > TOLERANCE or logit_error > TOLERANCE:
        raise _refuse(
            adapter.model_type,
            f"its layers are not input + attention + FFN (relative error {worst:.2g}) or its logits are not the "
            f"readout of the last residual (relative error {logit_error:.2g})",
        )
