"""Resolve a family spec against a live Hugging Face model: layers, value vectors, heads, final norm, unembedding.

Module paths move between transformers versions, so nothing here hard-codes a path from the model's root: the
decoder comes from ``model.get_decoder()`` (probing ``language_model`` / ``text_model`` / ``transformer`` when that
fails) and the rest is resolved relative to one decoder layer, by the family spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError, UnsupportedModelError
from neuronscope.models.families import TEXT_SPECS, VISION_FAMILIES
from neuronscope.models.moe import MOE_VISION_FAMILIES, MoEStructure, find_moe
from neuronscope.models.spec import FamilySpec, VisionFamily

_LAYER_LIST_NAMES = ("layers", "h", "blocks", "block", "decoder_layers")
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")
_GENERIC_MLP = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
_GENERIC_DOWN = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "w2", "fc_out", "proj_out", "wo")
_GENERIC_ACT = ("act_fn", "act", "activation_fn", "activation")
_GENERIC_ATTN = ("self_attn", "attn", "attention", "self_attention")
_GENERIC_ATTN_OUT = ("o_proj", "out_proj", "dense", "c_proj", "wo")
_GENERIC_FFN_NORM = ("post_attention_layernorm", "ln_2", "pre_feedforward_layernorm")


@dataclass(frozen=True)
class FinalNorm:
    """The final norm as an affine map after normalisation: ``gain * normalise(x) + bias``.

    ``kind`` is ``"rms"`` (x / rms(x)) or ``"layer"`` ((x - mean) / std). ``gain`` already includes
    Gemma's ``1 + weight``.
    """

    kind: str
    gain: torch.Tensor
    bias: torch.Tensor | None
    eps: float

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The normaliser sigma of ``x [..., d]`` (RMS, or the standard deviation for LayerNorm): ``[..., 1]``."""
        x = x if x.dtype == torch.float64 else x.float()
        if self.kind == "layer":
            return (x.var(-1, unbiased=False, keepdim=True) + self.eps).sqrt()
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def frozen(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Apply the norm with its scale frozen at ``scale`` (Yu & Ananiadou's frozen final norm)."""
        x = x if x.dtype == torch.float64 else x.float()
        if self.kind == "layer":
            x = x - x.mean(-1, keepdim=True)
        out = self.gain.to(x.device, x.dtype) * x / scale.to(x.device, x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.device, x.dtype)
        return out


def norm_affine(module: nn.Module, d_model: int) -> FinalNorm:
    """Any RMSNorm- or LayerNorm-like module as ``gain * normalise(x) + bias``.

    The RMS gain is probed from the module itself (``module(1) · sqrt(1 + eps)``), so Gemma's ``1 + weight`` is
    handled; values stay float64 for float64 modules, float32 otherwise.
    """
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    eps = float(getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6)))
    device = weight.device if weight is not None else torch.device("cpu")
    dtype = weight.dtype if weight is not None else torch.float32
    keep = torch.float64 if dtype == torch.float64 else torch.float32
    with torch.no_grad():
        if isinstance(module, nn.LayerNorm) or "LayerNorm" in type(module).__name__:
            gain = weight.detach().to(keep) if weight is not None else torch.ones(d_model, device=device)
            return FinalNorm("layer", gain, None if bias is None else bias.detach().to(keep), eps)
        out = module(torch.ones(1, d_model, device=device, dtype=dtype))[0]
        gain = out.to(keep) * math.sqrt(1.0 + eps)
    return FinalNorm("rms", gain, None, eps)


def _get(module: nn.Module, dotted: str) -> nn.Module | None:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _first_attr(module: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | tuple[None, None]:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return name, child
    return None, None


def _in_out(module: nn.Module, conv1d: bool) -> tuple[int, int]:
    weight = module.weight
    return (weight.shape[0], weight.shape[1]) if conv1d else (weight.shape[1], weight.shape[0])


def supported_families() -> list[str]:
    """Names of the text families, vision-language wrappers and mixture-of-experts families with an adapter."""
    from neuronscope.models.moe import MOE_FAMILIES

    return ([spec.name for spec in TEXT_SPECS] + [vf.name for vf in VISION_FAMILIES]
            + [family.name for family in MOE_FAMILIES] + [vf.name for vf in MOE_VISION_FAMILIES])


def _unsupported(model_type: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"model type '{model_type}' has no adapter and the generic fallback failed ({why}). "
        f"Supported families: {', '.join(supported_families())}. To add one, write a FamilySpec in "
        "src/neuronscope/models/families/<family>.py naming its FFN output projection and attention output "
        "projection (see llama.py), add it to families/__init__.py, and add a test in tests/models/."
    )


def _find_decoder(model: nn.Module) -> nn.Module:
    candidates = []
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            candidates.append(get_decoder())
        except (AttributeError, NotImplementedError, TypeError):
            pass
    for path in ("model.language_model", "language_model.model", "language_model", "model.text_model",
                 "text_model", "transformer", "model", "gpt_neox"):
        candidates.append(_get(model, path))
    for decoder in candidates:
        if decoder is None:
            continue
        _, layers = _first_attr(decoder, _LAYER_LIST_NAMES)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return decoder
    raise _unsupported(getattr(model.config, "model_type", type(model).__name__), "no decoder layer list found")


def _generic_spec(layer: nn.Module, model_type: str) -> FamilySpec:
    mlp_name, mlp = _first_attr(layer, _GENERIC_MLP)
    if mlp is None:
        raise _unsupported(model_type, "no FFN module named one of " + ", ".join(_GENERIC_MLP))
    down_name, _ = _first_attr(mlp, _GENERIC_DOWN)
    if down_name is None:
        raise _unsupported(model_type, "no FFN output projection named one of " + ", ".join(_GENERIC_DOWN))
    attn_name, attn = _first_attr(layer, _GENERIC_ATTN)
    out_name = _first_attr(attn, _GENERIC_ATTN_OUT)[0] if attn is not None else None
    if out_name is None:
        raise _unsupported(model_type, "no attention output projection found")
    act_name = _first_attr(mlp, _GENERIC_ACT)[0]
    conv1d = type(getattr(mlp, down_name)).__name__ == "Conv1D"
    return FamilySpec(
        name=f"generic:{model_type}",
        model_types=(model_type,),
        down=f"{mlp_name}.{down_name}",
        act=f"{mlp_name}.{act_name}" if act_name else None,
        up=f"{mlp_name}.up_proj" if hasattr(mlp, "up_proj") else None,
        gate=f"{mlp_name}.gate_proj" if hasattr(mlp, "gate_proj") else None,
        attn_out=f"{attn_name}.{out_name}",
        ffn_norm=_first_attr(layer, _GENERIC_FFN_NORM)[0],
        conv1d=conv1d,
        notes="generic fallback: found by module names; check the sites before trusting results",
    )


def _spec_for(model_type: str) -> FamilySpec | None:
    for spec in TEXT_SPECS:
        if model_type in spec.model_types:
            return spec
    return None


class ModelAdapter:
    """Where the neurons, heads, final norm and unembedding of one model are.

    Args:
        model: a Hugging Face causal LM or vision-language model (any device placement, incl. ``device_map``).

    Attributes:
        family: the text family spec; ``vision``: the vision-language wrapper or None.
        n_layers, d_model, d_ff, n_heads, n_kv_heads, head_dim, vocab_size: sizes of the language model.

    Example:
        >>> adapter = ModelAdapter(model)
        >>> adapter.value_vectors(0).shape  # [d_ff, d_model]
    """

    def __init__(self, model: nn.Module):
        self.model = model
        config = model.config
        self.model_type: str = getattr(config, "model_type", type(model).__name__)
        self.vision: VisionFamily | None = next(
            (vf for vf in (*VISION_FAMILIES, *MOE_VISION_FAMILIES) if self.model_type in vf.model_types), None
        )
        self.text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        text_type = getattr(self.text_config, "model_type", self.model_type)
        if self.vision is None and hasattr(config, "vision_config") and text_type == self.model_type:
            raise _unsupported(self.model_type, "a vision-language model without a registered wrapper")
        self.decoder = _find_decoder(model)
        self.layers: nn.ModuleList = _first_attr(self.decoder, _LAYER_LIST_NAMES)[1]
        self.n_layers: int = len(self.layers)
        cfg = self.text_config
        # Mixture-of-experts models: MoE and dense layers resolved by models/moe (None for a dense model).
        self.moe: MoEStructure | None = find_moe(
            (self.model_type, text_type), self.layers, cfg, int(getattr(cfg, "hidden_size", 0) or 0)
        )
        attention_layer = 0
        if self.moe is not None:
            # d_ff of an MoE model: its dense layers' width (sites of dense layers use it), else one routed
            # expert's width; every unit's width is in moe.layout.
            self.family = self.moe.family.text
            self.d_ff = next(iter(self.moe.dense.values()), self.moe.expert_width)
            self.d_model = self.moe.d_model
            attention_layer = next(i for i, layer in enumerate(self.layers) if _get(layer, self.family.attn_out))
        else:
            self.family: FamilySpec = _spec_for(text_type) or _spec_for(self.model_type) or _generic_spec(
                self.layers[0], text_type
            )
            self._check_layer_modules()
            down = self.module(0, self.family.down)
            self.d_ff, self.d_model = _in_out(down, self.family.conv1d)
        self.n_heads: int = int(getattr(cfg, "num_attention_heads", getattr(cfg, "n_head", 0)))
        self.n_kv_heads: int = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        attn_in = _in_out(self.module(attention_layer, self.family.attn_out), self.family.conv1d)[0]
        self.head_dim: int = attn_in // self.n_heads if self.n_heads else 0
        _, self.final_norm_module = _first_attr(self.decoder, _FINAL_NORM_NAMES)
        if self.final_norm_module is None:
            raise _unsupported(self.model_type, "no final norm found")
        self.unembed_module: nn.Module = model.get_output_embeddings()
        if self.unembed_module is None:
            raise _unsupported(self.model_type, "no output embedding (unembedding) found")
        self.vocab_size: int = self.unembed_module.weight.shape[0]
        self.logit_softcap: float | None = getattr(cfg, "final_logit_softcapping", None)

    # -- modules -------------------------------------------------------------------------------------------------
    def _check_layer_modules(self) -> None:
        layer = self.layers[0]
        spec = self.family
        for name in (spec.down, spec.attn_out):
            if _get(layer, name) is None:
                raise _unsupported(self.model_type, f"family spec '{spec.name}' names '{name}', absent in layer 0")

    def module(self, layer: int, name: str) -> nn.Module:
        """The submodule ``name`` (dotted, relative to a decoder layer) of decoder layer ``layer``."""
        found = _get(self.layers[self.check_layer(layer)], name)
        if found is None:
            raise NeuronscopeError(f"layer {layer} of '{self.model_type}' has no module '{name}'")
        return found

    def check_layer(self, layer: int) -> int:
        """Validate a layer index (negative counts from the end) and return it as a non-negative int."""
        if not -self.n_layers <= layer < self.n_layers:
            raise NeuronscopeError(
                f"layer {layer} is out of range: this model has {self.n_layers} layers (0..{self.n_layers - 1})"
            )
        return layer % self.n_layers

    def resolve_layers(self, layers: int | list[int] | range | None) -> list[int]:
        """``None`` → all layers; an int or a list → validated, non-negative, in the given order."""
        if layers is None:
            return list(range(self.n_layers))
        if isinstance(layers, int):
            layers = [layers]
        return [self.check_layer(int(layer)) for layer in layers]

    def device_of(self, layer: int) -> torch.device:
        """The device holding layer ``layer``'s FFN output projection (an MoE layer's experts)."""
        if self.moe is not None and self.moe.is_moe(self.check_layer(layer)):
            return self.moe.layers[self.check_layer(layer)].device
        return self.module(layer, self.family.down).weight.device

    # -- weights -------------------------------------------------------------------------------------------------
    def value_vectors(self, layer: int) -> torch.Tensor:
        """The value vectors ``w_i`` of layer ``layer`` as a view ``[d_ff, d_model]`` of the output projection."""
        if self.moe is not None and self.moe.is_moe(self.check_layer(layer)):
            raise NeuronscopeError(f"layer {layer} is a mixture-of-experts layer: its value vectors are per expert "
                                   "(neuronscope.models.moe.expert_value_vectors / value_vector with "
                                   "(layer, expert, index) rows)")
        weight = self.module(layer, self.family.down).weight
        return weight if self.family.conv1d else weight.t()

    def unembedding(self) -> torch.Tensor:
        """The unembedding matrix ``W_U``: ``[vocab, d_model]`` (tied or not)."""
        return self.unembed_module.weight

    def unembedding_bias(self) -> torch.Tensor | None:
        return getattr(self.unembed_module, "bias", None)

    def final_norm(self) -> FinalNorm:
        """The final norm as ``gain * normalise(x) + bias`` (see :func:`norm_affine`)."""
        return norm_affine(self.final_norm_module, self.d_model)

    def logits_from_residual(self, residual: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., vocab]`` of a final residual ``[..., d_model]``: final norm, unembedding, soft-cap."""
        hidden = self.final_norm_module(residual)
        logits = self.unembed_module(hidden.to(self.unembedding().device))
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def head_slice(self, head: int) -> slice:
        """Columns of the head site (input of the attention output projection) that belong to ``head``."""
        if not 0 <= head < self.n_heads:
            raise NeuronscopeError(f"head {head} is out of range: this model has {self.n_heads} heads per layer")
        return slice(head * self.head_dim, (head + 1) * self.head_dim)

    def attn_output_weight(self, layer: int) -> torch.Tensor:
        """``W_O`` as ``[n_heads * head_dim, d_model]`` (rows = head-site coordinates)."""
        weight = self.module(layer, self.family.attn_out).weight
        return weight if self.family.conv1d else weight.t()

    def describe(self) -> dict:
        """Sizes and names, for result metadata."""
        return {
            "model_type": self.model_type,
            "family": self.family.name,
            "vision": self.vision.name if self.vision else None,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "d_ff": self.d_ff,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            **({"moe": self.moe.describe()} if self.moe is not None else {}),
        }


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The (cached) adapter of ``model``."""
    adapter = getattr(model, "_neuronscope_adapter", None)
    if adapter is None:
        adapter = ModelAdapter(model)
        # Bypass nn.Module.__setattr__ so the adapter is not registered as a submodule.
        object.__setattr__(model, "_neuronscope_adapter", adapter)
    return adapter
