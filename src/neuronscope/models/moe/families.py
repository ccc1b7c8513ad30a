"""One entry per mixture-of-experts family (transformers 5.24 module trees), and :func:`find_moe`, which resolves
a live model's MoE and dense layers.

Module trees (names relative to one decoder layer; ``E`` routed experts of ``f`` neurons each):

- Mixtral: ``mlp.gate`` (router: softmax, top-k, renormalised, weights kept float32), ``mlp.experts``.
- Qwen2-MoE: ``mlp.gate``, ``mlp.experts``, ``mlp.shared_expert`` (its output times
  ``sigmoid(mlp.shared_expert_gate(x))``); dense ``mlp`` where ``layer in mlp_only_layers`` or
  ``(layer + 1) % decoder_sparse_step != 0``. Qwen3-MoE: the same without the shared expert. Qwen3.5-MoE:
  Qwen2-MoE's block in every layer (linear- and full-attention layers alike). Qwen3-VL-MoE: Qwen3-MoE's block.
- OLMoE: ``mlp.gate`` / ``mlp.experts`` in every layer.
- DeepSeek-V2: ``mlp.gate`` (softmax, greedy or group-limited, times ``routed_scaling_factor``, not
  renormalised), ``mlp.experts``, ``mlp.shared_experts`` (one MLP of ``n_shared_experts · moe_intermediate_size``
  neurons, weight 1); dense ``mlp`` for ``layer < first_k_dense_replace``. DeepSeek-V3 and GLM-4-MoE: the same
  block with a sigmoid router (``e_score_correction_bias`` for the choice only, best groups by their two best
  scores, renormalised, times ``routed_scaling_factor``).
- gpt-oss: ``mlp.router`` (a biased linear; softmax over the top-k logits), ``mlp.experts`` with transposed,
  interleaved ``gate_up_proj [E, d, 2f]``, biases, and the clamped activation ``(up + 1) · gate · σ(α·gate)``.
- Granite-MoE: ``block_sparse_moe.router`` (softmax over the top-k logits), ``block_sparse_moe.experts``; the
  block's output is multiplied by ``residual_multiplier`` before the residual add.
- PhiMoE: ``mlp.router`` (the sparse mixer, top-2), ``mlp.experts``.
- Llama-4: ``feed_forward.router`` (top-k logits, sigmoid), ``feed_forward.experts`` (``Llama4TextExperts``, not
  transformers' experts interface: every expert runs on every token, its *input* scaled by the router weight,
  0 for unchosen experts), ``feed_forward.shared_expert``; dense ``feed_forward`` for layers not in
  ``config.moe_layers`` (every ``interleave_moe_layer_step``-th layer).

Adding a family: an :class:`~neuronscope.models.moe.spec.MoEFamily` below (its routing rule in ``routing.py`` if
new), its entry in ``MOE_FAMILIES``, and a tiny config in ``tests/helpers/tiny_moe.py`` (every test then runs it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from neuronscope.errors import UnsupportedModelError
from neuronscope.models.families.common import mixer_by_module
from neuronscope.models.moe.family import MoEFamily
from neuronscope.models.spec import FamilySpec, VisionFamily

if TYPE_CHECKING:  # the declarations load without torch (``neuronscope models``)
    from torch import nn

    from neuronscope.models.moe.spec import ExpertLayer, MoEStructure

FAMILIES_FILE = "src/neuronscope/models/moe/families.py"


def _text(name: str, block: str = "mlp", act: str = "act_fn", **facts: Any) -> FamilySpec:
    return FamilySpec(name=f"{name}:dense", model_types=(), down=f"{block}.down_proj", act=f"{block}.{act}",
                      up=f"{block}.up_proj", gate=f"{block}.gate_proj", attn_out="self_attn.o_proj",
                      attn_norm="input_layernorm", ffn_norm="post_attention_layernorm",
                      notes=f"attention and dense layers of {name}", **facts)


_SPARSE_STEP = "dense where layer in mlp_only_layers or (layer + 1) % decoder_sparse_step != 0"
_FIRST_K = "dense where layer < first_k_dense_replace"

MOE_FAMILIES: tuple[MoEFamily, ...] = (
    MoEFamily("mixtral", ("mixtral",), "mlp", "gate", "softmax_topk_float", _text("mixtral"),
              notes="Mixtral: softmax top-k, renormalised"),
    MoEFamily("qwen2_moe", ("qwen2_moe",), "mlp", "gate", "softmax_topk", _text("qwen2_moe"),
              shared=("shared_expert",), shared_gate="shared_expert_gate", dense_rule=_SPARSE_STEP,
              notes="Qwen2-MoE: softmax top-k, a sigmoid-gated shared expert"),
    MoEFamily("qwen3_moe", ("qwen3_moe", "qwen3_vl_moe_text"), "mlp", "gate", "softmax_topk",
              _text("qwen3_moe"), dense_rule=_SPARSE_STEP, notes="Qwen3-MoE / Qwen3-VL-MoE: softmax top-k"),
    MoEFamily("qwen3_5_moe", ("qwen3_5_moe_text", "qwen3_5_moe"), "mlp", "gate", "softmax_topk",
              _text("qwen3_5_moe", mixer=mixer_by_module({"self_attn": "attention", "linear_attn": "linear_attention"})),
              shared=("shared_expert",), shared_gate="shared_expert_gate",
              notes="Qwen3.5-MoE: softmax top-k, a sigmoid-gated shared expert, hybrid linear attention"),
    MoEFamily("olmoe", ("olmoe",), "mlp", "gate", "softmax_topk", _text("olmoe"), notes="OLMoE: softmax top-k"),
    MoEFamily("deepseek_v2", ("deepseek_v2",), "mlp", "gate", "softmax_group", _text("deepseek_v2"),
              shared=("shared_experts",), dense_rule=_FIRST_K,
              notes="DeepSeek-V2: softmax, group-limited top-k, routed_scaling_factor, shared experts"),
    MoEFamily("deepseek_v3", ("deepseek_v3",), "mlp", "gate", "sigmoid_group", _text("deepseek_v3"),
              shared=("shared_experts",), dense_rule=_FIRST_K,
              notes="DeepSeek-V3: sigmoid + bias choice, group-limited, renormalised, routed_scaling_factor"),
    MoEFamily("glm4_moe", ("glm4_moe",), "mlp", "gate", "sigmoid_group", _text("glm4_moe"),
              shared=("shared_experts",), dense_rule=_FIRST_K, notes="GLM-4-MoE: DeepSeek-V3's router"),
    MoEFamily("gpt_oss", ("gpt_oss",), "mlp", "router", "topk_softmax", _text("gpt_oss"),
              notes="gpt-oss: biased router, softmax over top-k, clamped biased SwiGLU experts"),
    MoEFamily("granitemoe", ("granitemoe",), "block_sparse_moe", "router", "topk_softmax",
              _text("granitemoe", "block_sparse_moe", attn_scale=("layer.residual_multiplier",),
                    logits=(("divide", "config.logits_scaling"),)), residual_scale="residual_multiplier",
              notes="Granite-MoE: softmax over top-k; output times residual_multiplier"),
    MoEFamily("phimoe", ("phimoe",), "mlp", "router", "sparse_mixer", _text("phimoe"),
              notes="PhiMoE: sparse mixer top-2"),
    MoEFamily("llama4_text", ("llama4_text", "llama4"), "feed_forward", "router", "llama4",
              _text("llama4_text", "feed_forward", "activation_fn"), shared=("shared_expert",),
              weight_on_input=True, dense_rule="dense where layer not in moe_layers",
              notes="Llama-4: sigmoid top-k weight on the expert input, a shared expert, interleaved dense layers"),
)

#: the MoE vision-language wrappers (their language model is adapted by the MoE family of the text config).
MOE_VISION_FAMILIES: tuple[VisionFamily, ...] = (
    VisionFamily("qwen3_vl_moe", ("qwen3_vl_moe",), layout="neuronscope.models.layouts.qwen2_vl:qwen2_vl_layout",
                 notes="Qwen3-VL-MoE: dynamic grid from image_grid_thw, 2x2 merge (as Qwen2-VL)"),
    VisionFamily("qwen3_5_moe", ("qwen3_5_moe",), layout="neuronscope.models.layouts.qwen2_vl:qwen2_vl_layout",
                 notes="Qwen3.5-MoE: dynamic grid from image_grid_thw, 2x2 merge (as Qwen2-VL)"),
)


def moe_family(*model_types: str) -> MoEFamily | None:
    """The MoE family adapting any of ``model_types``, or None."""
    for family in MOE_FAMILIES:
        if any(t in family.model_types for t in model_types):
            return family
    return None


def _expected_moe_layers(family: MoEFamily, config: Any, n_layers: int) -> set[int] | None:
    """MoE layers according to the config (None where the family has no rule to check)."""
    if family.dense_rule == _SPARSE_STEP:
        only = set(getattr(config, "mlp_only_layers", None) or [])
        step = int(getattr(config, "decoder_sparse_step", 1) or 1)
        return {i for i in range(n_layers) if i not in only and (i + 1) % step == 0}
    if family.dense_rule == _FIRST_K:
        return set(range(int(getattr(config, "first_k_dense_replace", 0) or 0), n_layers))
    if family.name == "llama4_text":
        return set(getattr(config, "moe_layers", None) or [])
    return set(range(n_layers))


def _experts_module(layer: nn.Module) -> nn.Module | None:
    """A fused experts module of a decoder layer (named ``*experts``, or a class named ``*Experts``), or None."""
    for name, module in layer.named_modules():
        if name.count(".") <= 2 and (name.split(".")[-1] == "experts" or type(module).__name__.endswith("Experts")):
            return module
    return None


def _resolve_layer(family: MoEFamily, index: int, block: nn.Module) -> ExpertLayer:
    experts = getattr(block, family.experts)
    router = getattr(block, family.router, None)
    if router is None:
        raise _not_covered(family.name, f"layer {index} has no router '{family.block}.{family.router}'")
    if getattr(experts, "has_post_expert_norm", False):
        raise _not_covered(family.name, "its experts apply a norm after the down projection (not linear in "
                                        "the neurons)")
    interface = hasattr(experts, "is_transposed")
    transposed = bool(experts.is_transposed) if interface else True
    down = experts.down_proj
    width = int(down.shape[1] if transposed else down.shape[2])
    shared = tuple(getattr(block, name) for name in family.shared)
    gate = getattr(block, family.shared_gate) if family.shared_gate else None
    from neuronscope.models.moe.spec import ExpertLayer

    return ExpertLayer(index, family, block, router, experts, shared, gate, int(down.shape[0]), int(router.top_k),
                       width, tuple(int(m.down_proj.in_features) for m in shared), transposed, interface,
                       bool(getattr(experts, "has_bias", False)))


def _not_covered(name: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"model type '{name}' is a mixture-of-experts family that neuronscope does not cover yet ({why}). Add it "
        f"in {FAMILIES_FILE} (an MoEFamily naming its block, router, experts and shared experts; a routing rule "
        "in src/neuronscope/models/moe/routing.py if new) and a tiny config in tests/helpers/tiny_moe.py"
    )


def find_moe(model_types: tuple[str, ...], layers: nn.ModuleList, config: Any, d_model: int) -> MoEStructure | None:
    """The MoE structure of a model whose decoder layers are ``layers``, or None for a dense model.

    Raises:
        UnsupportedModelError: the layers hold a fused experts module of a family not listed here, or a listed
            family whose modules do not match its config (a changed modeling file).
    """
    family = moe_family(*model_types)
    if family is None:
        if any(_experts_module(layer) is not None for layer in layers):
            raise _not_covered(model_types[-1], "its decoder layers hold a fused experts module")
        return None
    moe: dict[int, ExpertLayer] = {}
    dense: dict[int, int] = {}
    for index, layer in enumerate(layers):
        block = getattr(layer, family.block, None)
        if block is None:
            raise _not_covered(family.name, f"layer {index} has no '{family.block}' module")
        if hasattr(block, family.experts):
            moe[index] = _resolve_layer(family, index, block)
        elif hasattr(block, "down_proj"):
            dense[index] = int(block.down_proj.in_features)
        else:
            raise _not_covered(family.name, f"layer {index}'s '{family.block}' is neither experts nor a dense MLP")
    expected = _expected_moe_layers(family, config, len(layers))
    if not moe or (expected is not None and expected != set(moe)):
        raise _not_covered(family.name, f"its MoE layers {sorted(moe)} differ from what the config says "
                                        f"({family.dense_rule}: {sorted(expected or [])})")
    scale = float(getattr(config, family.residual_scale, 1.0)) if family.residual_scale else 1.0
    from neuronscope.models.moe.spec import MoEStructure

    return MoEStructure(family, moe, dense, d_model, scale)
