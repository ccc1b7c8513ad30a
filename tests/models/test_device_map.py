"""A model spread over two devices (accelerate's offload on CPU) gives the same captured values and edits."""

from __future__ import annotations

import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.models import load_model
from neuronscope.trace import capture, intervene, suppress


def test_split_model_captures_the_same_values(tmp_path):
    model = tiny_text_model("llama", seed=5)
    model.save_pretrained(tmp_path / "m")
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    split = load_model(tmp_path / "m", device_map=device_map, with_processor=False).model
    assert split.model.layers[1].mlp.down_proj.weight.device.type == "meta"  # really offloaded
    batch = random_batch()
    neurons = torch.tensor([[1, 3], [0, 5]])
    results = []
    for m in (model, split):
        with torch.no_grad(), capture(m, sites=["neuron", "resid_post"], positions="all") as acts:
            logits = m(**batch).logits
        with torch.no_grad(), intervene(m, suppress(neurons)):
            suppressed = m(**batch).logits
        results.append((acts.stack("neuron"), acts.stack("resid_post"), logits, suppressed))
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs)
