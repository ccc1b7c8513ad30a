"""A mixture-of-experts family's facts (:class:`MoEFamily`): pure data, importable without torch, so that
``neuronscope models`` lists the MoE families from the same declarations the adapter uses."""

from __future__ import annotations

from dataclasses import dataclass

from neuronscope.models.spec import FamilySpec


@dataclass(frozen=True)
class MoEFamily:
    """Module names and routing rule of an MoE family (names relative to one decoder layer / the MoE block).

    Attributes:
        name: short family name.
        model_types: ``config.model_type`` values (of the text config) it adapts.
        block: the MoE block in a decoder layer (``"mlp"``, ``"block_sparse_moe"``, ``"feed_forward"``); dense
            layers of the same model hold a plain MLP under the same name.
        router: the router module in the block.
        routing: the routing rule, a key of :data:`neuronscope.models.moe.routing.RULES`.
        text: the family spec of the dense parts (attention output, FFN norm, the dense MLP of dense layers).
        experts: the fused experts module in the block.
        shared: shared-expert MLP modules in the block, in id order (ids ``E``, ``E + 1``, ...).
        shared_gate: a ``Linear`` whose sigmoid multiplies the shared expert's output (Qwen2-MoE, Qwen3.5-MoE).
        weight_on_input: the router weight scales the expert's *input* (Llama-4), not its output.
        residual_scale: config attribute that multiplies the block's output before the residual add (Granite).
        dense_rule: how the config says which layers are dense (documentation, checked against the modules).
        notes: one line shown to users.
    """

    name: str
    model_types: tuple[str, ...]
    block: str
    router: str
    routing: str
    text: FamilySpec
    experts: str = "experts"
    shared: tuple[str, ...] = ()
    shared_gate: str | None = None
    weight_on_input: bool = False
    residual_scale: str | None = None
    dense_rule: str = "none: every layer is an MoE layer"
    notes: str = ""
