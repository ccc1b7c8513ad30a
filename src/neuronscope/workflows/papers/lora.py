"""The LoRA mechanism and CNA-chosen pruning + LoRA (Yu & Ananiadou 2024, arithmetic paper) on single-digit sums.

1. Prompts ``"{prefix}{a}+{b}="`` (``a + b <= 9``) and ``"{prefix}{a}-{b}="`` (``a >= b``): 110 sums with a
   one-digit answer, shuffled (seeded) and split into a training half and a held-out half.
2. Train a LoRA (peft, :func:`neuronscope.measure.lora.train_lora`) on the training half: the answer digit's
   cross-entropy at the last position. Accuracy (top-1 = the answer digit) of base and LoRA on both halves.
3. Mechanism: CNA between the base (A) and the LoRA model (B) on the training half — every FFN neuron's LPI for the
   answer in both, over the answer tokens of all 110 sums (the ten digits; an exact log-softmax over that set, as the arithmetic recipe), both
   read at the base run's final-norm scale; the top-``top_k`` neurons by ``LPI_B − LPI_A``: their layers, their
   coefficient (activation at the answer position) in A and B, whether their value vectors promote a digit; the
   same for random neurons with the same count per layer (:func:`neuronscope.measure.lora_pruning.lora_mechanism`).
4. Pruning: in the deepest ``prune_fraction`` of layers keep ``keep_fraction`` of the FFN neurons — the top by that
   CNA difference — and zero the rest at every position; train a **new** LoRA on the pruned base model (the same
   settings) and measure held-out accuracy; the same with ``n_random`` random keep-sets
   (:func:`neuronscope.measure.lora_pruning.cna_pruning`). The paper: 82.3 % (CNA) vs 17.1 % (random) at 95 %
   pruned, on its own model and arithmetic data.

Needs ``peft`` (``pip install 'neuronscope[lora]'``). Run: ``neuronscope recipe lora --out runs/lora [--limit N]``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import encode_prompts
from neuronscope.inputs.targets import first_token, token_targets
from neuronscope.measure.lora import require_peft, train_lora
from neuronscope.measure.lora_pruning import cna_grid, cna_pruning, lora_mechanism
from neuronscope.measure.pruning import deep_layers, task_accuracy
from neuronscope.models.adapter import get_adapter
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
from neuronscope.workflows.specs.papers import LoRAOptions

#: The paper's pruning figures (held-out accuracy after the new LoRA, 95 % of neurons pruned).
PAPER_PRUNING = {"cna": 0.823, "random": 0.171}


def arithmetic_prompts(prefix: str = "") -> list[tuple[str, str]]:
    """``(prompt, answer digit)`` for every single-digit sum ``a + b <= 9`` and difference ``a - b >= 0``.

    Example:
        >>> arithmetic_prompts()[:2], len(arithmetic_prompts())
        ([('0+0=', '0'), ('0+1=', '1')], 110)
    """
    sums = [(f"{prefix}{a}+{b}=", str(a + b)) for a in range(10) for b in range(10) if a + b <= 9]
    return sums + [(f"{prefix}{a}-{b}=", str(a - b)) for a in range(10) for b in range(10) if a >= b]


def answer_token(tokenizer: Any, prompt: str, answer: str) -> int:
    """The answer's first token as it follows the prompt (the token after ``prompt`` in ``prompt + answer``), or
    :func:`first_token` of the answer when the prompt's tokens are not a prefix (a tokenizer that adds a word
    marker to a bare ``"7"`` writes none after ``"="``)."""
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    if len(full) > len(head) and full[: len(head)] == head:
        return int(full[len(head)])
    return first_token(tokenizer, answer)


def _encoded(lm: Any, tokenizer: Any, pairs: list[tuple[str, str]]) -> tuple[Any, Any]:
    batch = encode_prompts(tokenizer, [p for p, _ in pairs], model=lm)
    return batch, token_targets(batch, [answer_token(tokenizer, p, a) for p, a in pairs], tokenizer)


def _accuracy(lm: Any, data: tuple[Any, Any]) -> float:
    return float(task_accuracy(lm, *data)[0].double().mean())


METHOD = {"cna": "LPI over the ten digit tokens (as they follow '='), both models at the base run's final-norm scale",
          "pruning": "zero every other neuron of the pruned layers at every position, then a new LoRA"}


def run_lora(
    out_dir: str | Path,
    *,
    model: Any = None,
    limit: int | None = None,
    seed: int = 0,
    prefix: str = "",
    rank: int = 8,
    steps: int = 40,
    learning_rate: float = 3e-3,
    lora_batch_size: int | None = 16,
    top_k: int = 50,
    keep_fraction: float = 0.05,
    prune_fraction: float = 0.25,
    n_random: int = 1,
) -> dict[str, Any]:
    """Run the LoRA mechanism and the pruning experiment and write their results folder; returns the metrics."""
    require_peft()
    if limit is not None and limit < 2:
        raise NeuronscopeError(f"--limit {limit}: give 2 or more (sums per half)")
    watch, cpu = Stopwatch(), time.process_time()
    loaded = model or default_model()
    lm, tokenizer = loaded.model, loaded.tokenizer
    adapter = get_adapter(lm)
    layers = deep_layers(adapter.n_layers, prune_fraction)
    lora = {"rank": rank, "steps": steps, "learning_rate": learning_rate,
            "batch_size": lora_batch_size or None}
    run = open_run(out_dir, {"experiment": "lora_mechanism_and_pruning", "model": model_name(loaded), "seed": seed,
                             "prefix": prefix, **lora, "top_k": top_k, "keep_fraction": keep_fraction,
                             "pruned_layers": layers, "n_random": n_random, **METHOD})
    pairs = arithmetic_prompts(prefix)
    random.Random(seed).shuffle(pairs)
    if limit is not None:
        pairs = pairs[: 2 * limit]
    half = len(pairs) // 2
    run.write_json("split.json", {"train": pairs[:half], "test": pairs[half:]})
    train, test = _encoded(lm, tokenizer, pairs[:half]), _encoded(lm, tokenizer, pairs[half:])
    digit_ids = sorted({answer_token(tokenizer, p, a) for p, a in arithmetic_prompts(prefix)})
    with watch("lora"):
        tuned = train_lora(lm, *train, seed=seed, **lora)
    accuracy = {"base_train": _accuracy(lm, train), "base_test": _accuracy(lm, test),
                "lora_train": _accuracy(tuned.model, train), "lora_test": _accuracy(tuned.model, test)}
    with watch("cna"):
        mechanism, cna = lora_mechanism(lm, tuned.model, *train, top_k=top_k, answer_ids=digit_ids,
                                        tokenizer=tokenizer, candidates=digit_ids, n_random=3, seed=seed)
    write_table(run, "tables/lora_top_neurons.csv", mechanism.rows())
    write_table(run, "tables/lora_losses.csv", [{"step": i + 1, "loss": v} for i, v in enumerate(tuned.losses)])
    grid = cna_grid(cna)
    del tuned, cna
    with watch("pruning"):
        runs = cna_pruning(lm, grid, train, test, layers=layers, keep_fraction=keep_fraction, n_random=n_random,
                           seed=seed, lora=lora)
    pruning = [{"keep_set": r.name, "kept": r.kept, "accuracy_pruned": r.accuracy_pruned,
                "accuracy_after_new_lora": r.accuracy_retrained, "final_loss": r.losses[-1]} for r in runs]
    write_table(run, "tables/pruning.csv", pruning)
    run.write_json("pruning_kept.json", {"layers": layers, **{r.name: r.kept_neurons for r in runs}})
    _plots(run, mechanism, runs, adapter.n_layers)
    summary = mechanism.summary()
    metrics = {
        "title": "LoRA mechanism and CNA-chosen pruning + LoRA on single-digit arithmetic",
        "n_train": half, "n_test": len(pairs) - half, **accuracy,
        "coefficient_ratio_top": summary["coefficient_ratio"],
        "coefficient_ratio_random": summary["random_coefficient_ratio"],
        "median_coefficient_ratio_top": summary["median_coefficient_ratio"],
        "median_coefficient_ratio_random": summary["random_median_coefficient_ratio"],
        "fraction_amplified_top": summary["fraction_amplified"],
        "fraction_amplified_random": summary["random_fraction_amplified"],
        "fraction_in_deep_half": summary["fraction_in_deep_half"],
        "fraction_promoting_digit_top": summary["fraction_promoting_answer"],
        "fraction_promoting_digit_random": summary["random_fraction_promoting_answer"],
        "pruned_percent": round(100 * (1 - keep_fraction), 1),
        "pruning_cna_accuracy": runs[0].accuracy_retrained,
        "pruning_random_accuracy": (sum(r.accuracy_retrained for r in runs[1:]) / (len(runs) - 1)
                                    if len(runs) > 1 else None),
        "paper_pruning_accuracy": PAPER_PRUNING, "mechanism": summary, "pruning": pruning,
        "keep_set_layer_counts": {r.name: r.layer_counts for r in runs},
        "wall_time": watch.as_dict(), "cpu_s": round(time.process_time() - cpu, 1),
    }
    return finish_run(run, metrics, f"LoRA: held-out accuracy {accuracy['base_test']:.3f} -> "
                                    f"{accuracy['lora_test']:.3f}; top-{top_k} CNA neurons' |coefficient| x "
                                    f"{summary['coefficient_ratio'] or float('nan'):.2f} (random x "
                                    f"{summary['random_coefficient_ratio'] or float('nan'):.2f}); "
                                    f"{metrics['pruned_percent']} % pruned + new LoRA: CNA "
                                    f"{runs[0].accuracy_retrained:.3f} vs random "
                                    f"{metrics['pruning_random_accuracy']} (paper 0.823 vs 0.171).")


def _plots(run: Any, mechanism: Any, runs: list[Any], n_layers: int) -> None:
    from neuronscope.report.plots import bar_chart_figure, layer_histogram_figure
    from neuronscope.workflows.common import write_png

    neurons = torch.tensor(mechanism.neurons, dtype=torch.long).reshape(-1, 2)
    write_png(run, "plots/lora_cna_layers.png", layer_histogram_figure(
        neurons, n_layers, f"Top-{len(neurons)} CNA neurons, base vs LoRA"))
    labels = [f"{r.name}: pruned" for r in runs] + [f"{r.name}: + new LoRA" for r in runs]
    values = [r.accuracy_pruned for r in runs] + [r.accuracy_retrained for r in runs]
    write_png(run, "plots/pruning_accuracy.png", bar_chart_figure(
        labels + ["paper: CNA", "paper: random"], values + [PAPER_PRUNING["cna"], PAPER_PRUNING["random"]],
        "Held-out accuracy after pruning", ylabel="accuracy"))


def lora(options: LoRAOptions, *, loaded: Any = None) -> RunResult:
    """``recipe lora``: :func:`run_lora` with the options' settings (see the module docstring)."""
    require_peft()  # before any model loads
    return run_paper(run_lora, options, loaded, "recipe lora")
