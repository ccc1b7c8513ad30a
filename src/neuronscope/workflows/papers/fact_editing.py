"""Experiment 6: Pan et al.'s value-vector editing applied to a text fact ("The capital of France is" → Rome).

For each edit (``EDITS``: a prompt, its true answer, a new answer, paraphrases):
1. locate the ``k`` neurons with the largest contribution to the true answer at the last position of the edit
   prompt (``contribution`` method: activation × ⟨value vector, unembedding row⟩);
2. closed-form edit ``w_i ← w_i + λ · sign(a_i) · (u_new − u_old)`` (signed by the neuron's activation on the edit
   prompt: gated FFN neurons can fire negatively, see ``ValueVectorEdit.token_shift(signs=...)``): λ is the smallest of ``LAMBDAS`` that makes the new answer
   top-1 on the edit prompt itself (the edit's own objective; paraphrases and other facts are never looked at);
3. optimised edit (Adam on the same neurons: target NLL + KL on other prompts + norm penalty);
4. reliability (edit prompt), generalisation (paraphrases), locality (other facts: greedy-answer agreement and KL)
   and fluency (n-gram entropy of greedy continuations), before / after, against random-neuron edits of the same
   size (same deltas moved onto random neurons with the same count per layer).

Run: ``neuronscope recipe fact-editing --out runs/editing [--limit N]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neuronscope.attribute import get_method
from neuronscope.edit.optimise import optimise_edit
from neuronscope.edit.weights import ValueVectorEdit
from neuronscope.inputs import encode_prompts
from neuronscope.inputs.targets import first_token, token_targets
from neuronscope.measure.probability import PrefixCacheScorer
from neuronscope.workflows.papers.common import (
    Stopwatch,
    default_model,
    finish_run,
    model_name,
    open_run,
    run_paper,
    write_table,
)
from neuronscope.workflows.result import RunResult
from neuronscope.workflows.specs.papers import FactEditingOptions

EDITS: tuple[dict[str, Any], ...] = (
    {"prompt": "The capital of France is", "old": " Paris", "new": " Rome",
     "paraphrases": ["France's capital city is", "The capital city of France is", "The French capital is"]},
    {"prompt": "The capital of Japan is", "old": " Tokyo", "new": " London",
     "paraphrases": ["Japan's capital city is", "The capital city of Japan is", "The Japanese capital is"]},
    {"prompt": "The capital of Germany is", "old": " Berlin", "new": " Madrid",
     "paraphrases": ["Germany's capital city is", "The capital city of Germany is", "The German capital is"]},
)
OTHER_FACTS = ("The capital of Italy is", "The capital of Spain is", "The capital of Canada is",
               "The largest ocean on Earth is the", "Water is made of hydrogen and",
               "The author of Romeo and Juliet is", "The currency of the United States is the",
               "The chemical symbol for gold is")
LAMBDAS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def _activation_signs(model: Any, batch: Any, neurons: torch.Tensor) -> torch.Tensor:
    from neuronscope.trace import capture

    with torch.no_grad(), capture(model, "neuron", positions="last") as acts:
        model(**batch.inputs)
    stacked = acts.stack().reshape(-1, acts.stack().shape[-1])  # [layers, d_ff] (one prompt, last position)
    values = stacked[neurons[:, 0], neurons[:, 1]]
    return torch.where(values < 0, -1.0, 1.0)


def _choose_lambda(model: Any, tokenizer: Any, neurons: torch.Tensor, signs: torch.Tensor, prompt: str, old: int,
                   new: int) -> float:
    """The smallest λ in ``LAMBDAS`` that makes ``new`` top-1 on ``prompt`` (the largest if none does)."""
    scorer = PrefixCacheScorer(model, tokenizer, [prompt], [new])
    for strength in LAMBDAS:
        edit = ValueVectorEdit.token_shift(model, neurons, old, new, strength, signs=signs)
        with edit.applied(model):
            scorer.release()
            if int(scorer.ranks()[0]) == 0:
                return strength
    return LAMBDAS[-1]


def run_fact_editing(
    out_dir: str | Path,
    *,
    model: Any = None,
    limit: int | None = None,
    seed: int = 0,
    top_k: int = 10,
    n_random: int = 2,
    optimise_steps: int = 40,
    max_new_tokens: int = 10,
) -> dict[str, Any]:
    """Run experiment 6 and write its results folder; returns the metrics (see the module docstring)."""
    from neuronscope.measure.editing import evaluate_edit

    watch = Stopwatch()
    loaded = model or default_model()
    lm, tokenizer = loaded.model, loaded.tokenizer
    edits = list(EDITS[: limit or len(EDITS)])
    config = {"experiment": "fact_editing", "model": model_name(loaded), "seed": seed, "top_k": top_k,
              "n_random": n_random, "optimise_steps": optimise_steps, "lambdas": list(LAMBDAS),
              "edits": edits, "other_facts": list(OTHER_FACTS), "locate": "contribution to the old answer",
              "lambda_rule": "smallest lambda making the new answer top-1 on the edit prompt only",
              "rule": "top1", "max_new_tokens": max_new_tokens}
    run = open_run(out_dir, config)
    unrelated = encode_prompts(tokenizer, list(OTHER_FACTS), model=lm)
    rows, per_edit = [], []
    for number, spec in enumerate(edits):
        old, new = first_token(tokenizer, spec["old"]), first_token(tokenizer, spec["new"])
        batch = encode_prompts(tokenizer, [spec["prompt"]], model=lm)
        with watch("locate"):
            scores = get_method("contribution").function(lm, batch, token_targets(batch, [old], tokenizer))
            flat = scores.dense()[0, 0].float().reshape(-1)
            index = flat.topk(top_k).indices
            d_ff = scores.dense().shape[-1]
            neurons = torch.stack([index // d_ff, index % d_ff], dim=1)
        with watch("closed_form"):
            signs = _activation_signs(lm, batch, neurons)
            strength = _choose_lambda(lm, tokenizer, neurons, signs, spec["prompt"], old, new)
            closed = ValueVectorEdit.token_shift(lm, neurons, old, new, strength, reason=f"edit {number}",
                                                 signs=signs)
        with watch("optimise"):
            optimised = optimise_edit(lm, neurons, batch, token_targets(batch, [new], tokenizer),
                                      unrelated=unrelated, steps=optimise_steps)
        for name, edit in (("closed_form", closed), ("optimised", optimised)):
            with watch(f"evaluate_{name}"):
                result = evaluate_edit(lm, tokenizer, edit, edit_prompts=[spec["prompt"]], targets=new,
                                       paraphrases=spec["paraphrases"], unrelated_prompts=list(OTHER_FACTS),
                                       n_random=n_random, seed=seed + number, max_new_tokens=max_new_tokens)
            record = result.as_dict()
            record.pop("random_neurons", None)
            per_edit.append({"edit": number, "prompt": spec["prompt"], "new": spec["new"], "method": name,
                             "lambda": strength if name == "closed_form" else None, **record})
            random_summary = result.random_summary()
            for metric in ("reliability", "generalisation", "locality_agreement", "locality_kl", "fluency"):
                rows.append({"edit": number, "prompt": spec["prompt"], "new": spec["new"], "method": name,
                             "metric": metric, "before": getattr(result.before, metric),
                             "edited": getattr(result.edit, metric),
                             "random_mean": (random_summary[metric] or {}).get("mean")})
    write_table(run, "tables/edit_metrics.csv", rows)
    run.write_json("edits.json", per_edit)
    summary: dict[str, Any] = {}
    for name in ("closed_form", "optimised"):
        for metric in ("reliability", "generalisation", "locality_agreement", "locality_kl", "fluency"):
            picked = [r for r in rows if r["method"] == name and r["metric"] == metric]
            summary[f"{name}.{metric}"] = {key: _mean([r[column] for r in picked])
                                           for key, column in (("before", "before"), ("edited", "edited"),
                                                               ("random", "random_mean"))}
    metrics = {"title": "Value-vector fact editing on SmolLM2-135M-Instruct", "n_edits": len(edits),
               "summary": summary, "wall_time": watch.as_dict()}
    return finish_run(run, metrics, f"{len(edits)} capital-city edits with {top_k} located neurons each; "
                                    "closed-form and optimised value-vector edits vs random-neuron edits.")


def fact_editing(options: FactEditingOptions, *, loaded: Any = None) -> RunResult:
    """``recipe fact-editing``: :func:`run_fact_editing` with the options' settings (see the module docstring)."""
    return run_paper(run_fact_editing, options, loaded, "recipe fact-editing")
