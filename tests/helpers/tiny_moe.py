"""Tiny random mixture-of-experts models of every covered family, built from configs (no downloads).

Hidden 16, 2 layers, 4 routed experts of 12 neurons (8 in two groups for DeepSeek and GLM), top-2
(Llama-4: top-1); families with dense layers have layer
0 dense (DeepSeek-V2/V3 and GLM-4-MoE ``first_k_dense_replace=1``, Qwen3-MoE ``mlp_only_layers=[0]`` in
``qwen3_moe_dense``, Llama-4 ``interleave_moe_layer_step=2``). Router weights, biases, norms and DeepSeek's
``e_score_correction_bias`` are randomised, so that routing and identities are not trivially true.
"""

from __future__ import annotations

import torch
import transformers as T

VOCAB = 64
_C = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0, hidden_size=16, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
_MLA = dict(kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=4, num_key_value_heads=4)
_E = dict(num_experts_per_tok=2)

CONFIGS = {
    "mixtral": lambda: T.MixtralConfig(intermediate_size=12, num_local_experts=4, **_E, **_C),
    "qwen2_moe": lambda: T.Qwen2MoeConfig(intermediate_size=24, moe_intermediate_size=12, num_experts=4,
                                          shared_expert_intermediate_size=20, **_E, **_C),
    "qwen3_moe": lambda: T.Qwen3MoeConfig(head_dim=4, intermediate_size=24, moe_intermediate_size=12,
                                          num_experts=4, norm_topk_prob=True, **_E, **_C),
    "qwen3_moe_dense": lambda: T.Qwen3MoeConfig(head_dim=4, intermediate_size=24, moe_intermediate_size=12,
                                                num_experts=4, mlp_only_layers=[0], **_E, **_C),
    "qwen3_5_moe": lambda: T.Qwen3_5MoeTextConfig(
        head_dim=4, moe_intermediate_size=12, shared_expert_intermediate_size=20, num_experts=4,
        linear_key_head_dim=4, linear_value_head_dim=4, linear_num_key_heads=2, linear_num_value_heads=4,
        layer_types=["linear_attention", "full_attention"], **_E, **_C),
    "olmoe": lambda: T.OlmoeConfig(intermediate_size=12, num_experts=4, **_E, **_C),
    "deepseek_v2": lambda: T.DeepseekV2Config(
        intermediate_size=24, moe_intermediate_size=12, n_routed_experts=8, n_shared_experts=1,
        first_k_dense_replace=1, q_lora_rank=None, n_group=2, topk_group=1, topk_method="group_limited_greedy",
        routed_scaling_factor=1.5, **_E, **{**_C, **_MLA}),
    "deepseek_v3": lambda: T.DeepseekV3Config(
        intermediate_size=24, moe_intermediate_size=12, n_routed_experts=8, n_shared_experts=1,
        first_k_dense_replace=1, q_lora_rank=8, n_group=2, topk_group=1, routed_scaling_factor=2.5, **_E,
        **{**_C, **_MLA}),
    "glm4_moe": lambda: T.Glm4MoeConfig(intermediate_size=24, moe_intermediate_size=12, n_routed_experts=8,
                                        n_shared_experts=1, first_k_dense_replace=1, n_group=2, topk_group=1,
                                        head_dim=4, routed_scaling_factor=1.8, **_E, **_C),
    "gpt_oss": lambda: T.GptOssConfig(intermediate_size=12, num_local_experts=4, head_dim=4, sliding_window=8,
                                      swiglu_limit=0.5, **_E, **_C),
    "granitemoe": lambda: T.GraniteMoeConfig(intermediate_size=12, num_local_experts=4, residual_multiplier=0.7,
                                             **_E, **_C),
    "phimoe": lambda: T.PhimoeConfig(intermediate_size=12, num_local_experts=4, **_E, **_C),
    "llama4_text": lambda: T.Llama4TextConfig(intermediate_size=12, intermediate_size_mlp=24, num_local_experts=4,
                                              num_experts_per_tok=1, head_dim=4, interleave_moe_layer_step=2, **_C),
}
MOE_FAMILIES = tuple(CONFIGS)
#: the families whose tests must pass first (the core of issue 15)
CORE = ("mixtral", "qwen3_moe", "deepseek_v3", "gpt_oss")


def tiny_moe_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float64,
                   experts_implementation: str | None = None) -> torch.nn.Module:
    """A tiny random MoE causal LM of ``family`` in eval mode, deterministic by ``seed`` (float64 by default, for
    identities to float64 precision). ``experts_implementation``: transformers' ``"eager"``, ``"batched_mm"`` or
    ``"grouped_mm"`` (default: ``"batched_mm"`` for float64, which ``grouped_mm`` does not take on a CPU; the
    transformers default otherwise)."""
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    if experts_implementation is None and dtype == torch.float64:
        experts_implementation = "batched_mm"
    if experts_implementation is not None:
        config._experts_implementation = experts_implementation
    model = T.AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "router" in name or name.endswith("gate.weight"):
                param.add_(0.5 * torch.randn_like(param))
            if "experts" in name and "proj" in name:  # larger expert weights: activations far from zero
                param.mul_(8.0)
            if "embed_tokens" in name:  # token-specific residuals, so that tokens route differently
                param.mul_(50.0)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(0.1 * torch.randn_like(buffer))
    return model.eval()


def random_ids(batch: int = 3, length: int = 7, seed: int = 1, left_pad: tuple[int, ...] = ()) -> dict:
    """Random ``input_ids`` and ``attention_mask`` (``left_pad[r]`` pad tokens on the left of row r)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, pad in enumerate(left_pad):
        ids[row, :pad] = 0
        mask[row, :pad] = 0
    return {"input_ids": ids, "attention_mask": mask}


def tiny_qwen3_vl_moe(seed: int = 0, dtype: torch.dtype = torch.float64):
    """A tiny random Qwen3-VL-MoE (4 experts of 12, top-2, 2 layers; vision patch 4, 2x2 merge: one token per
    8x8 px) and its real processor class with a local character tokenizer: ``(model, processor)``."""
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration, Qwen3VLProcessor

    from helpers.tiny_vlms import _qwen_image_processor, _qwen_tokens, _without_video_check, char_tokenizer

    tok = char_tokenizer(_qwen_tokens())
    processor = _without_video_check(Qwen3VLProcessor)(image_processor=_qwen_image_processor(), tokenizer=tok,
                                                       video_processor=None)
    ids = {t: tok.convert_tokens_to_ids(t) for t in _qwen_tokens()}
    rope = {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0, "mrope_interleaved": True}
    config = Qwen3VLMoeConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, moe_intermediate_size=12,
                         num_experts=4, num_experts_per_tok=2, max_position_embeddings=4096,
                         pad_token_id=tok.pad_token_id, bos_token_id=2, eos_token_id=3, rope_parameters=rope),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32,
                           num_position_embeddings=64, deepstack_visual_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    config.get_text_config()._experts_implementation = "batched_mm"
    torch.manual_seed(seed)
    model = Qwen3VLMoeForConditionalGeneration(config).to(dtype).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "experts" in name:
                param.mul_(8.0)
            if "gate.weight" in name:
                param.add_(0.5 * torch.randn_like(param))
    return model, processor
