"""The host's late reads of device values (what the decoders' stop flags are built on) and the greedy settings of a
call, against what was pushed and what ``model.generate`` reads."""

from __future__ import annotations

import torch

from neuronscope.trace.greedy_choice import LateReads, greedy_settings


def test_late_reads_come_back_lag_pushes_later_holding_the_values_of_their_push():
    value = torch.zeros(3)
    reads = LateReads(lag=2)
    got = []
    for step in range(5):
        value.fill_(step)
        got.append([(host.tolist(), tag) for host, tag in reads.push(value, tag=step)])
    value.fill_(-1)  # changing the tensor afterwards changes no copy
    assert got == [[], [], [([0.0] * 3, 0)], [([1.0] * 3, 1)], [([2.0] * 3, 2)]]
    assert [(host.tolist(), tag) for host, tag in LateReads(lag=0).push(value, "now")] == [([-1.0] * 3, "now")]


def test_the_greedy_settings_are_the_keywords_over_the_generation_config():
    from helpers.tiny_models import tiny_text_model

    class Tokens:
        pad_token_id, eos_token_id = None, 2

    model = tiny_text_model("llama", seed=1)
    model.generation_config.eos_token_id, model.generation_config.min_new_tokens = [2, 5], 3
    model.generation_config.suppress_tokens = [7]
    pad, pick = greedy_settings(model, Tokens(), {"suppress_tokens": [8, 9]}, torch.device("cpu"))
    assert pad == 2  # no pad token: the end-of-sequence one
    assert pick.eos.tolist() == [2, 5] and pick.min_new_tokens == 3 and pick.suppress.tolist() == [8, 9]
