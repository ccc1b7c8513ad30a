"""Top tokens equal a brute-force W_U w_i ranking; chunking does not change them."""

from __future__ import annotations

import torch

from helpers.tiny_models import tiny_text_model
from neuronscope.explain import top_tokens
from neuronscope.models import get_adapter


def test_top_tokens_match_brute_force_and_chunking():
    model = tiny_text_model("llama", dtype=torch.float64)
    adapter = get_adapter(model)
    neurons = torch.tensor([[0, 3], [1, 0], [1, 23]])
    result = top_tokens(model, neurons, k=4, bottom=True, chunk_size=2)
    for r, (layer, index) in enumerate(neurons.tolist()):
        logits = adapter.unembedding() @ adapter.value_vectors(layer)[index]
        assert result.token_ids[r].tolist() == logits.topk(4).indices.tolist()
        assert result.bottom_tokens[r] == [str(t) for t in logits.topk(4, largest=False).indices.tolist()]
    assert torch.equal(top_tokens(model, neurons, k=4, chunk_size=1).token_ids, result.token_ids)
    assert result.rows()[0]["layer"] == 0 and len(result.rows()[0]["top_tokens"]) == 4
