"""Attention heads for ``intervene``: from ``--heads layer.head,...`` or the top in-context heads of a ``recipe icl``
results folder (``--heads-from``), their conditions (``suppress`` = x0, ``amplify`` = x factor, at the head's slice
of the attention output projection's input), and random head sets of the same size (``--draws``).

A ``recipe icl`` folder gives, besides its heads (``heads_lpi.json`` / ``heads_ablation.json``), its model (the one
recorded in its ``config.json``, unless ``--model`` is given) and its evaluation prompts of the label kind it
studied (``prompts.json``, ``evaluate_<label_kind>``, the true label word as each prompt's target), so

    neuronscope intervene --heads-from runs/icl --top-heads 3 --mode suppress --draws 5

measures p(true label) with the top 3 LPI heads zeroed at the last position against 5 sets of 3 random heads.

Example:
    >>> recipe = read_icl_run(Path("runs/icl"))                  # doctest: +SKIP
    >>> recipe.top("lpi", 3)                                     # doctest: +SKIP
    tensor([[22, 7], [24, 7], [23, 2]])
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuronscope.errors import InputError

#: The files of a ``recipe icl`` folder that ``--heads-from`` reads.
ICL_FILES = ("config.json", "metrics.json", "prompts.json", "heads_lpi.json", "heads_ablation.json")


@dataclass
class ICLRunHeads:
    """What ``--heads-from`` takes from a ``recipe icl`` folder.

    Attributes:
        folder: the results folder.
        model: ``{"model": ..., "gguf_file": ...}`` as recorded (empty when it cannot be read).
        label_kind: ``natural`` or ``unrelated``, the label words the heads were located with.
        prompts: the evaluation prompts ``[{"text", "query_class", "label_words", ...}]``.
    """

    folder: Path
    model: dict[str, Any]
    label_kind: str
    prompts: list[dict[str, Any]]

    def top(self, ranking: str, n: int) -> torch.Tensor:
        """The ``n`` best heads ``[n, 2]`` of a ranking (``lpi`` or ``ablation``), best first."""
        from neuronscope.results.base import load_result

        return load_result(self.folder / f"heads_{ranking}.json").top(n)

    def prompt_records(self) -> list[Any]:
        """The evaluation prompts as prompt records, each with its true label word as the target."""
        from neuronscope.inputs.prompts import PromptRecord

        return [PromptRecord(str(number), row["text"], row["label_words"][row["query_class"]])
                for number, row in enumerate(self.prompts)]


def _recorded_model(value: Any) -> dict[str, Any]:
    """The model a recipe recorded: a dict, or the text of one (``"{'model': '...', 'gguf_file': ...}"``)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return {"model": value} if value else {}
    if not isinstance(value, dict) or not value.get("model"):
        return {}
    return {"model": str(value["model"]), "gguf_file": value.get("gguf_file")}


def read_icl_run(folder: Path) -> ICLRunHeads:
    """Read a ``recipe icl`` results folder (before any model loads).

    Raises:
        InputError: the folder or one of its files is missing, or it is not a ``recipe icl`` folder.
    """
    folder = Path(folder)
    missing = [name for name in ICL_FILES if not (folder / name).is_file()]
    if missing:
        raise InputError(f"--heads-from {folder}: not a finished 'neuronscope recipe icl' folder (missing "
                         f"{', '.join(missing)}); give the --out folder of a recipe icl run")
    config = json.loads((folder / "config.json").read_text())
    if config.get("experiment") != "in_context_heads":
        raise InputError(f"--heads-from {folder}: written by {config.get('experiment') or 'another command'}, not "
                         "by 'neuronscope recipe icl'")
    kind = json.loads((folder / "metrics.json").read_text()).get("label_kind", "natural")
    prompts = json.loads((folder / "prompts.json").read_text()).get(f"evaluate_{kind}", [])
    return ICLRunHeads(folder, _recorded_model(config.get("model")), kind, prompts)


def fit_heads(heads: torch.Tensor, n_layers: int, n_heads: int) -> torch.Tensor:
    """``heads [n, 2]`` with negative layers counted from the end; one error listing every head outside the model."""
    bad = [f"{layer}.{head}" for layer, head in heads.tolist()
           if not -n_layers <= layer < n_layers or not 0 <= head < n_heads]
    if bad:
        raise InputError(f"heads {', '.join(bad[:20])} are outside the model ({n_layers} layers of {n_heads} heads); "
                         "check --heads or that --model is the model the heads were found on")
    fitted = heads.clone()
    fitted[:, 0] %= n_layers
    if len({tuple(row) for row in fitted.tolist()}) < len(fitted):
        raise InputError("--heads names one head twice (a negative layer counts from the end); list each once")
    return fitted


def head_factor(mode: str, factor: float) -> float:
    """The scale of a head mode: ``suppress`` 0, ``amplify`` ``factor``."""
    return 0.0 if mode == "suppress" else factor


def random_head_sets(heads: torch.Tensor, n_layers: int, n_heads: int, draws: int, seed: int) -> list[torch.Tensor]:
    """``draws`` random sets of ``len(heads)`` distinct heads ``[n, 2]``, none of them one of ``heads``."""
    from neuronscope.attribute.icl_heads import random_heads

    generator = torch.Generator().manual_seed(seed)
    return [random_heads(len(heads), n_layers, n_heads, generator, exclude=heads) for _ in range(draws)]


def measure_random(scorer: Any, before: torch.Tensor, model: Any, sets: list[torch.Tensor], mode: str,
                   factor: float, positions: str) -> tuple[dict[str, Any], torch.Tensor]:
    """PCR of each random head set under ``mode``: the metrics (per-draw mean PCR, their mean / min / max, the
    sets) and the per-prompt target probability averaged over the draws ``[n_prompts]``."""
    from neuronscope.measure.metrics import probability_change_ratio, summarise
    from neuronscope.trace import scale_heads

    afters = [scorer.probabilities(None, scale_heads(model, heads, head_factor(mode, factor), positions))
              for heads in sets]
    means = [summarise(probability_change_ratio(before, after)).mean for after in afters]
    mean_after = torch.stack(afters).mean(0)
    metrics = {"draws": len(sets), "pcr_per_draw": means, "pcr_mean": sum(means) / len(means),
               "pcr_min": min(means), "pcr_max": max(means), "p_after_mean": float(mean_after.mean()),
               "heads": [[f"{layer}.{head}" for layer, head in heads.tolist()] for heads in sets]}
    return metrics, mean_after
