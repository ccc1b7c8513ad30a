"""Family facts: where the neurons and heads are inside one decoder layer, and how the layer's writes reach the
residual stream and the logits.

A :class:`FamilySpec` is pure data (no torch). The adapter (``adapter.py``) resolves it against a live model at
run time; :mod:`neuronscope.models.catalogue` lists every spec with its status.

Values that depend on the checkpoint are named, not copied: a *source* string is read at run time, from the
text config (``"config.logits_scaling"``), from the model (``"model.logit_scale"``, dotted from the causal-LM
root) or from the decoder layer (``"layer.residual_multiplier"``, ``"layer.feed_forward.down_multiplier"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

#: How a value projection is laid out (see :func:`neuronscope.models.attention.value_states_from_projection`).
VALUE_LAYOUTS = ("separate", "qkv", "c_attn", "per_head_qkv")
#: Readout operations after the unembedding, applied in order: ``logits * s``, ``logits / s``,
#: ``s · tanh(logits / s)``.
LOGIT_OPS = ("multiply", "divide", "softcap")
#: Token mixers a decoder layer may hold besides (or instead of) attention.
MIXERS = ("attention", "linear_attention", "mamba", "short_conv", "none")


@dataclass(frozen=True)
class FamilySpec:
    """Module names (dotted, relative to one decoder layer) and residual facts of a model family.

    Attributes:
        name: short family name shown by ``neuronscope models``.
        model_types: ``config.model_type`` values this spec adapts.
        down: the FFN output projection; its *input* is the neuron site and its weight holds the value vectors.
        attn_out: the attention output projection; its input, split into heads, is the head site.
        act: the activation function module (site ``act``), or None.
        up / gate: the up and gate projections of a gated FFN (sites ``up`` / ``gate``), or None.
        fused_gate_up: a fused projection whose output is ``[gate | up]`` (Phi-3), or None.
        pre: the first FFN projection of a non-gated FFN (site ``pre``: pre-activation), or None.
        ffn_norm: the norm whose input is the residual the FFN reads (pre-FFN norm), or None where the FFN reads
            the residual directly (OLMo-2) or shares the attention's norm (parallel residual).
        attn_norm: the norm the attention reads the residual through, or None (OLMo-2 reads it directly);
            ``"a|b"`` names alternatives, the first present is used (Falcon: ``ln_attn|input_layernorm``).
        post_attn_norm: a norm applied to the attention output before the residual add (sandwich norms), or None.
        post_ffn_norm: a norm applied to the FFN output before the residual add (Gemma-2/3, OLMo-2), or None.
        parallel_residual: attention and FFN both read the layer input (GPT-NeoX, GPT-J, Falcon, Phi, Cohere),
            so the FFN's write lands on ``x + attn(x)``. A bool, or a callable ``config -> bool`` where the
            checkpoint decides (GPT-NeoX ``use_parallel_residual``, Falcon ``parallel_attn``).
        position_bias: attention adds a bias computed from the keys' positions in the sequence (ALiBi: BLOOM, MPT,
            Falcon with ``alibi``), so that query tokens put side by side cannot stand for one position (IG's
            sequence path then takes batch rows). A bool, or a callable ``config -> bool``.
        value: the value projection, relative to the attention module (``v_proj``, ``qkv_proj``, ...), or None
            where values cannot be read from one projection (then attention neurons are refused, heads work).
        value_layout: one of :data:`VALUE_LAYOUTS`.
        ffn_scale / attn_scale: sources whose product multiplies the FFN / attention output on its way into
            the residual (Granite ``layer.residual_multiplier``; Falcon-H1 ``layer.feed_forward.down_multiplier``).
        logits: ``(op, source)`` readout operations after the unembedding, op one of :data:`LOGIT_OPS`; a source
            that resolves to None is skipped (Gemma-2 ``final_logit_softcapping`` may be None).
        mixer: ``(layer module, layer index, text config) -> mixer kind`` (one of :data:`MIXERS`) for hybrid
            families; None means every layer is attention.
        final_norm: the final norm's name in the decoder where it is not one of the usual names (LFM2 calls it
            ``embedding_norm``), or None.
        conv1d: weights are stored ``[in, out]`` (GPT-2's ``Conv1D``) rather than ``[out, in]``.
        refuse: a callable ``text config -> reason or None``: configurations of this family that cannot be
            accounted for exactly (a PLE stream, a residual that is itself rescaled, ...).
        notes: one line shown to users.
    """

    name: str
    model_types: tuple[str, ...]
    down: str
    attn_out: str
    act: str | None = None
    up: str | None = None
    gate: str | None = None
    fused_gate_up: str | None = None
    pre: str | None = None
    ffn_norm: str | None = None
    attn_norm: str | None = None
    post_attn_norm: str | None = None
    post_ffn_norm: str | None = None
    parallel_residual: bool | Callable[[Any], bool] = False
    position_bias: bool | Callable[[Any], bool] = False
    value: str | None = "v_proj"
    value_layout: str = "separate"
    ffn_scale: tuple[str, ...] = ()
    attn_scale: tuple[str, ...] = ()
    logits: tuple[tuple[str, str], ...] = ()
    mixer: Callable[[Any, int, Any], str] | None = None
    final_norm: str | None = None
    conv1d: bool = False
    refuse: Callable[[Any], str | None] | None = None
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.value_layout not in VALUE_LAYOUTS:
            raise ValueError(f"{self.name}: value_layout must be one of {VALUE_LAYOUTS}")
        for op, _ in self.logits:
            if op not in LOGIT_OPS:
                raise ValueError(f"{self.name}: logit op {op!r} is not one of {LOGIT_OPS}")

    @property
    def gated(self) -> bool:
        return self.up is not None or self.fused_gate_up is not None

    @property
    def ffn(self) -> str:
        """The FFN module (the parent of the output projection)."""
        return self.down.rsplit(".", 1)[0]

    @property
    def attention(self) -> str:
        """The attention module (the parent of the output projection)."""
        return self.attn_out.rsplit(".", 1)[0]


@dataclass(frozen=True)
class VisionFamily:
    """A vision-language wrapper: its language model is adapted by the text family of ``config.text_config``.

    Attributes:
        name: short family name shown by ``neuronscope models``.
        model_types: ``config.model_type`` values of the wrapper.
        layout: ``"module:function"`` of the family's layout reader, ``LayoutRequest -> ImageLayout``: where a batch
            row's image tokens sit and which grid cell each is (see :mod:`neuronscope.models.image_grid`); imported
            only when used, so the declarations load without torch.
        spatial_map: False where image tokens stand for no place in the image (learned queries).
        logits: readout operations of the wrapper when they differ from its text family's, or None (same).
        notes: one line shown to users.
    """

    name: str
    model_types: tuple[str, ...]
    layout: str
    spatial_map: bool = True
    logits: tuple[tuple[str, str], ...] | None = None
    notes: str = ""

    def read_layout(self, request: Any) -> Any:
        """The family's :class:`~neuronscope.models.image_grid.ImageLayout` of one batch row."""
        module, function = self.layout.split(":")
        return getattr(import_module(module), function)(request)


@dataclass(frozen=True)
class Refusal:
    """A model type the adapter refuses, and why (shown by ``neuronscope models`` and in the error).

    Attributes:
        model_types: ``config.model_type`` values refused.
        kind: a short category (``"moe"``, ``"encoder-decoder"``, ``"state-space"``, ...).
        reason: what is missing, in one sentence a user can act on.
    """

    model_types: tuple[str, ...]
    kind: str
    reason: str
