"""Experiment 4: arithmetic heads and CNA (Yu & Ananiadou 2024) on single-digit additions SmolLM2 gets right.

1. Prompts ``"{prefix}{a}+{b}="`` for single digits with ``a + b <= 9``; the default prefix shows the format with two
   two-digit sums (``"12+13=25, 30+41=71, "``: without it SmolLM2 gets 3 of 55 sums right, with it 33); keep the
   ones the model answers right (top-1 = the sum's digit). Split them (seeded) into a dev half and a
   test half: heads and neurons are chosen on dev, effects are measured on test.
2. Ablate each head and rank heads by the drop of the answer's mean probability on dev. By default, as the
   reference code, the head's ``o_proj`` columns are zeroed: its output is removed **at every position** (an
   intervention on ``o_proj``'s input slice at all positions, the same thing, measured with full forwards);
   ``head_positions="last"`` removes it at the last position only (faster: the prompt's prefix cache is reused,
   and it isolates what the head reads into the answer from what it writes into earlier positions).
3. Test: accuracy and answer probability with the top-1 / top-3 heads ablated vs random heads.
4. CNA: LPI of every FFN neuron on dev, original model (A) vs the top head ablated (B, ablated as in 2; both read
   at A's final-norm scale, the reference's choice), scored over the digit
   tokens (``candidates``: the ten digits, an exact log-softmax over that set); the neurons whose LPI falls most
   (most negative B − A, averaged over dev) are the top CNA neurons. Test: zero them at the last position, accuracy
   drop vs random same-layer sets.

Run: ``neuronscope recipe arithmetic --out runs/arithmetic [--limit N]``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from neuronscope.attribute.comparative import comparative
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import encode_prompts
from neuronscope.inputs.targets import first_token, token_targets
from neuronscope.measure.baselines import random_neurons_like
from neuronscope.measure.probability import PrefixCacheScorer
from neuronscope.models.adapter import get_adapter
from neuronscope.trace import ablate_heads, suppress
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
from neuronscope.workflows.specs.papers import ArithmeticOptions

DEFAULT_PREFIX = "12+13=25, 30+41=71, "


def addition_prompts(prefix: str = DEFAULT_PREFIX) -> list[tuple[str, str]]:
    """``(prompt, answer digit)`` for every ``a + b <= 9`` with single digits ``a, b``.

    Example:
        >>> addition_prompts("")[:2]
        [('0+0=', '0'), ('0+1=', '1')]
    """
    return [(f"{prefix}{a}+{b}=", str(a + b)) for a in range(10) for b in range(10) if a + b <= 9]


@torch.no_grad()
def full_last_logits(scorer: PrefixCacheScorer, rows: list[int], interventions: list) -> torch.Tensor:
    """``[len(rows), vocab]`` next-token logits of the scorer's prompts from full forwards, so that interventions at
    every position act on the whole prompt (the prefix cache would hold the unablated prefix)."""
    from neuronscope.inputs import encode_prompts
    from neuronscope.trace import intervene

    batch = encode_prompts(scorer.tokenizer, [scorer.prompts[row] for row in rows], model=scorer.model)
    with intervene(scorer.model, list(interventions)):
        return scorer.model(**batch.inputs).logits[:, -1].float()


def _accuracy(scorer: PrefixCacheScorer, rows: list[int], interventions: list,
              full: bool = False) -> tuple[float, float]:
    """(accuracy, mean answer probability) over ``rows`` (``full``: full forwards, for all-position ablations)."""
    logits = full_last_logits(scorer, rows, interventions) if full else scorer.last_logits(rows, interventions)
    targets = scorer.targets[rows]
    accuracy = float((logits.argmax(-1) == targets).double().mean())
    probability = float(logits.softmax(-1).gather(-1, targets[:, None]).mean())
    return accuracy, probability


def run_arithmetic(
    out_dir: str | Path,
    *,
    model: Any = None,
    limit: int | None = None,
    seed: int = 0,
    prefix: str = DEFAULT_PREFIX,
    top_heads: tuple[int, ...] = (1, 3),
    top_neurons: tuple[int, ...] = (10, 50),
    n_random: int = 5,
    head_layers: list[int] | None = None,
    head_positions: str = "all",
) -> dict[str, Any]:
    """Run experiment 4 and write its results folder; returns the metrics (see the module docstring).

    ``head_layers`` restricts the head search to these layers (default all; a quick run searches fewer);
    ``head_positions``: where a head is ablated, ``"all"`` (default, the reference) or ``"last"``.
    """
    if head_positions not in ("all", "last"):
        raise NeuronscopeError(f"head_positions must be 'all' or 'last', not {head_positions!r}")
    full = head_positions == "all"
    watch = Stopwatch()
    loaded = model or default_model()
    lm, tokenizer = loaded.model, loaded.tokenizer
    adapter = get_adapter(lm)
    config = {"experiment": "arithmetic_heads_cna", "model": model_name(loaded), "seed": seed, "prefix": prefix,
              "top_heads": list(top_heads), "top_neurons": list(top_neurons), "n_random": n_random,
              "head_layers": head_layers or "all",
              "head_ablation": ("zero the head's o_proj columns (its output at every position)" if full else
                                "zero the head's o_proj input slice at the last position"),
              "cna_base": "LPI over the ten digit tokens", "selection": "dev half; effects on the test half"}
    run = open_run(out_dir, config)
    pairs = addition_prompts(prefix)
    digit_ids = [first_token(tokenizer, str(d)) for d in range(10)]
    everything = PrefixCacheScorer(lm, tokenizer, [p for p, _ in pairs], [first_token(tokenizer, a) for _, a in pairs],
                                 batch_equal_lengths=True)
    with watch("screen"):
        logits = everything.last_logits()  # unablated: the cached prefix is exact
        right = (logits.argmax(-1) == everything.targets).tolist()
    kept = [pair for pair, ok in zip(pairs, right, strict=True) if ok]
    random.Random(seed).shuffle(kept)
    if limit is not None:
        kept = kept[: 2 * limit]
    half = len(kept) // 2
    dev, test = kept[:half], kept[half:]
    run.write_json("split.json", {"dev": dev, "test": test, "screened": len(pairs), "right": len(kept)})
    if len(dev) < 2 or len(test) < 2:
        raise NeuronscopeError(f"only {len(kept)} of {len(pairs)} sums answered right: try a few-shot prefix")

    dev_scorer, test_scorer = (PrefixCacheScorer(lm, tokenizer, [p for p, _ in part],
                                                 [first_token(tokenizer, a) for _, a in part], batch_equal_lengths=True)
                               for part in (dev, test))
    with watch("head_ablation"):
        base_acc, base_p, head_rows = _rank_heads(lm, dev_scorer, adapter.resolve_layers(head_layers), adapter.n_heads,
                                                  head_positions)
    write_table(run, "tables/head_ablation_dev.csv", head_rows)
    generator = torch.Generator().manual_seed(seed)
    test_acc, test_p = _accuracy(test_scorer, list(range(len(test))), [])
    heads_result = _heads_vs_random(lm, test_scorer, head_rows, top_heads, n_random, generator, adapter,
                                    head_positions)
    with watch("cna"):
        top_head = [(head_rows[0]["layer"], head_rows[0]["head"])]
        batch = encode_prompts(tokenizer, [p for p, _ in dev], model=lm)
        targets = token_targets(batch, [first_token(tokenizer, a) for _, a in dev], tokenizer)
        cna = comparative(lm, batch, targets, interventions_b=ablate_heads(lm, top_head, positions=head_positions),
                          candidates=digit_ids)
        difference = cna.dense()[:, 0].float().mean(0)  # [layers, d_ff], B - A averaged over dev
    flat = (-difference).reshape(-1)
    neurons_result = _cna_neurons_vs_random(test_scorer, flat, top_neurons, n_random, generator, adapter)
    from neuronscope.report.plots import layer_histogram_figure

    index = flat.topk(max(top_neurons)).indices
    run.write_png("plots/cna_layers.png", layer_histogram_figure(torch.stack([index // adapter.d_ff, index % adapter.d_ff], dim=1),
                                    adapter.n_layers, f"Top-{max(top_neurons)} CNA neurons (head {top_head[0]})"))
    metrics = {
        "title": "Arithmetic heads and CNA on single-digit additions (SmolLM2-135M-Instruct)",
        "n_sums": len(pairs), "n_right": len(kept), "n_dev": len(dev), "n_test": len(test),
        "dev_base": {"accuracy": base_acc, "probability": base_p},
        "test_base": {"accuracy": test_acc, "probability": test_p},
        "top_dev_heads": head_rows[:10],
        "heads": heads_result,
        "cna_head": list(top_head[0]),
        "cna_neurons": neurons_result,
        "wall_time": watch.as_dict(),
    }
    return finish_run(run, metrics, f"{len(kept)} of {len(pairs)} single-digit sums right; heads and CNA neurons "
                                    "chosen on the dev half, effects measured on the test half.")


def arithmetic(options: ArithmeticOptions, *, loaded: Any = None) -> RunResult:
    """``recipe arithmetic``: :func:`run_arithmetic` with the options' settings (see the module docstring)."""
    return run_paper(run_arithmetic, options, loaded, "recipe arithmetic")


def _rank_heads(lm: Any, scorer: PrefixCacheScorer, layers: list[int], n_heads: int,
                positions: str = "all") -> tuple[float, float, list[dict[str, Any]]]:
    """Dev accuracy and answer probability, and every head's row, ranked by the probability drop its ablation
    (at ``positions``) causes."""
    rows = list(range(len(scorer)))
    full = positions == "all"
    base_acc, base_p = _accuracy(scorer, rows, [], full)
    head_rows = []
    for layer in layers:
        for head in range(n_heads):
            acc, p = _accuracy(scorer, rows, ablate_heads(lm, [(layer, head)], positions=positions), full)
            head_rows.append({"layer": layer, "head": head, "dev_accuracy": acc, "dev_probability": p,
                              "probability_drop": base_p - p, "accuracy_drop": base_acc - acc})
    head_rows.sort(key=lambda r: -r["probability_drop"])
    return base_acc, base_p, head_rows


def _heads_vs_random(lm: Any, scorer: PrefixCacheScorer, head_rows: list[dict[str, Any]], top_heads: tuple[int, ...],
                     n_random: int, generator: torch.Generator, adapter: Any, positions: str = "all") -> dict[str, Any]:
    """Test accuracy with the top-k dev heads ablated (at ``positions``), vs ``n_random`` random sets of k heads."""
    rows = list(range(len(scorer)))
    full = positions == "all"
    out = {}
    for k in top_heads:
        heads = [(r["layer"], r["head"]) for r in head_rows[:k]]
        acc, p = _accuracy(scorer, rows, ablate_heads(lm, heads, positions=positions), full)
        random_acc, random_p = [], []
        for _ in range(n_random):
            flat = torch.randperm(adapter.n_layers * adapter.n_heads, generator=generator)[:k]
            draw = [(int(f) // adapter.n_heads, int(f) % adapter.n_heads) for f in flat]
            a, q = _accuracy(scorer, rows, ablate_heads(lm, draw, positions=positions), full)
            random_acc.append(a)
            random_p.append(q)
        out[f"top{k}"] = {"heads": heads, "accuracy": acc, "probability": p,
                          "random_accuracy": sum(random_acc) / n_random, "random_probability": sum(random_p) / n_random}
    return out


def _cna_neurons_vs_random(scorer: PrefixCacheScorer, flat: torch.Tensor, top_neurons: tuple[int, ...], n_random: int,
                           generator: torch.Generator, adapter: Any) -> dict[str, Any]:
    """Test accuracy with the top-k CNA neurons zeroed at the last position, vs random same-layer sets."""
    rows = list(range(len(scorer)))
    out = {}
    for k in top_neurons:
        index = flat.topk(k).indices
        neurons = torch.stack([index // adapter.d_ff, index % adapter.d_ff], dim=1)
        acc, p = _accuracy(scorer, rows, suppress(neurons, positions="last"))
        draws = random_neurons_like(neurons, adapter.d_ff, n_draws=n_random, generator=generator,
                                    exclude_given=True, n_layers=adapter.n_layers)
        measured = [_accuracy(scorer, rows, suppress(draw, positions="last")) for draw in draws]
        out[f"top{k}"] = {
            "accuracy": acc, "probability": p,
            "random_accuracy": sum(m[0] for m in measured) / n_random,
            "random_probability": sum(m[1] for m in measured) / n_random,
            "layer_counts": torch.bincount(neurons[:, 0], minlength=adapter.n_layers).tolist()}
    return out
