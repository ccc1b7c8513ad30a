"""Tiny random text models of every supported family, built from configs (no downloads)."""

from __future__ import annotations

import torch
import transformers as T

VOCAB = 64
_COMMON = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_GATED = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=24, **_COMMON)

CONFIGS = {
    "gpt2": lambda: T.GPT2Config(n_embd=16, n_layer=2, n_head=4, n_positions=64, **_COMMON),
    "gpt_neox": lambda: T.GPTNeoXConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=24, max_position_embeddings=64, **_COMMON),
    "llama": lambda: T.LlamaConfig(**_GATED),
    "mistral": lambda: T.MistralConfig(**_GATED),
    "qwen2": lambda: T.Qwen2Config(**_GATED),
    "qwen3": lambda: T.Qwen3Config(head_dim=4, **_GATED),
    "gemma2": lambda: T.Gemma2Config(head_dim=4, **_GATED),
    "gemma3_text": lambda: T.Gemma3TextConfig(head_dim=4, **_GATED),
    "phi3": lambda: T.Phi3Config(**_GATED),
    "olmo2": lambda: T.Olmo2Config(**_GATED),
}
TEXT_FAMILIES = tuple(CONFIGS)


def tiny_text_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A tiny random causal LM of ``family`` in eval mode, deterministic by ``seed``."""
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    model = T.AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():  # random norms and biases, so that identities are not trivially true
        for name, param in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith(".bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def random_batch(batch: int = 3, length: int = 7, seed: int = 1, left_pad: tuple[int, ...] = ()) -> dict:
    """Random ``input_ids`` and ``attention_mask``; ``left_pad[r]`` pad tokens on the left of row r."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, pad in enumerate(left_pad):
        ids[row, :pad] = 0
        mask[row, :pad] = 0
    return {"input_ids": ids, "attention_mask": mask}
