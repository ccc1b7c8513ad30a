"""The tiny Qwen3-VL-MoE of :mod:`helpers.tiny_moe` with a minimal chat template (the tiny processor ships none),
for the multimodal-neurons pipeline."""

from __future__ import annotations

import torch

from helpers.tiny_moe import tiny_qwen3_vl_moe

PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def chat_qwen3_vl_moe(seed: int = 0, dtype: torch.dtype = torch.float32):
    """``(model, processor)``: tiny Qwen3-VL-MoE whose processor's chat template puts the image placeholder, the
    user text, then ``\\nA:``."""
    model, processor = tiny_qwen3_vl_moe(seed=seed, dtype=dtype)
    processor.chat_template = (
        "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}" + PLACEHOLDER
        + "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}\nA:{% endif %}")
    return model, processor
