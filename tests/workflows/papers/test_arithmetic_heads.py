"""The arithmetic recipe's default head ablation (all positions) == a copy of the model with the head's o_proj
columns zeroed (the reference's edit), run by full forwards; the last-position option is different."""

from __future__ import annotations

import copy

import pytest
import torch

from neuronscope.errors import NeuronscopeError
from neuronscope.measure.probability import PrefixCacheScorer
from neuronscope.models import get_adapter
from neuronscope.trace import ablate_heads
from neuronscope.workflows.papers.arithmetic import full_last_logits, run_arithmetic

PROMPTS = ["Once upon a time", "Once upon a day", "The cat sat on"]


def test_all_position_ablation_is_zeroing_the_o_proj_columns(stories260k):
    model, tokenizer = stories260k.model, stories260k.tokenizer
    scorer = PrefixCacheScorer(model, tokenizer, PROMPTS, [5, 17, 42])
    head = (1, 2)
    edited = copy.deepcopy(model)
    columns = get_adapter(edited).head_slice(head[1])
    with torch.no_grad():
        edited.model.layers[head[0]].self_attn.o_proj.weight[:, columns] = 0
    rows = [0, 1, 2]
    expected = torch.stack([edited(**{"input_ids": torch.tensor([scorer.ids[row].tolist()])}).logits[0, -1].float()
                            for row in rows]).detach()
    got = full_last_logits(scorer, rows, ablate_heads(model, [head], positions="all"))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    last_only = scorer.last_logits(rows, ablate_heads(model, [head], positions="last"))
    assert not torch.allclose(last_only, expected, atol=1e-4)


def test_head_positions_is_checked(tmp_path):
    with pytest.raises(NeuronscopeError, match="head_positions"):
        run_arithmetic(tmp_path / "x", model=object(), head_positions="first")
