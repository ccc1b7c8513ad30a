"""Qwen2-VL and Qwen2.5-VL (``model_type="qwen2_vl"`` / ``"qwen2_5_vl"``): a dynamic grid per image.

The layout reader of its image tokens: :mod:`neuronscope.models.layouts.qwen2_vl`.
"""

from neuronscope.models.spec import VisionFamily

FAMILIES = (
    VisionFamily("qwen2_vl", ("qwen2_vl",), layout="neuronscope.models.layouts.qwen2_vl:qwen2_vl_layout",
                 notes="Qwen2-VL: dynamic grid from image_grid_thw, 2x2 merge"),
    VisionFamily("qwen2_5_vl", ("qwen2_5_vl",), layout="neuronscope.models.layouts.qwen2_vl:qwen2_vl_layout", notes="Qwen2.5-VL: as Qwen2-VL"),
)
