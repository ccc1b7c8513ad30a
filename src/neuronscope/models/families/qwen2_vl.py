"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 (``model_type="qwen2_vl"`` / ``"qwen2_5_vl"`` / ``"qwen3_vl"`` /
``"qwen3_5"``): a dynamic grid per image.

The layout reader of its image tokens: :mod:`neuronscope.models.layouts.qwen2_vl`.
"""

from neuronscope.models.spec import VisionFamily

FAMILIES = (
    VisionFamily("qwen2_vl", ("qwen2_vl",), layout="neuronscope.models.layouts.qwen2_vl:qwen2_vl_layout",
                 notes="Qwen2-VL: dynamic grid from image_grid_thw, 2x2 merge"),
    VisionFamily("qwen2_5_vl", ("qwen2_5_vl",), layout="neuronscope.models.layouts.qwen2_vl:qwen2_vl_layout", notes="Qwen2.5-VL: as Qwen2-VL"),
    VisionFamily("qwen3_vl", ("qwen3_vl",), layout="neuronscope.models.layouts.qwen2_vl:qwen2_vl_layout",
                 notes="Qwen3-VL: as Qwen2-VL (patch 16); DeepStack adds visual features between early layers"),
    VisionFamily("qwen3_5", ("qwen3_5",), layout="neuronscope.models.layouts.qwen2_vl:qwen2_vl_layout",
                 notes="Qwen3.5 (unified vision model): Qwen3-VL's grid, a hybrid Gated-DeltaNet language model"),
)
