"""Mixture-of-experts vision-language models (tiny Qwen3-VL-MoE and Qwen3.5-MoE) on image + text inputs: capture leaves the
logits bit for bit, routing is recorded at image and text positions, and the contribution identity holds per
layer at both."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from helpers.tiny_moe import tiny_qwen3_vl_moe
from helpers.tiny_vlms_current import tiny_qwen3_5_moe
from neuronscope.attribute import contribution
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models import get_adapter
from neuronscope.trace.experts import capture_experts


def _qwen3_5_moe():
    """Tiny Qwen3.5-MoE VLM (hybrid linear attention, a gated shared expert) in float64 (batched_mm experts)."""
    vlm = tiny_qwen3_5_moe()
    model = vlm.model.to(torch.float64)
    model.set_experts_implementation("batched_mm")
    return model, vlm.processor


@pytest.mark.parametrize("family", ["qwen3_vl_moe", "qwen3_5_moe"])
def test_moe_vlm_capture_and_contribution_on_image_and_text(family):
    model, processor = tiny_qwen3_vl_moe() if family == "qwen3_vl_moe" else _qwen3_5_moe()
    adapter = get_adapter(model)
    assert adapter.vision.name == family and sorted(adapter.moe.layers) == [0, 1]
    text = "<|vision_start|><|image_pad|><|vision_end|>a red cat"
    encoded = processor(text=[text], images=[Image.new("RGB", (16, 24), (200, 30, 30))], return_tensors="pt")
    encoded["pixel_values"] = encoded["pixel_values"].to(torch.float64)
    batch = Batch(dict(encoded), [text], encoded["attention_mask"].sum(-1))
    image_positions = (batch.input_ids[0] == model.config.image_token_id).nonzero()[:, 0]
    assert len(image_positions) == 6  # (16 / 8) x (24 / 8) merged tokens
    plain = model(**batch.inputs).logits
    with capture_experts(model, positions="all") as acts:
        hooked = model(**batch.inputs).logits
    assert torch.equal(plain, hooked)
    assert acts.moe(1).experts[0, image_positions].shape == (6, 2)

    blocks, handles = {}, []
    for layer, moe in adapter.moe.layers.items():
        handles.append(moe.block.register_forward_hook(lambda m, a, out, layer=layer: blocks.__setitem__(layer, out)))
    positions = torch.tensor([[int(image_positions[2]), batch.seq_len - 2]])
    targets = TargetSet(torch.tensor([[40, 41]]), positions, torch.ones(1, 2, dtype=torch.bool), [["r", "c"]])
    try:
        scores = contribution(model, batch, targets)
    finally:
        for handle in handles:
            handle.remove()
    unembed = adapter.unembedding().detach()
    per_unit = scores.unit_scores()
    for column in range(2):
        for layer in adapter.moe.layers:
            expected = blocks[layer][0, int(positions[0, column])] @ unembed[int(targets.token_ids[0, column])]
            units = (scores.layout.units[:, 0] == layer).nonzero()[:, 0]
            torch.testing.assert_close(per_unit[0, column, units].sum(), expected, rtol=0, atol=1e-12)
