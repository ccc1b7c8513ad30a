"""The logit lens over image tokens against an unembedding of the normed hidden states done by hand from
``output_hidden_states``; the top-k / rank math against a sort; a soft-capped family."""

from __future__ import annotations

import pytest
import torch

from helpers.pipeline_vlms import chat_vlm
from helpers.tiny_vlms import gradient_image
from neuronscope.errors import InputError
from neuronscope.inputs import encode_images
from neuronscope.models.image_layout import image_layout
from neuronscope.vision.logit_lens import image_logit_lens, top_tokens_and_ranks

IMAGE = gradient_image(40, 30)


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def vlm(request):
    return chat_vlm(request.param, seed=5)


def _by_hand(model, batch, positions):
    """Logits ``[stages, P, vocab]``: output_hidden_states -> the model's final norm -> lm_head, by hand.

    The last stage is the model's own logits (transformers 5 returns the last hidden state already normed)."""
    with torch.no_grad():
        out = model(**batch.inputs, output_hidden_states=True)
        hidden = torch.stack(out.hidden_states[:-1])[:, 0, positions]  # [L, P, d] decoder inputs, unnormed
        earlier = model.lm_head(model.model.language_model.norm(hidden)).float()
        return torch.cat([earlier, out.logits[0, positions].float()[None]])


def test_lens_equals_the_normed_hidden_states_unembedded_by_hand(vlm):
    model, processor = vlm.model, vlm.processor
    batch = encode_images(processor, [IMAGE], "What?")
    positions = image_layout(model, batch.inputs, 0).positions
    answer = torch.tensor([7, 11])
    lens = image_logit_lens(model, batch, positions, k=4, token_ids=answer, chunk_size=5)
    logits = _by_hand(model, batch, positions)
    assert lens.stages[0] == "embeddings" and len(lens.stages) == logits.shape[0]
    expected_top = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :4]
    assert torch.equal(lens.top_ids, expected_top)
    torch.testing.assert_close(lens.top_log_probs, logits.log_softmax(-1).gather(-1, expected_top))
    for j, token in enumerate(answer.tolist()):
        expected_rank = (logits > logits[..., token:token + 1]).sum(-1)
        assert torch.equal(lens.ranks[..., j], expected_rank)
        torch.testing.assert_close(lens.token_log_probs[..., j], logits.log_softmax(-1)[..., token])


def test_chosen_stages_and_bad_input(vlm):
    model, processor = vlm.model, vlm.processor
    batch = encode_images(processor, [IMAGE], "What?")
    positions = image_layout(model, batch.inputs, 0).positions[:3]
    lens = image_logit_lens(model, batch, positions, k=1, stages=[0, 2])
    full = image_logit_lens(model, batch, positions, k=1)
    assert lens.stages == ["embeddings", "layer 1"]
    assert torch.equal(lens.top_ids, full.top_ids[[0, 2]])
    assert lens.ranks.shape == (2, 3, 0)
    with pytest.raises(InputError, match="out of range"):
        image_logit_lens(model, batch, positions, stages=[9])
    with pytest.raises(InputError, match="one row"):
        image_logit_lens(model, encode_images(processor, [IMAGE, IMAGE], "What?"), positions)


def test_top_tokens_and_ranks_by_hand():
    logits = torch.tensor([[1.0, 5.0, 5.0, -2.0], [0.0, 0.0, 0.0, 0.0]])
    ids, log_probs, ranks = top_tokens_and_ranks(logits, 3, torch.tensor([2, 3]))
    assert ids.tolist() == [[1, 2, 0], [0, 1, 2]]  # ties: lower id first
    assert ranks.tolist() == [[0, 3], [0, 0]]  # strictly larger logits only
    torch.testing.assert_close(log_probs, logits.log_softmax(-1).gather(-1, ids))
