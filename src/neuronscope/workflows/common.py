"""What the workflows share: loading the model their options name, reading a run folder's neurons and config,
writing a results folder's metrics and report, and the result every workflow returns.

Example:
    >>> loaded = load(options)                         # doctest: +SKIP  (model, tokenizer/processor, how loaded)
    >>> neurons, config = read_run_neurons("runs/paris")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from neuronscope.errors import InputError, ModelLoadError, OptionError, ResultFileError, RunFolderError
from neuronscope.results.io import read_json
from neuronscope.workflows.options import parse_neurons
from neuronscope.workflows.result import RunResult as RunResult

#: ``--model`` names that stand for a model shipped on PyPI.
SMOLLM2 = "smollm2"
MODEL_FIELDS = ("model", "gguf_file", "dtype", "device_map")


# ---------------------------------------------------------------------------------------------------- models
def load(options: Any, loaded: Any = None, *, default: str | None = None, with_processor: bool = True) -> Any:
    """The model the options name (``model``, ``gguf_file``, ``dtype``, ``device_map``, ``device``), placed; with
    ``text_only`` its adapter is built for text-only scoring (``get_adapter(model, text_only=True)``).

    ``loaded`` (a :class:`~neuronscope.models.loading.LoadedModel`) is used as it is when given. ``default``
    names the model to use when ``options.model`` is empty (``"smollm2"``: the PyPI SmolLM2-135M-Instruct).

    Raises:
        OptionError: no model given. ModelLoadError: the folder or file is missing or cannot be loaded.
    """
    if loaded is not None:
        return _text_only(options, loaded)
    from neuronscope.models.loading import load_model

    source, gguf_file = options.model or default, options.gguf_file
    if not source:
        raise OptionError("no model given: pass --model PATH (a local folder or hub id)")
    if source == SMOLLM2:
        from neuronscope.models.sources import smollm2_location

        folder, gguf_file = smollm2_location()
        source = str(folder)
    text = str(source)
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep in text and Path(text).exists()
    if looks_local and not Path(text).expanduser().exists():  # a hub id is "name" or "org/name"
        raise ModelLoadError(f"model folder '{source}' not found; check the path")
    quiet_transformers()
    result = load_model(text, gguf_file=gguf_file, dtype=options.dtype, device_map=options.device_map,
                        with_processor=with_processor)
    if not options.device_map:
        device = resolve_device(getattr(options, "device", "auto") or "auto")
        if device.type != "cpu":
            result.model.to(device)
    return _text_only(options, result)


def _text_only(options: Any, loaded: Any) -> Any:
    """With ``--text-only``, the model's adapter accepts a VLM without a layout reader (text positions only)."""
    if getattr(options, "text_only", False):
        from neuronscope.models.adapter import get_adapter

        get_adapter(loaded.model, text_only=True)
    return loaded


def quiet_transformers() -> None:
    """No per-shard progress bars or advice from transformers: stderr is for messages a user acts on."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def resolve_device(device: str) -> torch.device:
    """``auto``: this process's GPU (``LOCAL_RANK``) when CUDA is available, else CPU; anything else as given."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise OptionError(f"unknown device '{device}' ({error}); use auto, cpu or cuda:N") from None


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's inputs go: the device of its input embeddings."""
    return model.get_input_embeddings().weight.device


def with_model_of(options: Any, config: Mapping[str, Any]) -> Any:
    """``options`` with ``model`` / ``gguf_file`` / ``dtype`` / ``device_map`` from a run's recorded config, where
    the command line gave no ``--model`` (a later command on a run uses the run's model, loaded the same way)."""
    if getattr(options, "model", None) or not config.get("model"):
        return options
    changes = {name: config[name] for name in MODEL_FIELDS
               if name in config and config[name] is not None and hasattr(options, name)}
    return dataclasses.replace(options, **changes)


# ---------------------------------------------------------------------------------------------------- run folders
def check_run_files(run_dir: Path) -> None:
    """Every JSON and safetensors file of a locate run reads, and its scores are there (no tensor is loaded).

    Raises:
        ResultFileError: a missing, cut or damaged file (the message names it and says to rerun locate).
    """
    from neuronscope.results.io import check_safetensors
    from neuronscope.runs import RunDir

    RunDir.open(run_dir).validate()
    check_safetensors(run_dir / "scores.safetensors", what="locate run's scores")


def read_run_neurons(run_dir: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """The selected neurons of a locate run and its config (``neurons.json``, ``config.json``): ``[n, 2]``
    (layer, index) rows, or ``[n, 3]`` (layer, expert, index) rows for a mixture-of-experts model.

    Raises:
        RunFolderError: no such folder, or not a finished locate run. ResultFileError: a damaged file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: run folder not found; pass a folder written by 'neuronscope locate'")
    path = run_dir / "neurons.json"
    if not path.is_file():
        raise RunFolderError(f"{path}: not found; is {run_dir} a finished 'neuronscope locate' run?")
    check_run_files(run_dir)
    data = read_json(path, what="neuron selection")
    try:
        rows = data["neurons"]
        experts = bool(rows) and "expert" in rows[0]
        neurons = torch.tensor([[int(row["layer"]), *([int(row["expert"])] if experts else []),
                                 int(row["index"] if "index" in row else row["neuron"])] for row in rows],
                               dtype=torch.long).reshape(-1, 3 if experts else 2)
    except (KeyError, TypeError, ValueError) as error:
        raise ResultFileError(f"{path}: damaged ({error}); rerun 'neuronscope locate'") from None
    config_path = run_dir / "config.json"
    config = read_json(config_path, what="run config") if config_path.is_file() else {}
    return neurons, config


def neurons_of(options: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """Neurons from ``--neurons`` or ``--run``, and the run's config (empty for ``--neurons``)."""
    if options.neurons:
        return torch.tensor(parse_neurons(options.neurons), dtype=torch.long), {}
    return read_run_neurons(options.run)


def fit_neurons(neurons: torch.Tensor, n_layers: int, d_ff: int) -> torch.Tensor:
    """``neurons`` with negative layers counted from the end; one error listing every neuron outside the model."""
    bad = [f"{layer}:{index}" for layer, index in neurons.tolist()
           if not (-n_layers <= layer < n_layers) or not 0 <= index < d_ff]
    if bad:
        raise InputError(f"neurons {', '.join(bad[:20])} are outside the model ({n_layers} layers of {d_ff} "
                         "neurons); check --neurons or that --model is the run's model")
    fitted = neurons.clone()
    fitted[:, 0] %= n_layers
    return fitted


def fit_to_model(neurons: torch.Tensor, adapter: Any) -> torch.Tensor:
    """Neuron rows checked against the model of ``adapter``, negative layers counted from the end: ``[n, 2]``
    (layer, index) rows of a dense model, ``[n, 3]`` (layer, expert, index) rows of a mixture-of-experts model
    (where ``layer:index`` rows of its dense layers become ``(layer, -1, index)``).

    Raises:
        InputError: rows of the other kind of model, or outside it (one message naming them).
    """
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    if adapter.moe is None:
        if neurons.shape[-1] == 3:
            raise InputError("layer:expert:index neurons name experts, but this model is dense: write its neurons "
                             "as layer:index (or check that --model is the run's mixture-of-experts model)")
        return fit_neurons(neurons, adapter.n_layers, adapter.d_ff)
    if neurons.shape[-1] == 2:
        in_moe = [f"{layer}:{index}" for layer, index in neurons.tolist()
                  if -adapter.n_layers <= layer < adapter.n_layers and adapter.moe.is_moe(layer % adapter.n_layers)]
        if in_moe:
            raise InputError(f"neurons {', '.join(in_moe[:10])} are in mixture-of-experts layers: write them as "
                             "layer:expert:index (e.g. '1:5:26'; see 'neuronscope explain --run' of a locate run)")
        neurons = torch.stack([neurons[:, 0], torch.full_like(neurons[:, 0], -1), neurons[:, 1]], dim=1)
    bad = [":".join(map(str, row)) for row in neurons.tolist() if not -adapter.n_layers <= row[0] < adapter.n_layers]
    if bad:
        raise InputError(f"neurons {', '.join(bad[:20])} are outside the model ({adapter.n_layers} layers); check "
                         "--neurons or that --model is the run's model")
    fitted = neurons.clone()
    fitted[:, 0] %= adapter.n_layers
    return adapter.moe.layout.check(fitted)


def write_table(run: Any, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """A CSV of dict rows; columns = every key, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    run.write_csv(name, rows, columns or ["empty"])


def finish_run(run: Any, metrics: dict[str, Any], summary: str = "", title: str | None = None) -> dict[str, Any]:
    """Write ``metrics.json`` (and ``summary.txt``) into the run folder, build its ``report.html``; returns
    ``metrics``."""
    from neuronscope.report import build_report

    run.write_json("metrics.json", metrics)
    if summary:
        run.write_text("summary.txt", summary + "\n")
    build_report(run.path, title=title or metrics.get("title"))
    return metrics


def write_png(run: Any, name: str, figure: Any) -> None:
    """Write a matplotlib figure into the run folder and free it."""
    run.write_png(name, figure)
    import matplotlib.pyplot as plt

    plt.close(figure)


# ---------------------------------------------------------------------------------------------------- prompts
def run_prompts(options: Any, run_config: Mapping[str, Any]) -> list[Any]:
    """The prompt records of the options, or of the run they act on when the options give none."""
    from neuronscope.inputs.prompts import prompt_records

    if getattr(options, "prompts", None) or getattr(options, "prompt", None):
        return prompt_records(options.prompts, options.prompt, getattr(options, "target", []))
    if run_config.get("prompts") or run_config.get("prompt"):
        return prompt_records(run_config.get("prompts"), run_config.get("prompt") or [],
                              getattr(options, "target", []) or run_config.get("target") or [])
    return prompt_records(None, [], [])  # raises: no prompts given


def prompt_scorer(loaded: Any, records: Sequence[Any], *, leading_space: bool = True, first_piece: bool = False,
                  chat: bool = False, batch_size: int = 8) -> Any:
    """A :class:`~neuronscope.measure.probability.ForwardScorer` of the records' prompts and targets at the last
    position; ``prediction`` targets are the unmodified model's own next tokens (so the same token is measured
    under every intervention)."""
    from neuronscope.inputs.batch import encode_prompts
    from neuronscope.inputs.targets import resolve_targets
    from neuronscope.measure.probability import ForwardScorer
    from neuronscope.models.adapter import get_adapter

    adapter = get_adapter(loaded.model)
    token_ids = resolve_targets(loaded.processor, records, adapter.vocab_size, leading_space=leading_space,
                                first_piece=first_piece)
    batch = encode_prompts(loaded.processor, [r.prompt for r in records], chat=chat, model=loaded.model)
    batch = batch.to(model_device(loaded.model))
    targets = _predicted_targets(loaded, batch, token_ids, [r.target for r in records], batch_size)
    return ForwardScorer(loaded.model, batch, targets, batch_size=batch_size)


def _predicted_targets(loaded: Any, batch: Any, token_ids: list[int | None], labels: list[str],
                       batch_size: int) -> Any:
    """Targets at the last position, ``prediction`` ones filled in by forwards of ``batch_size`` rows."""
    from neuronscope.inputs.targets import TargetSet, last_position_targets

    parts = []
    for start in range(0, len(batch), batch_size):
        rows = list(range(start, min(start + batch_size, len(batch))))
        parts.append(last_position_targets(loaded.model, loaded.processor, batch.select(rows),
                                           token_ids[start:start + len(rows)], labels[start:start + len(rows)]))
    last = batch.seq_len - 1
    return TargetSet(torch.cat([p.token_ids for p in parts]), torch.full((len(batch), 1), last, dtype=torch.long),
                     torch.ones(len(batch), 1, dtype=torch.bool), [label for p in parts for label in p.labels])
