"""The project's own small trained vision-language model and the synthetic world it was trained on.

``load_shapes_vlm()`` returns a stock ``LlavaForConditionalGeneration`` and ``LlavaProcessor`` loaded from the
package (``SHAPES_VLM_PATH``, a few MB, no download): it captions 64 x 64 images of coloured shapes
("An image of a red circle and a blue square"), answers questions about them, and knows a few text facts,
multiple-choice questions and single-digit sums. See ``MODEL_CARD.md`` next to this file for how it was
trained and how well it does; ``neuronscope.bundled.world`` makes held-out images and questions.

Example:
    >>> from neuronscope.bundled import load_shapes_vlm, sample_scenes, render_scene
    >>> model, processor = load_shapes_vlm()
    >>> image = render_scene(sample_scenes(1, seed=0, split="test")[0])
    >>> messages = [{"role": "user", "content": [{"type": "image"},
    ...             {"type": "text", "text": "Describe the image in few words."}]},
    ...             {"role": "assistant", "content": [{"type": "text", "text": "An image of"}]}]
    >>> text = processor.apply_chat_template(messages, continue_final_message=True, tokenize=False)
    >>> inputs = processor(text=text, images=image, return_tensors="pt")
    >>> out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neuronscope.bundled.knowledge import (
    DOMAINS,
    Fact,
    MCQARecord,
    SumExample,
    VQAExample,
    facts_dataset,
    mcqa_dataset,
    mcqa_prompt,
    sums_dataset,
    vqa_dataset,
)
from neuronscope.bundled.world import (
    CAPTION_PREFIX,
    CAPTION_PROMPT,
    COLOURS,
    GRID_SIZE,
    IMAGE_SIZE,
    PATCH_SIZE,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    caption_for,
    render_scene,
    sample_scenes,
)
from neuronscope.errors import InputError

SHAPES_VLM_PATH: Path = Path(__file__).resolve().parent / "shapes_vlm"


def load_shapes_vlm(
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[Any, Any]:
    """Load the bundled shapes VLM as ``(LlavaForConditionalGeneration, LlavaProcessor)``, in eval mode.

    Args:
        dtype: weights' dtype (default float32, as trained; float16/bfloat16 also work on GPU).
        device: where to put the model (default "cpu").

    Example:
        >>> model, processor = load_shapes_vlm()
        >>> model.config.model_type, processor.image_token
        ('llava', '<image>')
    """
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    if not (SHAPES_VLM_PATH / "model.safetensors").is_file():
        raise InputError(
            f"the bundled model is missing from {SHAPES_VLM_PATH}; reinstall neuronscope, or rebuild it with "
            f"`python -m neuronscope.bundled.train --out {SHAPES_VLM_PATH}`"
        )
    model = LlavaForConditionalGeneration.from_pretrained(SHAPES_VLM_PATH, dtype=dtype).to(device).eval()
    processor = LlavaProcessor.from_pretrained(SHAPES_VLM_PATH)
    return model, processor


__all__ = [
    "CAPTION_PREFIX", "CAPTION_PROMPT", "COLOURS", "DOMAINS", "GRID_SIZE", "IMAGE_SIZE", "PATCH_SIZE", "SHAPES",
    "SHAPES_VLM_PATH", "SIZES", "Fact", "MCQARecord", "Scene", "ShapeObject", "SumExample", "VQAExample",
    "caption_for", "facts_dataset", "load_shapes_vlm", "mcqa_dataset", "mcqa_prompt", "render_scene",
    "sample_scenes", "sums_dataset", "vqa_dataset",
]  # fmt: skip
