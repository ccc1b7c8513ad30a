"""The multimodal-neurons pipeline on a mixture-of-experts VLM (tiny Qwen3-VL-MoE): one error that says the
pipeline does not cover expert layers yet, before any caption is generated or any file is written."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_moe import tiny_qwen3_vl_moe
from helpers.tiny_vlms import gradient_image
from neuronscope.errors import UnsupportedModelError
from neuronscope.workflows.multimodal.pipeline import find_multimodal_neurons


def test_an_moe_vlm_is_refused_in_one_line_before_anything_is_written(tmp_path) -> None:
    model, processor = tiny_qwen3_vl_moe(dtype=torch.float32)
    out = tmp_path / "mm"
    with pytest.raises(UnsupportedModelError) as error:
        find_multimodal_neurons(model, processor, [gradient_image(16, 24)], concepts=["a"], run_dir=out)
    message = str(error.value)
    assert "\n" not in message and "mixture-of-experts layers" in message and "[0, 1]" in message
    assert "workflows/multimodal/" in message and not out.exists()
