"""Where the neurons are inside one decoder layer: module names, relative to the layer, per family.

A :class:`FamilySpec` is pure data. The adapter (``adapter.py``) resolves it against a live model at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any


@dataclass(frozen=True)
class FamilySpec:
    """Module names (dotted, relative to one decoder layer) of a model family.

    Attributes:
        name: short family name shown by ``neuronscope models``.
        model_types: ``config.model_type`` values this spec adapts.
        down: the FFN output projection; its *input* is the neuron site and its weight holds the value vectors.
        act: the activation function module (site ``act``), or None.
        up: the up projection of a gated FFN (site ``up``), or None.
        gate: the gate projection of a gated FFN (site ``gate``), or None.
        fused_gate_up: a fused projection whose output is ``[gate | up]`` (Phi-3), or None.
        pre: the first FFN projection of a non-gated FFN (site ``pre``: pre-activation), or None.
        attn_out: the attention output projection; its input, split into heads, is the head site.
        ffn_norm: the norm whose input is the residual the FFN reads (pre-FFN norm), or None where the FFN reads
            the residual directly (OLMo-2).
        post_ffn_norm: a norm applied to the FFN output before the residual add (Gemma-2/3, OLMo-2), or None.
        parallel_residual: attention and FFN read the same layer input (GPT-NeoX, GPT-J), so the residual that the
            FFN output is added to is ``x + attn(x)``.
        conv1d: weights are stored ``[in, out]`` (GPT-2's ``Conv1D``) rather than ``[out, in]``.
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
    post_ffn_norm: str | None = None
    parallel_residual: bool = False
    conv1d: bool = False
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def gated(self) -> bool:
        return self.up is not None or self.fused_gate_up is not None


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
        notes: one line shown to users.
    """

    name: str
    model_types: tuple[str, ...]
    layout: str
    spatial_map: bool = True
    notes: str = ""

    def read_layout(self, request: Any) -> Any:
        """The family's :class:`~neuronscope.models.image_grid.ImageLayout` of one batch row."""
        module, function = self.layout.split(":")
        return getattr(import_module(module), function)(request)
