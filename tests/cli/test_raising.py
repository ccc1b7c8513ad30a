"""``locate --raising-pool``: the kept neurons are those of the pool whose ×factor alone raises log P(target) most,
checked against one plain-hook forward per candidate and prompt (unpadded, one prompt at a time)."""

from __future__ import annotations

import json

import torch
from cli_helpers import assert_user_error, contribution_by_hand, load_tiny

from helpers.scaled_neuron import log_p_with_neuron_scaled

PROMPTS = [("the capital of france is", "paris"), ("the colour of the sky is", "blue"), ("grass is", "green")]


def test_raising_pool_keeps_the_candidates_that_raise_the_target(cli, tiny_model, tmp_path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "target": t}) + "\n" for p, t in PROMPTS))
    out = tmp_path / "run"
    result = cli("locate", "-m", tiny_model, "--prompts", prompts, "--top-k", 3, "--raising-pool", 10,
                 "--out", out)
    assert result.exit_code == 0, result.output

    model, tokenizer = load_tiny(tiny_model)
    tokens = [tokenizer.convert_tokens_to_ids(t) for _, t in PROMPTS]
    pairs = [(p, t) for (p, _), t in zip(PROMPTS, tokens, strict=True)]
    mean = torch.stack([contribution_by_hand(model, tokenizer, p, t) for p, t in pairs]).mean(0)
    pool = [divmod(int(i), mean.shape[1]) for i in mean.flatten().topk(10).indices]
    inputs = {p: tokenizer(p, return_tensors="pt") for p, _ in pairs}
    effects = {n: sum(log_p_with_neuron_scaled(model, inputs[p], t, n, 2.0)
                      - log_p_with_neuron_scaled(model, inputs[p], t) for p, t in pairs) / len(pairs)
               for n in pool}
    want = [n for n in sorted(pool, key=lambda n: -effects[n]) if effects[n] > 0][:3]

    kept = [(row["layer"], row["index"]) for row in json.loads((out / "neurons.json").read_text())["neurons"]]
    assert kept == want
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["raising_pool"] == 10 and metrics["raising_in_pool"] == sum(e > 0 for e in effects.values())
    for row in metrics["raising_effects"]:
        assert abs(row["mean_log_p_change"] - effects[(row["layer"], row["index"])]) < 1e-5

    assert_user_error(cli("locate", "-m", tiny_model, "--prompts", prompts, "--top-k", 5, "--raising-pool", 3,
                          "--out", tmp_path / "r"), "--raising-pool 3")
    assert_user_error(cli("locate", "-m", tiny_model, "--prompts", prompts, "--threshold", 0.5, "--raising-pool",
                          30, "--out", tmp_path / "r"), "--threshold")
    assert not (tmp_path / "r").exists()
