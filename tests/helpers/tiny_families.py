"""Tiny random models of every text family the adapter accepts, from configs (no downloads).

``CASES`` lists ``"<model_type>"`` or ``"<model_type>:<variant>"`` for every model type named by a text
``FamilySpec`` (a config switch that changes the residual, such as Falcon's parallel attention, gets its own
variant). Multipliers, soft-caps and logit scales are set to values other than 1 so that forgetting one shows;
norm weights, biases and Gemma-4's layer scalar are randomised for the same reason.

Example::

    model = tiny_family_model("granite", dtype=torch.float64)
"""

from __future__ import annotations

from typing import Any

import torch
import transformers as T

VOCAB = 64
_SIZES = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=24, vocab_size=VOCAB, head_dim=4, max_position_embeddings=64,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)

# Per model type: config fields beyond the common sizes (values != 1 where they scale something; None drops a
# common size the config does not take).
_EXTRA: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_embd=16, n_layer=2, n_head=4, n_positions=64),
    "gpt-sw3": dict(n_embd=16, n_layer=2, n_head=4, n_positions=64),
    "axk1": dict(qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4, q_lora_rank=8, kv_lora_rank=8,
                 num_key_value_heads=4),
    "gpt_bigcode": dict(n_embd=16, n_layer=2, n_head=4, n_positions=64, n_inner=24, multi_query=True),
    "gptj": dict(n_embd=16, n_layer=2, n_head=4, n_positions=64, rotary_dim=4, n_inner=24),
    "codegen": dict(n_embd=16, n_layer=2, n_head=4, n_positions=64, n_ctx=64, rotary_dim=4, n_inner=24),
    "bloom": dict(hidden_size=16, n_layer=2, n_head=4),
    "mpt": dict(d_model=16, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=64),
    "falcon": dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=4, bias=True,
                   head_dim=None),
    "gpt_neox": dict(rotary_pct=0.5),
    "phi": dict(partial_rotary_factor=0.5),
    "persimmon": dict(partial_rotary_factor=0.5),
    "stablelm": dict(partial_rotary_factor=0.5),
    "granite": dict(residual_multiplier=0.37, logits_scaling=3.1, embedding_multiplier=2.0, attention_multiplier=0.3),
    "granite_swa": dict(residual_multiplier=0.37, logits_scaling=3.1, embedding_multiplier=2.0),
    "hyperclovax": dict(residual_multiplier=0.41, logits_scaling=1.7, embedding_multiplier=1.5),
    "minicpm3": dict(scale_depth=1.4, scale_emb=2.0, dim_model_base=6, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4,
                     q_lora_rank=8, kv_lora_rank=8, num_key_value_heads=4),
    "youtu": dict(qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4, q_lora_rank=8, kv_lora_rank=8,
                  num_key_value_heads=4),
    "cohere": dict(logit_scale=0.5), "cohere2": dict(logit_scale=0.5, sliding_window=4),
    "gemma2": dict(final_logit_softcapping=3.0), "gemma3_text": dict(final_logit_softcapping=3.0),
    "vaultgemma": dict(final_logit_softcapping=3.0),
    "nanochat": dict(final_logit_softcapping=3.0),
    "gemma4_text": dict(final_logit_softcapping=3.0, global_head_dim=8, hidden_size_per_layer_input=0,
                        vocab_size_per_layer_input=VOCAB, layer_types=["sliding_attention", "full_attention"],
                        sliding_window=4),
    "gemma4_unified_text": dict(final_logit_softcapping=3.0, global_head_dim=8, hidden_size_per_layer_input=0,
                                vocab_size_per_layer_input=VOCAB,
                                layer_types=["sliding_attention", "full_attention"], sliding_window=4),
    "falcon_h1": dict(mamba_d_ssm=16, mamba_n_heads=4, mamba_d_head=4, mamba_d_state=4, mamba_n_groups=1,
                      mamba_chunk_size=4, lm_head_multiplier=0.7, embedding_multiplier=1.3,
                      attention_in_multiplier=0.9, attention_out_multiplier=0.6, ssm_out_multiplier=0.8,
                      ssm_in_multiplier=1.1, key_multiplier=0.9, mlp_multipliers=[1.2, 0.55]),
    "jamba": dict(num_experts=1, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=1,
                  expert_layer_offset=0, mamba_d_state=4, mamba_d_conv=2, mamba_expand=2, mamba_dt_rank=4,
                  use_mamba_kernels=False),
    "nemotron_h": dict(layers_block_type=["linear_attention", "mlp", "full_attention", "mlp"], num_hidden_layers=4,
                       mamba_num_heads=4, mamba_head_dim=8, ssm_state_size=4, n_groups=1, chunk_size=4,
                       expand=2, mamba_hidden_act="silu"),
    "qwen3_5_text": dict(layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                         linear_num_value_heads=2, linear_key_head_dim=4, linear_value_head_dim=4,
                         linear_conv_kernel_dim=2),
    "qwen3_next": dict(layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                       linear_num_value_heads=2, linear_key_head_dim=4, linear_value_head_dim=4,
                       linear_conv_kernel_dim=2, num_experts=0, mlp_only_layers=[0, 1]),
    "lfm2": dict(layer_types=["conv", "full_attention"], block_auto_adjust_ff_dim=False, block_ff_dim=24,
                 conv_L_cache=2),
    "lfm3": dict(layer_types=["conv", "full_attention"], block_auto_adjust_ff_dim=False, block_ff_dim=24,
                 conv_L_cache=2),
}

# Config switches that change the residual: each gets its own case.
_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "falcon": {"sequential": dict(parallel_attn=False, new_decoder_architecture=False),
               "parallel": dict(parallel_attn=True, new_decoder_architecture=False),
               "new_arch": dict(new_decoder_architecture=True, num_ln_in_parallel_attn=2, num_kv_heads=2)},
    "gpt_neox": {"parallel": dict(use_parallel_residual=True), "sequential": dict(use_parallel_residual=False)},
    "stablelm": {"sequential": dict(use_parallel_residual=False), "parallel": dict(use_parallel_residual=True)},
    "gemma4_text": {"ple": dict(hidden_size_per_layer_input=4)},
}


def _text_types() -> list[str]:
    from neuronscope.models.families import TEXT_SPECS

    return [model_type for spec in TEXT_SPECS for model_type in spec.model_types]


#: Model types of text specs that are built only inside their VLM (their tiny config lives in the VLM helpers).
VLM_ONLY = ("qwen2_vl_text", "qwen2_5_vl_text", "qwen3_vl_text")

CASES: tuple[str, ...] = tuple(
    case
    for model_type in _text_types()
    if model_type not in VLM_ONLY
    for case in ([model_type] + [f"{model_type}:{v}" for v in _VARIANTS.get(model_type, {})])
)


def tiny_config(case: str) -> Any:
    """The tiny config of ``case`` (``"<model_type>"`` or ``"<model_type>:<variant>"``)."""
    model_type, _, variant = case.partition(":")
    config_class = T.CONFIG_MAPPING[model_type]
    default = config_class()
    sizes = {k: v for k, v in _SIZES.items() if _has(default, k)}
    extra = dict(_EXTRA.get(model_type, {}))
    if variant:
        extra.update(_VARIANTS[model_type][variant])
    merged = {key: value for key, value in {**sizes, **extra}.items() if value is not None}  # None drops a size
    return config_class(**merged)


def _has(config: Any, name: str) -> bool:
    try:
        return hasattr(config, name) or name in getattr(config, "attribute_map", {})
    except Exception:  # per-layer attributes raise on access
        return True


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random norm weights, biases and layer scalars, so that identities are not trivially true."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point():
                continue
            if "norm" in name or "ln_" in name or name.endswith(".bias") or "layernorm" in name:
                noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64).to(tensor.dtype)
                tensor.add_(0.1 * noise)
            elif name.endswith("layer_scalar"):
                tensor.fill_(0.8)
    return model


def tiny_family_model(case: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A tiny random causal LM of ``case`` in eval mode, deterministic by ``seed``."""
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(tiny_config(case), dtype=dtype)
    return randomise(model, seed).eval()


def cases_of(*spec_names: str) -> tuple[str, ...]:
    """The cases whose model type a text spec of one of ``spec_names`` adapts."""
    from neuronscope.models.families import TEXT_SPECS

    types = {t for spec in TEXT_SPECS if spec.name in spec_names for t in spec.model_types}
    return tuple(case for case in CASES if case.partition(":")[0] in types)
