"""Experiment 2: knowledge neurons (Dai et al. 2022) of ROME known facts that SmolLM2 completes correctly.

Per fact: integrated gradients of every FFN neuron for the answer's first token at the last prompt position
(Dai grid, ``steps`` steps); knowledge neurons = neurons with score > 0.2 × the fact's maximum (Dai's threshold),
at most ``max_neurons`` (best first). The ROME facts have one prompt each, so Dai's refinement over paraphrased
prompts is not applied. Then suppress (×0) and enhance (×2) them at the last position and report the change of
the answer's probability (PCR), against ``n_random`` random sets with the same number of neurons per layer,
on the fact itself and on other facts ("unrelated").

Dai et al. report on BERT: suppression −29.03% and enhancement +31.17% mean probability change.

Run: ``neuronscope recipe knowledge-neurons --out runs/kn --data ../shared/data [--limit N]``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from neuronscope.attribute import get_method
from neuronscope.inputs import encode_prompts
from neuronscope.inputs.targets import token_targets
from neuronscope.measure.pcr import NeuronGroup, pcr_against_random
from neuronscope.measure.probability import PrefixCacheScorer
from neuronscope.models.adapter import get_adapter
from neuronscope.workflows.papers.common import (
    Stopwatch,
    default_model,
    finish_run,
    known_facts_path,
    model_name,
    open_run,
    read_known_facts,
    run_paper,
    screen_facts,
    write_table,
)
from neuronscope.workflows.result import RunResult
from neuronscope.workflows.specs.papers import KnowledgeNeuronsOptions


def knowledge_neurons_of(scores: torch.Tensor, threshold: float = 0.2, max_neurons: int = 20) -> torch.Tensor:
    """Neurons ``[n, 2]`` with score > ``threshold`` × max, best first, at most ``max_neurons``.

    Args:
        scores: ``[layers, d_ff]`` attribution of one prompt.

    Example:
        >>> knowledge_neurons_of(torch.tensor([[1.0, 0.1], [0.5, 0.3]])).tolist()
        [[0, 0], [1, 0], [1, 1]]
    """
    flat = scores.reshape(-1)
    peak = float(flat.max())
    if peak <= 0:
        return torch.zeros(0, 2, dtype=torch.long)
    keep = (flat > threshold * peak).nonzero()[:, 0]
    keep = keep[flat[keep].argsort(descending=True)][:max_neurons]
    d_ff = scores.shape[-1]
    return torch.stack([keep // d_ff, keep % d_ff], dim=1)


def run_knowledge_neurons(
    out_dir: str | Path,
    *,
    model: Any = None,
    limit: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    n_facts: int = 40,
    steps: int = 20,
    threshold: float = 0.2,
    max_neurons: int = 20,
    n_random: int = 5,
    n_unrelated: int = 5,
    method: str = "integrated_gradients",
) -> dict[str, Any]:
    """Run experiment 2 and write its results folder; returns the metrics (see the module docstring)."""
    watch = Stopwatch()
    loaded = model or default_model()
    lm, tokenizer = loaded.model, loaded.tokenizer
    adapter = get_adapter(lm)
    n_facts = limit if limit is not None else n_facts
    config = {"experiment": "knowledge_neurons", "model": model_name(loaded), "seed": seed, "n_facts": n_facts,
              "method": method, "steps": steps, "grid": "dai", "threshold": threshold, "max_neurons": max_neurons,
              "n_random": n_random, "n_unrelated": n_unrelated, "intervention_position": "last",
              "hyper_parameters": "Dai et al.'s threshold 0.2; no tuning on these facts"}
    run = open_run(out_dir, config)
    with watch("screen"):
        facts, screened = screen_facts(lm, tokenizer, read_known_facts(known_facts_path(data_dir)), n_facts)
    with watch("attribute"):
        located = []
        for fact in facts:
            batch = encode_prompts(tokenizer, [fact["prompt"]], model=lm)
            targets = token_targets(batch, [fact["target_id"]], tokenizer)
            options = {"steps": steps} if method == "integrated_gradients" else {}
            scores = get_method(method).function(lm, batch, targets, **options)
            located.append(knowledge_neurons_of(scores.dense()[0, 0].float(), threshold, max_neurons))
    scorer = PrefixCacheScorer(lm, tokenizer, [f["prompt"] for f in facts], [f["target_id"] for f in facts])
    rng = random.Random(seed)
    groups = []
    for i, fact in enumerate(facts):
        others = [j for j in range(len(facts)) if j != i]
        groups.append(NeuronGroup(located[i], own=[i], name=str(fact["known_id"]),
                                  unrelated=sorted(rng.sample(others, min(n_unrelated, len(others))))))
    everything = torch.cat(located) if located else torch.zeros(0, 2, dtype=torch.long)
    with watch("pcr"):
        suppress, enhance = (pcr_against_random(scorer, groups, factor=factor, d_ff=adapter.d_ff,
                                                n_layers=adapter.n_layers, n_random=n_random, seed=seed,
                                                exclude=everything).as_dict() for factor in (0.0, 2.0))
    rows = []
    for mode, report in (("suppress", suppress), ("enhance", enhance)):
        rows += [{"mode": mode, **row} for row in report.pop("per_group")]
    write_table(run, "tables/pcr_per_fact.csv", rows)
    write_table(run, "tables/knowledge_neurons.csv", [
        {"known_id": f["known_id"], "prompt": f["prompt"], "target": f["target"], "layer": int(n[0]),
         "index": int(n[1])} for f, neurons in zip(facts, located, strict=True) for n in neurons.tolist()])
    layer_counts = torch.bincount(everything[:, 0], minlength=adapter.n_layers).tolist() if len(everything) else []
    from neuronscope.report.plots import layer_histogram_figure

    if len(everything):
        run.write_png("plots/layers.png", layer_histogram_figure(everything, adapter.n_layers, "Knowledge neurons per layer"))
    metrics = {
        "title": "Knowledge neurons (Dai et al.) on ROME known facts (SmolLM2-135M-Instruct)",
        "n_facts": len(facts), "facts_screened": screened,
        "mean_neurons_per_fact": float(sum(len(n) for n in located) / max(len(located), 1)),
        "suppress": suppress, "enhance": enhance,
        "paper": {"suppress_mean_change": -0.2903, "enhance_mean_change": 0.3117, "model": "BERT-base"},
        "layer_counts": layer_counts,
        "wall_time": watch.as_dict(),
    }
    return finish_run(run, metrics, f"{len(facts)} known facts SmolLM2 completes (top-1) out of {screened} "
                                    "screened; knowledge neurons by IG, suppress x0 / enhance x2 vs random.")


def knowledge_neurons(options: KnowledgeNeuronsOptions, *, loaded: Any = None) -> RunResult:
    """``recipe knowledge-neurons``: :func:`run_knowledge_neurons` with the options' settings (see the module docstring)."""
    return run_paper(run_knowledge_neurons, options, loaded, "recipe knowledge-neurons")
