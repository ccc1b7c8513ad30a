"""caption_contributions (generation with buffered activations, scores selected on the device) against the
contribution method's dense grid on one teacher-forced forward of the generated sequences."""

from __future__ import annotations

import pytest
import torch

from helpers.pipeline_vlms import chat_vlm
from helpers.tiny_vlms import gradient_image
from neuronscope.attribute.contribution import contribution
from neuronscope.attribute.streaming import caption_contributions, every_step
from neuronscope.errors import InputError
from neuronscope.inputs import Batch, encode_images
from neuronscope.inputs.targets import TargetSet

IMAGES = [gradient_image(40, 30), gradient_image(30, 40), gradient_image(48, 48).rotate(90)]


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def vlm64(request):
    vlm = chat_vlm(request.param, seed=1)
    vlm.model.to(torch.float64)
    return vlm


def _reforward(batch: Batch, sequences: torch.Tensor) -> Batch:
    rows, extra = len(batch), sequences.shape[1] - batch.seq_len
    mask = torch.cat([batch.inputs["attention_mask"], torch.ones(rows, extra, dtype=torch.long)], 1)
    inputs = {**batch.inputs, "input_ids": sequences, "attention_mask": mask}
    for key, value in batch.inputs.items():  # per-token extras (qwen2_vl's mm_token_type_ids): text tokens = 0
        if key not in ("input_ids", "attention_mask") and isinstance(value, torch.Tensor) and \
                value.shape[:2] == batch.input_ids.shape:
            inputs[key] = torch.cat([value, value.new_zeros(rows, extra)], 1)
    return Batch(inputs, batch.texts, mask.sum(-1))


@pytest.mark.parametrize("site", ["neuron", "act"])
@pytest.mark.parametrize("slots", [None, 2])  # batched decoding; 2 cache slots for 3 images (slot decoding)
def test_equals_dense_scores_of_a_teacher_forced_forward(vlm64, site, slots):
    model, processor = vlm64.model, vlm64.processor
    batch = encode_images(processor, IMAGES, "Describe it.", assistant_prefix="An image of")
    k = 25
    if slots and "image_grid_thw" in batch.inputs:  # qwen2_vl's 3-D positions: slot decoding says it cannot
        with pytest.raises(ValueError, match="slot decoding cannot run this call"):
            caption_contributions(model, processor, batch, max_new_tokens=5, top_k=k, site=site, slots=slots)
        return
    found = caption_contributions(model, processor, batch, max_new_tokens=5, top_k=k, site=site, slots=slots)
    assert found.pairs.shape[0] > 0 and found.values.shape == (found.pairs.shape[0], k)
    positions = found.generation.prompt_len - 1 + found.pairs[:, 1]
    n = found.pairs.shape[0]
    # oracle: the dense grid of the contribution method on the teacher-forced batch, each row's pairs as targets
    rows = found.pairs[:, 0]
    width = int(torch.bincount(rows, minlength=len(batch)).max())
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    where, valid = torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
    column = {}
    for pair in range(n):
        row = int(rows[pair])
        j = column[pair] = int(valid[row].sum())
        ids[row, j], where[row, j], valid[row, j] = found.pairs[pair, 2], positions[pair], True
    grid = contribution(model, _reforward(batch, found.generation.sequences), TargetSet(ids, where, valid),
                        site=site).values
    dense = torch.stack([grid[int(rows[pair]), column[pair]].flatten() for pair in range(n)])  # [n, L * d_ff]
    order = dense.topk(k, dim=-1).indices
    torch.testing.assert_close(found.values, dense.gather(-1, order).to(found.values.dtype), rtol=1e-7, atol=1e-10)
    assert torch.equal(found.flat_indices, order)
    for pair in range(n):  # the scored token is the token generated at that step
        row, step, token = found.pairs[pair].tolist()
        assert int(found.generation.sequences[row, found.generation.prompt_len + step]) == token


def test_selector_and_errors(vlm64):
    model, processor = vlm64.model, vlm64.processor
    batch = encode_images(processor, IMAGES[:2], "Describe it.", assistant_prefix="An image of")
    found = caption_contributions(model, processor, batch, max_new_tokens=4, top_k=3,
                                  select=lambda generation: [[1], [0, 3]])
    assert found.pairs[:, :2].tolist() == [[0, 1], [1, 0], [1, 3]]
    assert found.rows(1).tolist() == [1, 2]
    assert every_step({7})(type(found.generation)(torch.tensor([[1, 2, 7, 3]]), 1, [""])) == [[0]]
    with pytest.raises(InputError, match="sites"):
        caption_contributions(model, processor, batch, site="up")
