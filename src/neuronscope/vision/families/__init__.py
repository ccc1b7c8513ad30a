"""One layout reader per VLM family, keyed by ``config.model_type``.

Adding a family: write ``families/<name>.py`` with a function ``LayoutRequest -> ImageLayout`` whose module
docstring describes the model's module tree and the processor's token layout, register it below, and add a
test in ``tests/vision/test_layout.py`` that checks it against the family's processor.
"""

from __future__ import annotations

from collections.abc import Callable

from neuronscope.vision.families.blip import blip_layout
from neuronscope.vision.families.idefics3 import idefics3_layout
from neuronscope.vision.families.llava import llava_layout
from neuronscope.vision.families.llava_next import llava_next_layout
from neuronscope.vision.families.qwen2_vl import qwen2_vl_layout
from neuronscope.vision.grid import ImageLayout, LayoutRequest

LAYOUT_READERS: dict[str, Callable[[LayoutRequest], ImageLayout]] = {
    "llava": llava_layout,
    "llava_next": llava_next_layout,
    "qwen2_vl": qwen2_vl_layout,
    "qwen2_5_vl": qwen2_vl_layout,
    "idefics3": idefics3_layout,
    "smolvlm": idefics3_layout,  # same crops, markers and pixel shuffle as Idefics3
    "instructblip": blip_layout,
    "blip-2": blip_layout,
    "blip_2": blip_layout,
}

__all__ = ["LAYOUT_READERS"]
