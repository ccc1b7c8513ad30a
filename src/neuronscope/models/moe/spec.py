"""What a mixture-of-experts layer is: a family's facts (:class:`MoEFamily`, pure data) and one MoE layer resolved
on a live model (:class:`ExpertLayer`).

In transformers 5 the routed experts of a layer are fused parameters inside one ``*Experts`` module:
``gate_up_proj [E, 2·f, d]`` and ``down_proj [E, d, f]`` for most families, ``[E, d, 2·f]`` / ``[E, f, d]``
(transposed) for gpt-oss and Llama-4, with per-expert biases in gpt-oss. A router module computes, per token, the
``k`` chosen experts and the weight ``g_e`` each expert's output is multiplied by (after the family's top-k
renormalisation and ``routed_scaling_factor``); shared experts are plain MLP modules beside them, optionally
multiplied by a sigmoid gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from neuronscope.models.moe.family import MoEFamily
from neuronscope.results.neuron_layout import DENSE, NeuronLayout


@dataclass
class ExpertLayer:
    """One MoE layer of a live model.

    Attributes:
        layer: the decoder layer index.
        block, router, experts: the stock modules.
        shared: the shared-expert MLPs (``down_proj`` input = their neurons); ``shared_gate``: their sigmoid gate.
        n_experts: ``E`` routed experts; ``top_k``: experts per token; ``width``: ``f``, neurons per routed expert.
        shared_widths: neurons of each shared expert.
        transposed: ``down_proj`` is ``[E, f, d]`` (gpt-oss, Llama-4) rather than ``[E, d, f]``.
        interface: the experts module follows transformers' ``use_experts_implementation`` (``_apply_gate``,
            ``has_bias``, ``is_transposed``); False for Llama-4's ``Llama4TextExperts``.
    """

    layer: int
    family: MoEFamily
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    shared: tuple[nn.Module, ...]
    shared_gate: nn.Module | None
    n_experts: int
    top_k: int
    width: int
    shared_widths: tuple[int, ...]
    transposed: bool
    interface: bool
    has_bias: bool = False

    @property
    def device(self) -> torch.device:
        return self.experts.down_proj.device

    def shared_id(self, j: int) -> int:
        """Expert id of shared expert ``j``."""
        return self.n_experts + j

    @property
    def units(self) -> list[tuple[int, int, int]]:
        """``(layer, expert, width)`` of every routed and shared expert."""
        routed = [(self.layer, e, self.width) for e in range(self.n_experts)]
        return routed + [(self.layer, self.shared_id(j), w) for j, w in enumerate(self.shared_widths)]


@dataclass
class MoEStructure:
    """The MoE layers and dense layers of one model, and its neuron layout.

    Attributes:
        family: the MoE family.
        layers: ``{layer: ExpertLayer}`` of the MoE layers.
        dense: ``{layer: width}`` of the dense layers (their FFN width).
        d_model: the residual width.
        residual_scale: the factor the block's output is multiplied by before the residual add (1 but Granite).
        layout: the flat neuron id space (:mod:`neuronscope.results.neuron_layout`).
    """

    family: MoEFamily
    layers: dict[int, ExpertLayer]
    dense: dict[int, int]
    d_model: int
    residual_scale: float = 1.0
    layout: NeuronLayout = field(init=False)

    def __post_init__(self) -> None:
        units = [(layer, DENSE, width) for layer, width in self.dense.items()]
        for moe in self.layers.values():
            units += moe.units
        self.layout = NeuronLayout.from_units(units, {layer: m.n_experts for layer, m in self.layers.items()})

    def is_moe(self, layer: int) -> bool:
        return layer in self.layers

    @property
    def expert_width(self) -> int:
        return next(iter(self.layers.values())).width

    def describe(self) -> dict:
        """For result metadata: family, MoE and dense layers, experts, top-k, widths."""
        first = next(iter(self.layers.values()))
        return {"family": self.family.name, "moe_layers": sorted(self.layers), "dense_layers": sorted(self.dense),
                "n_experts": first.n_experts, "top_k": first.top_k, "expert_width": first.width,
                "shared_widths": list(first.shared_widths), "dense_width": next(iter(self.dense.values()), None),
                "routing": self.family.routing, "n_neurons": self.layout.n_neurons}
