"""Experiment 3: log-probability increase (Yu & Ananiadou 2024) on the ROME known facts SmolLM2 completes.

Per fact: LPI (frozen final norm; log-softmax over a candidate set, the union of every fact's 200 most likely
next tokens, to fit CPU time; ``n_candidates=None`` for the full vocabulary) of every FFN neuron and of every attention head for the
model's prediction (the answer's first token) at the last position. Then zero the top-k FFN neurons (k in
``top_ks``) and the top-k heads at the last position and report the drop of the answer's probability and its rank,
against the same number of random neurons (same count per layer) and random heads. Layer distribution of the top
FFN neurons.

Yu & Ananiadou report that intervening on the top FFN neurons (hundreds, out of ~350k in Llama-7B) makes the
prediction's probability and rank drop by more than 95% (Llama-7B, GPT-2).

Run: ``neuronscope recipe lpi-facts --out runs/lpi --data ../shared/data [--limit N]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neuronscope.attribute.log_probability_increase import (
    head_log_probability_increase,
    log_probability_increase,
)
from neuronscope.inputs import encode_prompts
from neuronscope.inputs.targets import token_targets
from neuronscope.measure.baselines import random_neurons_like
from neuronscope.measure.metrics import summarise
from neuronscope.measure.probability import PrefixCacheScorer
from neuronscope.models.adapter import get_adapter
from neuronscope.trace import ablate_heads, suppress
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
from neuronscope.workflows.specs.papers import LPIFactsOptions


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k ``[k, 2]`` (layer, index) of a ``[layers, width]`` score grid, largest first."""
    flat = scores.reshape(-1)
    index = flat.topk(min(k, flat.numel())).indices
    width = scores.shape[-1]
    return torch.stack([index // width, index % width], dim=1)


def _drops(scorer: PrefixCacheScorer, row: int, interventions: list) -> tuple[float, int]:
    """(probability after, rank after) of one fact under ``interventions``."""
    probability = float(scorer.probabilities([row], interventions)[0])
    rank = int(scorer.ranks([row], interventions)[0])
    return probability, rank


def run_lpi_facts(
    out_dir: str | Path,
    *,
    model: Any = None,
    limit: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    n_facts: int = 40,
    top_ks: tuple[int, ...] = (10, 100, 300),
    top_heads: tuple[int, ...] = (1, 5),
    n_random: int = 3,
    chunk_size: int = 512,
    n_candidates: int | None = 200,
) -> dict[str, Any]:
    """Run experiment 3 and write its results folder; returns the metrics (see the module docstring)."""
    watch = Stopwatch()
    loaded = model or default_model()
    lm, tokenizer = loaded.model, loaded.tokenizer
    adapter = get_adapter(lm)
    n_facts = limit if limit is not None else n_facts
    config = {"experiment": "lpi_facts", "model": model_name(loaded), "seed": seed, "n_facts": n_facts,
              "top_ks": list(top_ks), "top_heads": list(top_heads), "n_random": n_random,
              "lpi": "final norm frozen at the last layer's scale; log-softmax over the union of each fact's top-"
                     f"{n_candidates} next tokens (None: full vocabulary)",
              "intervention": "zero at the last position"}
    run = open_run(out_dir, config)
    with watch("screen"):
        facts, screened = screen_facts(lm, tokenizer, read_known_facts(known_facts_path(data_dir)), n_facts)
    batch = encode_prompts(tokenizer, [f["prompt"] for f in facts], model=lm)
    targets = token_targets(batch, [f["target_id"] for f in facts], tokenizer)
    candidates = None
    if n_candidates:
        with torch.no_grad():
            logits = lm(**batch.inputs).logits[:, -1]
        candidates = sorted(set(logits.topk(n_candidates, dim=-1).indices.reshape(-1).tolist()))
    with watch("lpi_neurons"):
        neuron_scores = log_probability_increase(lm, batch, targets, chunk_size=chunk_size,
                                                 candidates=candidates).dense()[:, 0].float()
    with watch("lpi_heads"):
        head_scores = head_log_probability_increase(lm, batch, targets, chunk_size=chunk_size,
                                                    candidates=candidates).dense()[:, 0].float()

    scorer = PrefixCacheScorer(lm, tokenizer, [f["prompt"] for f in facts], [f["target_id"] for f in facts])
    base_p = scorer.base_probabilities()
    generator = torch.Generator().manual_seed(seed)
    rows, top_neurons_all = [], []
    with watch("interventions"):
        for i, fact in enumerate(facts):
            neuron_rows, top = _neuron_rows(scorer, i, fact, neuron_scores[i], top_ks, n_random, generator, adapter)
            rows += neuron_rows
            top_neurons_all.append(top)
            rows += _head_rows(lm, scorer, i, fact, head_scores[i], top_heads, n_random, generator, adapter)
    write_table(run, "tables/interventions.csv", rows)

    summary = _summary(rows, top_ks, top_heads)
    everything = torch.cat(top_neurons_all) if top_neurons_all else torch.zeros(0, 2, dtype=torch.long)
    layer_counts = torch.bincount(everything[:, 0], minlength=adapter.n_layers).tolist() if len(everything) else []
    top_head_counts = torch.zeros(adapter.n_layers, adapter.n_heads)
    for i in range(len(facts)):
        for layer, head in _top(head_scores[i], 1).tolist():
            top_head_counts[layer, head] += 1
    from neuronscope.report.plots import layer_histogram_figure

    if len(everything):
        run.write_png("plots/layers.png", layer_histogram_figure(everything, adapter.n_layers,
                                        f"Top-{min(top_ks)} LPI FFN neurons per layer (all facts)"))
    write_table(run, "tables/top_neurons.csv", [
        {"known_id": f["known_id"], "rank": r, "layer": int(n[0]), "index": int(n[1]),
         "lpi": float(neuron_scores[i][n[0], n[1]])}
        for i, f in enumerate(facts) for r, n in enumerate(_top(neuron_scores[i], min(top_ks)).tolist())])
    metrics = {
        "title": "Log-probability increase on ROME known facts (SmolLM2-135M-Instruct)",
        "n_facts": len(facts), "facts_screened": screened,
        "mean_p_before": float(base_p.mean()) if len(facts) else None,
        "summary": summary,
        "paper": {"probability_and_rank_drop": "> 95% when the top FFN neurons are intervened",
                  "models": "Llama-7B, GPT-2"},
        "layer_counts_top_neurons": layer_counts,
        "top1_head_frequency": {f"{layer}.{head}": int(top_head_counts[layer, head])
                                for layer, head in top_head_counts.nonzero().tolist()},
        "wall_time": watch.as_dict(),
    }
    return finish_run(run, metrics, f"{len(facts)} known facts SmolLM2 completes (top-1) of {screened} screened; "
                                    "zero the top LPI FFN neurons / heads at the last position vs random.")


def lpi_facts(options: LPIFactsOptions, *, loaded: Any = None) -> RunResult:
    """``recipe lpi-facts``: :func:`run_lpi_facts` with the options' settings (see the module docstring)."""
    return run_paper(run_lpi_facts, options, loaded, "recipe lpi-facts")


def _neuron_rows(scorer: PrefixCacheScorer, i: int, fact: dict[str, Any], scores: torch.Tensor,
                 top_ks: tuple[int, ...], n_random: int, generator: torch.Generator,
                 adapter: Any) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """One fact: its top-k LPI FFN neurons zeroed (each k), vs random same-layer sets; and its top neurons."""
    p0 = float(scorer.base_probabilities()[i])
    rows, kept = [], torch.zeros(0, 2, dtype=torch.long)
    for k in top_ks:
        top = _top(scores, k)
        if k == max(top_ks):
            kept = top[: min(top_ks)]
        p, rank = _drops(scorer, i, suppress(top, positions="last"))
        row = {"known_id": fact["known_id"], "unit": "ffn_neurons", "k": k, "p_before": p0, "p_after": p,
               "rank_after": rank}
        draws = random_neurons_like(top, adapter.d_ff, n_draws=n_random, generator=generator,
                                    exclude_given=True, n_layers=adapter.n_layers)
        measured = [_drops(scorer, i, suppress(draw, positions="last")) for draw in draws]
        row["random_p_after"] = sum(m[0] for m in measured) / len(measured)
        row["random_rank_after"] = sum(m[1] for m in measured) / len(measured)
        rows.append(row)
    return rows, kept


def _head_rows(lm: Any, scorer: PrefixCacheScorer, i: int, fact: dict[str, Any], scores: torch.Tensor,
               top_heads: tuple[int, ...], n_random: int, generator: torch.Generator,
               adapter: Any) -> list[dict[str, Any]]:
    """One fact: its top-k LPI heads ablated at the last position (each k), vs random sets of k heads."""
    p0 = float(scorer.base_probabilities()[i])
    rows = []
    for k in top_heads:
        heads = _top(scores, k)
        p, rank = _drops(scorer, i, ablate_heads(lm, heads, positions="last"))
        row = {"known_id": fact["known_id"], "unit": "heads", "k": k, "p_before": p0, "p_after": p,
               "rank_after": rank}
        measured = []
        for _ in range(n_random):
            flat = torch.randperm(adapter.n_layers * adapter.n_heads, generator=generator)[:k]
            random_heads = torch.stack([flat // adapter.n_heads, flat % adapter.n_heads], dim=1)
            measured.append(_drops(scorer, i, ablate_heads(lm, random_heads, positions="last")))
        row["random_p_after"] = sum(m[0] for m in measured) / len(measured)
        row["random_rank_after"] = sum(m[1] for m in measured) / len(measured)
        rows.append(row)
    return rows


def _summary(rows: list[dict[str, Any]], top_ks: tuple[int, ...], top_heads: tuple[int, ...]) -> dict[str, Any]:
    """Per unit and k: mean probability drop, rank after, and how often the answer stays top-1, vs random."""
    summary: dict[str, Any] = {}
    for unit, ks in (("ffn_neurons", top_ks), ("heads", top_heads)):
        for k in ks:
            picked = [r for r in rows if r["unit"] == unit and r["k"] == k]
            if not picked:
                continue
            drop = [1 - r["p_after"] / r["p_before"] for r in picked]
            random_drop = [1 - r["random_p_after"] / r["p_before"] for r in picked]
            summary[f"{unit}.top{k}"] = {
                "probability_drop_mean": summarise(drop).mean,
                "random_probability_drop_mean": summarise(random_drop).mean,
                "rank_after_mean": summarise([r["rank_after"] for r in picked]).mean,
                "random_rank_after_mean": summarise([r["random_rank_after"] for r in picked]).mean,
                "still_top1": sum(r["rank_after"] == 0 for r in picked) / len(picked),
                "random_still_top1": sum(r["random_rank_after"] == 0 for r in picked) / len(picked),
            }
    return summary
