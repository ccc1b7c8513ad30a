"""What a model's decode steps read, as far as greedy decoding with a static cache needs to know.

The image inputs below are read by the prompt's call only (LLaVA's ``pixel_values``, LLaVA-NeXT's
``image_sizes``, Idefics3 / SmolVLM's ``pixel_attention_mask``): after it, each decode step of these models takes
the new token, the attention mask and the position ids alone. A batch with any other input (Qwen2-VL's
``image_grid_thw`` and ``mm_token_type_ids``, which its 3-D rotary positions need at every step; PaliGemma's
``token_type_ids``) is decoded by ``model.generate`` instead.
"""

from __future__ import annotations

from typing import Any

#: inputs of every text batch.
TEXT_INPUTS = frozenset({"input_ids", "attention_mask", "position_ids"})

#: inputs that only the prompt's call reads.
PROMPT_ONLY_INPUTS = frozenset({"pixel_values", "image_sizes", "pixel_attention_mask"})


def image_encoder(model: Any) -> Any | None:
    """The module whose ``get_image_features`` the prompt's forward calls (the vision tower and the projector), or
    None for a model without one. transformers' vision-language models define it on the base model under the head
    (``LlavaForConditionalGeneration.model``: ``LlavaModel``), whose ``forward`` calls ``self.get_image_features``;
    the head's own method only hands the call down."""
    for module in (getattr(model, "model", None), model):
        if module is not None and callable(getattr(type(module), "get_image_features", None)):
            return module
    return None
