"""Resolve a family spec against a live Hugging Face model: layers, value vectors, heads, residual writes, final
norm, unembedding.

Module paths move between transformers versions, so nothing here hard-codes a path from the model's root: the
decoder comes from ``model.get_decoder()`` (probing ``language_model`` / ``text_model`` / ``transformer`` when that
fails) and the rest is resolved relative to one decoder layer, by the family spec. A family the registry refuses
(mixture of experts, encoder-decoder, ...) or a configuration its spec cannot account for exactly raises
:class:`~neuronscope.errors.UnsupportedModelError` here, before anything runs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError, SiteError, UnsupportedModelError
from neuronscope.models.accounting import (
    FinalNorm,
    Readout,
    WriteMap,
    norm_affine,
    readout_from_ops,
    resolve_source,
)
from neuronscope.models.families import VISION_FAMILIES
from neuronscope.models.lookup import (
    FINAL_NORM_NAMES,
    LAYER_LIST_NAMES,
    MOE_ISSUE,
    config_value,
    ffn_kind,
    find_decoder,
    first_attr,
    get_path,
    in_out,
    is_vision_language,
    refuse_listed,
    spec_for,
    supported_families,
    text_config,
    unsupported,
)
from neuronscope.models.moe import MOE_VISION_FAMILIES, MoEStructure, find_moe
from neuronscope.models.readout_check import ReadoutChecks
from neuronscope.models.spec import FamilySpec, VisionFamily

__all__ = ["FinalNorm", "ModelAdapter", "Readout", "WriteMap", "get_adapter", "norm_affine", "supported_families"]

class ModelAdapter(ReadoutChecks):
    """Where the neurons, heads, residual writes, final norm and unembedding of one model are.

    Args:
        model: a Hugging Face causal LM or vision-language model (any device placement, incl. ``device_map``).
        text_only: accept a vision-language model whose family has no image-layout reader, for scoring text
            only (image heatmaps and patches then refuse). Default False: such a model is refused here.

    Attributes:
        family: the text family spec; ``vision``: the vision-language wrapper or None.
        n_layers, d_model, d_ff, n_heads, vocab_size: sizes of the language model (``d_ff`` of its FFN layers).
        mixers: per layer, its token mixer (``"attention"``, ``"mamba"``, ``"linear_attention"``,
            ``"short_conv"``, ``"attention+mamba"``, ``"none"``); ``ffn_kinds``: per layer ``"dense"`` or ``"none"``.
        ffn_layers / attention_layers: layers that have a dense FFN / softmax attention.
        parallel_residual: attention and FFN read the same layer input.
        position_bias: attention adds a bias from the keys' positions (ALiBi).
        readout: the logit scale and soft-cap after the unembedding.
        generic: True when no spec was registered and the generic fallback (self-checked) is in use.

    Example:
        >>> adapter = ModelAdapter(model)
        >>> adapter.value_vectors(0).shape  # [d_ff, d_model]
    """

    def __init__(self, model: nn.Module, *, text_only: bool = False):
        self.model = model
        config = model.config
        self.model_type: str = getattr(config, "model_type", type(model).__name__)
        self.text_config = text_config(config)
        text_type = getattr(self.text_config, "model_type", self.model_type)
        refuse_listed(self.model_type, text_type)
        self.vision: VisionFamily | None = next(
            (vf for vf in (*VISION_FAMILIES, *MOE_VISION_FAMILIES) if self.model_type in vf.model_types), None
        )
        if self.vision is None and is_vision_language(config) and not text_only:
            raise UnsupportedModelError(
                f"vision-language model type '{self.model_type}' has no image-layout reader, so its image tokens "
                "cannot be mapped onto the image (no heatmaps, no patches). Pass text_only=True to "
                "get_adapter(model, text_only=True) to score its text positions only, or declare a layout reader "
                "beside the family in neuronscope/models/families/ (see `neuronscope models`)."
            )
        self.text_only = bool(text_only or (self.vision is None and is_vision_language(config)))
        self.decoder = find_decoder(model)
        self.layers: nn.ModuleList = first_attr(self.decoder, LAYER_LIST_NAMES)[1]
        self.n_layers: int = len(self.layers)
        cfg = self.text_config
        # Mixture-of-experts models: MoE and dense layers resolved by models/moe (None for a dense model).
        self.moe: MoEStructure | None = find_moe(
            (self.model_type, text_type), self.layers, cfg, int(config_value(cfg, "hidden_size") or 0)
        )
        spec = self.moe.family.text if self.moe is not None else spec_for(text_type) or spec_for(self.model_type)
        self.generic = spec is None
        if spec is None:
            from neuronscope.models.generic import generic_spec

            spec = generic_spec(self.layers[0], self.text_config, text_type)
        self.family: FamilySpec = spec
        reason = spec.refuse(self.text_config) if spec.refuse is not None else None
        if reason:
            raise UnsupportedModelError(f"model type '{text_type}' ({spec.name}): {reason}")
        self._resolve_layers_structure(text_type)
        self.n_heads: int = int(config_value(cfg, "num_attention_heads", "n_head", "num_heads") or 0)
        self._resolve_readout(model, text_type)
        self.parallel_residual: bool = bool(
            spec.parallel_residual(cfg) if callable(spec.parallel_residual) else spec.parallel_residual
        )
        self.position_bias: bool = bool(spec.position_bias(cfg) if callable(spec.position_bias) else spec.position_bias)
        if self.generic:
            from neuronscope.models.generic import check_generic

            check_generic(self)

    # -- construction --------------------------------------------------------------------------------------------
    def _resolve_layers_structure(self, text_type: str) -> None:
        spec, cfg = self.family, self.text_config
        self.mixers: tuple[str, ...] = tuple(
            spec.mixer(layer, index, cfg) if spec.mixer is not None else "attention"
            for index, layer in enumerate(self.layers)
        )
        kinds = tuple(ffn_kind(layer, spec) for layer in self.layers)
        moe = [i for i, kind in enumerate(kinds) if kind == "moe"]
        if self.moe is not None:  # an MoE family of models/moe: its MoE layers are the ones it resolved
            kinds = tuple("moe" if self.moe.is_moe(i) else "dense" if i in self.moe.dense else kind
                          for i, kind in enumerate(kinds))
        elif moe:
            raise UnsupportedModelError(
                f"model type '{text_type}' has mixture-of-experts FFN layers ({', '.join(map(str, moe[:8]))}"
                f"{'...' if len(moe) > 8 else ''}): {MOE_ISSUE}; this adapter scores dense FFN neurons only"
            )
        self.ffn_kinds: tuple[str, ...] = kinds
        self.ffn_layers: list[int] = [i for i, kind in enumerate(kinds) if kind == "dense"]
        self.attention_layers: list[int] = [i for i, m in enumerate(self.mixers) if "attention" in m.split("+")]
        for layer in self.attention_layers:
            if get_path(self.layers[layer], spec.attn_out) is None:
                raise unsupported(text_type, f"family spec '{spec.name}' names '{spec.attn_out}', absent in layer "
                                             f"{layer}")
        if self.moe is not None:
            # d_ff of an MoE model: its dense layers' width (sites of dense layers use it), else one routed
            # expert's width; every unit's width is in moe.layout.
            self.d_ff, self.d_model = next(iter(self.moe.dense.values()), self.moe.expert_width), self.moe.d_model
            return
        if not self.ffn_layers:
            raise unsupported(text_type, f"family spec '{spec.name}' names FFN '{spec.down}', absent in every layer")
        widths = {in_out(self.module(layer, spec.down), spec.conv1d) for layer in self.ffn_layers}
        if len(widths) != 1:
            raise UnsupportedModelError(
                f"model type '{text_type}': FFN widths differ between layers ({sorted(w[0] for w in widths)}); "
                "neuron scores need one width per model (a double-wide or per-layer FFN is not supported yet)"
            )
        self.d_ff, self.d_model = next(iter(widths))

    def _resolve_readout(self, model: nn.Module, text_type: str) -> None:
        names = ((self.family.final_norm,) if self.family.final_norm else ()) + FINAL_NORM_NAMES
        _, self.final_norm_module = first_attr(self.decoder, names)
        if self.final_norm_module is None:
            raise unsupported(self.model_type, "no final norm found")
        self.unembed_module: nn.Module = model.get_output_embeddings()
        if self.unembed_module is None:
            raise unsupported(self.model_type, "no output embedding (unembedding) found")
        self.vocab_size: int = self.unembed_module.weight.shape[0]
        ops = self.vision.logits if self.vision is not None and self.vision.logits is not None else self.family.logits
        self.readout: Readout = readout_from_ops(ops, model=model, config=self.text_config)
        self.logit_softcap: float | None = self.readout.softcap

    # -- structure -----------------------------------------------------------------------------------------------
    def module(self, layer: int, name: str) -> nn.Module:
        """The submodule ``name`` (dotted, relative to a decoder layer) of decoder layer ``layer``."""
        found = get_path(self.layers[self.check_layer(layer)], name)
        if found is None:
            raise SiteError(
                f"layer {layer} of '{self.model_type}' has no module '{name}' (its mixer is "
                f"{self.mixers[layer % self.n_layers]}, its FFN {self.ffn_kinds[layer % self.n_layers]})"
            )
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

    def has_ffn(self, layer: int) -> bool:
        """Whether layer ``layer`` has a dense FFN (hybrids: some layers hold only a mixer)."""
        return self.ffn_kinds[self.check_layer(layer)] == "dense"

    def has_attention(self, layer: int) -> bool:
        """Whether layer ``layer`` has softmax attention (with heads)."""
        return self.check_layer(layer) in self.attention_layers

    def require_ffn(self, layer: int) -> int:
        """``layer`` as a non-negative index, or a :class:`SiteError` naming its mixer when it has no FFN."""
        layer = self.check_layer(layer)
        if self.ffn_kinds[layer] == "moe":
            raise SiteError(f"layer {layer} is a mixture-of-experts layer: its neurons are (layer, expert, index) "
                            "rows (neuronscope.trace.experts, neuronscope.models.moe), not dense FFN neurons")
        if self.ffn_kinds[layer] != "dense":
            raise SiteError(
                f"layer {layer} of '{self.model_type}' is a {self.mixers[layer]} layer without an FFN: it has no "
                f"neurons; FFN layers are {self.ffn_layers}"
            )
        return layer

    def require_attention(self, layer: int) -> int:
        """``layer`` as a non-negative index, or a :class:`SiteError` naming its mixer when it has no heads."""
        layer = self.check_layer(layer)
        if layer not in self.attention_layers:
            raise SiteError(
                f"layer {layer} of '{self.model_type}' mixes tokens with {self.mixers[layer]}, not softmax "
                f"attention: it has no heads; attention layers are {self.attention_layers}"
            )
        return layer

    def device_of(self, layer: int) -> torch.device:
        """The device holding layer ``layer``'s parameters (its FFN output projection where it has one; an MoE
        layer's experts)."""
        layer = self.check_layer(layer)
        if self.moe is not None and self.moe.is_moe(layer):
            return self.moe.layers[layer].device
        if self.has_ffn(layer):
            return self.module(layer, self.family.down).weight.device
        return next(self.layers[layer].parameters()).device

    # -- weights -------------------------------------------------------------------------------------------------
    def value_vectors(self, layer: int) -> torch.Tensor:
        """The value vectors ``w_i`` of layer ``layer`` as a view ``[d_ff, d_model]`` of the output projection."""
        if self.moe is not None and self.moe.is_moe(self.check_layer(layer)):
            raise NeuronscopeError(f"layer {layer} is a mixture-of-experts layer: its value vectors are per expert "
                                   "(neuronscope.models.moe.expert_value_vectors / value_vector with "
                                   "(layer, expert, index) rows)")
        weight = self.module(self.require_ffn(layer), self.family.down).weight
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
        """Logits ``[..., vocab]`` of a final residual ``[..., d_model]``: final norm, unembedding, logit scale and
        soft-cap, as the model computes them."""
        hidden = self.final_norm_module(residual)
        return self.readout.apply(self.unembed_module(hidden.to(self.unembedding().device)))

    # -- residual writes -----------------------------------------------------------------------------------------
    def _write_map(self, layer: int, norm_name: str | None, scales: tuple[str, ...]) -> WriteMap:
        block = self.layers[layer]
        multiplier = 1.0
        for source in scales:
            value = resolve_source(source, model=self.model, layer=block, config=self.text_config)
            multiplier *= 1.0 if value is None else value
        if norm_name is None:
            return WriteMap(multiplier)
        module = self.module(layer, norm_name)
        norm = norm_affine(module, self.d_model)
        if norm.kind != "rms" or norm.bias is not None:
            raise UnsupportedModelError(
                f"'{norm_name}' of '{self.model_type}' centres or adds a bias after the sub-block: its frozen write "
                "is not a sum of neuron writes; this family is not supported"
            )
        return WriteMap(multiplier, norm, module)

    def ffn_write(self, layer: int) -> WriteMap:
        """How layer ``layer``'s FFN output reaches the residual: post-FFN norm and residual multipliers.

        Example:
            >>> adapter.ffn_write(0).apply(ffn_out)   # what the residual receives from the FFN at layer 0
        """
        layer = self.require_ffn(layer)
        return self._write_map(layer, self.family.post_ffn_norm, self.family.ffn_scale)

    def attn_write(self, layer: int) -> WriteMap:
        """How layer ``layer``'s attention output reaches the residual: post-attention norm and multipliers."""
        layer = self.require_attention(layer)
        return self._write_map(layer, self.family.post_attn_norm, self.family.attn_scale)

    # -- heads ---------------------------------------------------------------------------------------------------
    def head_dim_of(self, layer: int) -> int:
        """``d_head`` of layer ``layer``'s attention (Gemma-4 widens its global layers)."""
        layer = self.require_attention(layer)
        width = in_out(self.module(layer, self.family.attn_out), self.family.conv1d)[0]
        if not self.n_heads or width % self.n_heads:
            raise UnsupportedModelError(
                f"the attention output projection of layer {layer} reads {width} coordinates, not a multiple of "
                f"the {self.n_heads} heads of the config"
            )
        return width // self.n_heads

    def n_kv_heads_of(self, layer: int) -> int:
        """Key/value heads of layer ``layer`` (grouped-query attention; read from the value projection)."""
        layer = self.require_attention(layer)
        spec = self.family
        if spec.value is not None and spec.value_layout == "separate":
            projection = get_path(self.layers[layer], f"{spec.attention}.{spec.value}")
            if isinstance(projection, nn.Module) and hasattr(projection, "weight"):
                return in_out(projection, spec.conv1d)[1] // self.head_dim_of(layer)
        value = config_value(self.text_config, "num_key_value_heads", "multi_query_group_num")
        if config_value(self.text_config, "multi_query") is True:
            value = 1
        return int(value or self.n_heads)

    @property
    def head_dim(self) -> int:
        """``d_head``, the same in every attention layer (else use :meth:`head_dim_of`)."""
        dims = {self.head_dim_of(layer) for layer in self.attention_layers}
        if len(dims) != 1:
            raise UnsupportedModelError(
                f"head widths differ between layers ({sorted(dims)}): use head_dim_of(layer)"
            )
        return dims.pop()

    @property
    def n_kv_heads(self) -> int:
        values = {self.n_kv_heads_of(layer) for layer in self.attention_layers}
        if len(values) != 1:
            raise UnsupportedModelError(f"key/value heads differ between layers ({sorted(values)}): use "
                                        "n_kv_heads_of(layer)")
        return values.pop()

    def head_slice(self, head: int, layer: int | None = None) -> slice:
        """Columns of the head site (input of the attention output projection) that belong to ``head``."""
        if not 0 <= head < self.n_heads:
            raise NeuronscopeError(f"head {head} is out of range: this model has {self.n_heads} heads per layer")
        width = self.head_dim if layer is None else self.head_dim_of(layer)
        return slice(head * width, (head + 1) * width)

    def attn_output_weight(self, layer: int) -> torch.Tensor:
        """``W_O`` as ``[n_heads * head_dim, d_model]`` (rows = head-site coordinates)."""
        weight = self.module(self.require_attention(layer), self.family.attn_out).weight
        return weight if self.family.conv1d else weight.t()

    def describe(self) -> dict:
        """Sizes and names, for result metadata (a fact of the architecture, like ``d_ff``: read once, since the
        head widths take a module lookup per layer and every scoring call records them)."""
        if "_described" not in self.__dict__:
            self.__dict__["_described"] = self._describe()
        return copy.deepcopy(self.__dict__["_described"])

    def _describe(self) -> dict:
        heads = {}
        try:
            heads = {"n_kv_heads": self.n_kv_heads, "head_dim": self.head_dim}
        except (UnsupportedModelError, SiteError):
            heads = {"head_dim": [self.head_dim_of(layer) for layer in self.attention_layers]}
        return {
            "model_type": self.model_type,
            "family": self.family.name,
            "vision": self.vision.name if self.vision else None,
            "text_only": self.text_only,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "d_ff": self.d_ff,
            "n_heads": self.n_heads,
            **heads,
            "vocab_size": self.vocab_size,
            "mixers": list(self.mixers) if len(set(self.mixers)) > 1 else self.mixers[0],
            "ffn_layers": self.ffn_layers if len(self.ffn_layers) != self.n_layers else "all",
            "parallel_residual": self.parallel_residual,
            "logit_scale": self.readout.scale,
            "logit_softcap": self.readout.softcap,
            **({"moe": self.moe.describe()} if self.moe is not None else {}),
        }


def get_adapter(model: nn.Module, *, text_only: bool | None = None) -> ModelAdapter:
    """The (cached) adapter of ``model``.

    Args:
        model: the model.
        text_only: True to accept a vision-language model without an image-layout reader for text-only scoring
            (remembered for this model, so later calls without the argument get the same adapter). None (default)
            keeps the cached adapter, or builds one with ``text_only=False``.

    Example:
        >>> adapter = get_adapter(vlm, text_only=True)     # a VLM family without a layout reader
        >>> adapter.text_only
        True
    """
    adapter = getattr(model, "_neuronscope_adapter", None)
    if adapter is None or (text_only is not None and adapter.text_only != text_only and text_only):
        adapter = ModelAdapter(model, text_only=bool(text_only))
        # Bypass nn.Module.__setattr__ so the adapter is not registered as a submodule.
        object.__setattr__(model, "_neuronscope_adapter", adapter)
    return adapter
