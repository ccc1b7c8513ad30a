"""The prefix-cache scorers against full forwards of each prompt alone, under last-position interventions."""

from __future__ import annotations

import pytest
import torch

from neuronscope.measure.probability import BatchedPrefixScorer, PrefixCacheScorer
from neuronscope.trace import ablate_heads, intervene, suppress

PROMPTS = ["Once upon a time", "The little dog ran to the", "Lily saw a big", "One day", "Tom and his mom went to"]
TARGETS = [5, 17, 42, 7, 99]


def alone(model, tokenizer, prompt: str, target: int, interventions=()) -> float:
    """P(target) at the last position of one unpadded prompt, one full forward."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad(), intervene(model, list(interventions)):
        return float(model(input_ids=ids).logits[0, -1].double().softmax(-1)[target])


@pytest.mark.parametrize("kind", ["per_row", "batched"])
def test_scorers_equal_full_forwards_even_when_the_first_call_intervenes(stories260k, kind) -> None:
    model, tokenizer = stories260k.model, stories260k.tokenizer
    scorer = (PrefixCacheScorer(model, tokenizer, PROMPTS, TARGETS) if kind == "per_row" else
              BatchedPrefixScorer(model, tokenizer, PROMPTS, TARGETS, chunk_size=2))
    neurons = torch.tensor([[0, 3], [2, 10], [4, 100]])
    rows = [4, 0, 2]  # any order, across chunks
    for interventions in (suppress(neurons, positions="last"), ablate_heads(model, [(1, 2)], positions="last"), []):
        got = scorer.probabilities(rows, interventions)  # the first call builds the prefix caches
        want = [alone(model, tokenizer, PROMPTS[r], TARGETS[r], interventions) for r in rows]
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(scorer.base_probabilities(), torch.tensor(
        [alone(model, tokenizer, p, t) for p, t in zip(PROMPTS, TARGETS, strict=True)], dtype=torch.float64),
        rtol=1e-4, atol=1e-7)


def test_batched_ranks_equal_the_per_row_scorers(stories260k) -> None:
    model, tokenizer = stories260k.model, stories260k.tokenizer
    interventions = suppress(torch.tensor([[3, 7], [4, 1]]), positions="last")
    per_row = PrefixCacheScorer(model, tokenizer, PROMPTS, TARGETS)
    batched = BatchedPrefixScorer(model, tokenizer, PROMPTS, TARGETS, chunk_size=3)
    torch.testing.assert_close(batched.last_logits(None, interventions), per_row.last_logits(None, interventions),
                               rtol=1e-4, atol=1e-4)
    # ranks agree up to logits within float rounding of the target's
    gaps = (batched.ranks(None, interventions) - per_row.ranks(None, interventions)).abs()
    assert int(gaps.max()) <= 1 and int(gaps.sum()) <= 1
    assert len(batched) == len(PROMPTS) and batched.probabilities([]).numel() == 0
