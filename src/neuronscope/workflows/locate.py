"""``locate``: score every neuron of a model with an attribution method on prompts, select the top ones, and
write a run folder (scores, selection, top tokens, plots, metrics, report).

Resumable (``--resume``), data-parallel under torchrun (each process scores its shard, rank 0 merges), batched
with out-of-memory back-off. The run folder, an earlier run in it and the options are all checked before the
model is loaded.

Selection (``--selection``, :mod:`neuronscope.aggregate.specific`): ``plain`` ranks the mean score over the
prompts; ``contrast`` and ``inverse-frequency`` also score the background prompts (``--background``, default a
built-in set) for their own answers and keep the prompts' neurons the background does not share; ``--agreement K``
keeps neurons in the top set of at least K prompts (paraphrases of one fact; ``paraphrase`` is the plain rule with it,
default more than half the prompts). Specificity is measured on every run
(``--no-specificity`` skips it): the selection zeroed at the last position, the relative change of each target and
background prompt's answer probability, against ``--draws`` random same-layer sets
(:mod:`neuronscope.workflows.specificity`).

Files: ``scores.safetensors`` / ``scores.json`` (:class:`~neuronscope.results.scores.NeuronScores`, dense
``[prompts, 1, layers, d_ff]`` or with ``--keep-top`` sparse; the background prompts' in ``background_scores.*``),
``neurons.json`` / ``neurons.csv`` (the selection, model layer numbers), ``top_tokens.json``, ``plots/layers.png``,
``plots/scores.png``, ``specificity.json``, ``metrics.json``, ``summary.txt``, ``report.html``, and the per-prompt
ledger under ``examples/`` and ``progress/``.

Mixture-of-experts models: the scores are
:class:`~neuronscope.results.expert_scores.ExpertNeuronScores` (``[prompts, 1, n_neurons]`` over the flat ids of
the scored layers, the layout and each expert's bias term saved with them), the selection's rows are
``rank, layer, expert, kind, neuron, score`` (see :mod:`.neuron_files`), and ``tables/unit_scores.csv`` holds each
expert's (or dense layer's) mean total score — which experts carry the targets. Their selection is plain (the
specific rules and the specificity table are for dense neurons; ``evaluate`` measures expert neurons against
random neurons of the same experts).

``--raising-pool N`` (dense models): among the N best neurons of the selection, keep those whose scaling alone
raises the target most (:mod:`.raising`, docs/EFFECTS.md).

Example:
    >>> locate(LocateOptions(model="./tiny", prompt=["The capital of France is"], target=["Paris"],
    ...                      out=Path("runs/paris")))                               # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from neuronscope.aggregate.select import select_neurons
from neuronscope.aggregate.specific import select_specific
from neuronscope.errors import NothingProcessedError, OptionError
from neuronscope.workflows.common import RunResult, finish_run, load, model_device, write_png
from neuronscope.workflows.neuron_files import top_neuron_lines, write_selection, write_unit_table
from neuronscope.workflows.options import parse_key_values, parse_layers
from neuronscope.workflows.specificity import (
    background_for,
    measure_neurons,
    measured_prompts,
    write_specificity,
)
from neuronscope.workflows.specs.text import DEFAULT_TOP_K, LocateOptions


def locate(options: LocateOptions, *, loaded: Any = None) -> RunResult:
    """Run ``locate`` (see the module docstring); returns where the results are and the top neurons."""
    from neuronscope.attribute.registry import get_method
    from neuronscope.inputs.prompts import prompt_records
    from neuronscope.runs.folder import RunDir
    from neuronscope.runs.session import run_session

    records = prompt_records(options.prompts, options.prompt, options.target)
    selection = options.specific_selection(len(records))
    if selection.agreement is not None and selection.agreement > len(records):
        raise OptionError(f"--agreement {selection.agreement} needs at least {selection.agreement} prompts "
                          f"(paraphrases of the fact); {len(records)} given")
    measured = options.specificity or selection.uses_background
    background = background_for(options, [r.prompt for r in records]) if measured else []
    scored = records + (background if selection.uses_background else [])
    method = get_method(options.method)
    layer_request = parse_layers(options.layers)
    kwargs = method.keyword_arguments(options.site, layer_request, parse_key_values(options.option))
    config = {"command": "locate", **options.recorded()}
    RunDir.check(options.out, resume=options.resume, overwrite=options.overwrite, config=config)
    loaded = load(options, loaded)
    from neuronscope.inputs.targets import resolve_targets
    from neuronscope.models.adapter import get_adapter

    adapter = get_adapter(loaded.model)
    if adapter.moe is not None and (options.raising_pool is not None or selection.rule != "plain"
                                    or selection.agreement is not None):
        raise OptionError("on a mixture-of-experts model locate selects plainly: leave out --raising-pool, "
                          "--selection and --agreement (measure expert neurons with 'neuronscope evaluate')")
    layer_list = adapter.resolve_layers(layer_request)
    token_ids = resolve_targets(loaded.processor, scored, adapter.vocab_size, leading_space=options.leading_space,
                                first_piece=options.first_piece)
    _encode(loaded, [records[0].prompt], options.chat)  # a prompt the template cannot render fails here, once
    roles = ["target"] * len(records) + ["background"] * (len(scored) - len(records))
    items = list(zip(scored, token_ids, roles, strict=True))
    with run_session(options.out, config, resume=options.resume, overwrite=options.overwrite,
                     runtime=options.runtime()) as session:
        report = session.loop(items, lambda chunk: score_chunk(loaded, method.function, kwargs, chunk, options),
                              batch_size=options.batch_size, label="prompts")
        if not session.gather():
            return RunResult("locate", str(session.run.path), {"rank": session.process.rank,
                                                               "processed": report.processed})
        return _finish(session.run, options, records, background, loaded, layer_list)


def _encode(loaded: Any, prompts: list[str], chat: bool) -> Any:
    from neuronscope.inputs.batch import encode_prompts

    return encode_prompts(loaded.processor, prompts, chat=chat, model=loaded.model).to(model_device(loaded.model))


def score_chunk(loaded: Any, method: Any, kwargs: dict[str, Any], chunk: list[tuple[int, Any]],
                 options: LocateOptions) -> list[Any]:
    """Score one batch of prompts: per prompt its tensors (``scores [1, layers, d_ff]``, or with ``keep_top``
    only the best ``values`` / flat ``indices``) and its record."""
    from neuronscope.inputs.targets import last_position_targets
    from neuronscope.runs.loop import Example

    records = [item[0] for _, item in chunk]
    batch = _encode(loaded, [record.prompt for record in records], options.chat)
    targets = last_position_targets(loaded.model, loaded.processor, batch, [item[1] for _, item in chunk],
                                    [record.target for record in records])
    scores = method(loaded.model, batch, targets, **kwargs)
    dense = scores.dense().detach().cpu()
    if options.keep_top is not None:
        flat = dense.flatten(2)
        top = flat.topk(min(options.keep_top, flat.shape[-1]), dim=-1)
    out = []
    for row, (record, (_, item)) in enumerate(zip(records, chunk, strict=True)):
        meta = {"id": record.id, "prompt": record.prompt, "target": record.target,
                "token_id": int(targets.token_ids[row, 0]), "token": targets.labels[row][0],
                "layers": scores.meta.get("layers")}
        if len(item) > 2 and item[2] != "target":
            meta["role"] = item[2]
        tensors = ({"scores": dense[row].contiguous()} if options.keep_top is None else
                   {"values": top.values[row].contiguous(), "indices": top.indices[row].contiguous()})
        if getattr(scores, "bias", None) is not None:  # MoE: what each expert adds that belongs to no neuron
            tensors["bias"] = scores.bias[row].detach().cpu().contiguous()
        out.append(Example(tensors, meta))
    return out


def _finish(run: Any, options: LocateOptions, records: list[Any], background: list[Any], loaded: Any,
            layer_list: list[int]) -> RunResult:
    """Rank 0, once every example is done: merge, save scores, select, explain, plot, measure specificity, report."""
    from neuronscope.models.adapter import get_adapter
    from neuronscope.report.plots import score_histogram_figure
    from neuronscope.runs.shards import merge_shards

    selection = options.specific_selection(len(records))
    n = len(records)
    merged = merge_shards(run, expected=n + (len(background) if selection.uses_background else 0))
    if not merged.records:
        raise NothingProcessedError(f"{run.path}: no prompt was scored; check the prompts")
    run.file("merged.safetensors").unlink(missing_ok=True)  # scores.safetensors below holds the same values
    adapter = get_adapter(loaded.model)
    meta = {"method": options.method, "site": options.site, "layers": layer_list,
            "model": {**loaded.describe(), **adapter.describe()},
            "targets": [{key: r[key] for key in ("id", "target", "token_id", "token")} for r in merged.records[:n]],
            "method_options": parse_key_values(options.option)}
    top_k = options.top_k if options.top_k is not None or options.threshold is not None else DEFAULT_TOP_K
    raising: dict[str, Any] = {}
    if adapter.moe is not None:  # one row of flat ids, then (layer, expert, index) rows
        scores, mean_scores = _expert_scores(merged, adapter, layer_list, meta, options.keep_top)
        scores.save(run.file("scores"))
        flat, chosen = select_neurons(mean_scores[None], [0], options.threshold, top_k)
        neurons = scores.rows(flat[:, 1].contiguous())
        write_unit_table(run, scores)
    else:
        mean_scores, dense = _save_scores(run, merged.tensors, meta, n, (len(layer_list), adapter.d_ff),
                                          options.keep_top)
        pool = options.raising_pool or top_k
        if selection.rule == "plain" and selection.agreement is None:  # today's selection, bit for bit
            neurons, chosen = select_neurons(mean_scores, layer_list, options.threshold, pool)
        else:
            neurons, chosen = select_specific(dense[:n], dense[n:] if selection.uses_background else None,
                                              selection, top_k=pool, threshold=options.threshold, layers=layer_list)
        if options.raising_pool is not None:
            from neuronscope.workflows.raising import keep_raising

            neurons, chosen, raising = keep_raising(loaded, options, merged.records[:n], neurons, chosen, top_k)
    rows = write_selection(run, loaded.model, loaded.processor, neurons, chosen, adapter.n_layers, options.explain_k)
    write_png(run, "plots/scores.png", score_histogram_figure(mean_scores, title="Mean score of every neuron",
                                                              log_count=True))
    metrics: dict[str, Any] = {
        "prompts": n, "neurons_scored": int(mean_scores.numel()), "neurons_selected": len(rows),
        "max_mean_score": float(mean_scores.max()), "min_mean_score": float(mean_scores.min()),
        "selection": {"name": options.selection, **selection.as_dict()},
        "background_prompts_scored": len(merged.records) - n, **raising}
    measured = []
    if options.specificity and len(neurons) and adapter.moe is None:
        prompts = measured_prompts(loaded, _own_scorer(loaded, records, options), background, chat=options.chat,
                                   batch_size=options.batch_size)
        report = measure_neurons(loaded, prompts, neurons, site=options.site, draws=options.draws, seed=options.seed)
        measured = write_specificity(run, {"suppress": report}, metrics)
    summary = (f"{options.method} scores of {mean_scores.numel()} neurons of {options.model} over {n} prompts; "
               f"{len(rows)} selected ({selection.rule} selection, threshold {options.threshold}, top-k "
               f"{options.top_k or ''}).")
    finish_run(run, metrics, "\n".join([summary, *measured]))
    lines = [f"{n} prompts scored with {options.method}; results in {run.path} "
             f"(report: {run.path / 'report.html'})", *top_neuron_lines(rows, run.read_json("top_tokens.json")),
             *measured]
    return RunResult("locate", str(run.path), metrics, lines)


def _save_scores(run: Any, tensors: dict[str, torch.Tensor], meta: dict[str, Any], n: int, grid: tuple[int, int],
                 keep_top: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores`` (the target prompts') and ``background_scores`` (if any were scored); returns the target prompts'
    mean score ``[layers, d_ff]`` and every scored prompt's dense scores ``[prompts, layers, d_ff]``."""
    from neuronscope.results.scores import NeuronScores

    if "scores" in tensors:
        values = tensors["scores"]  # [N, 1, layers, d_ff]
        parts = [NeuronScores(values[:n], meta=meta), NeuronScores(values[n:], meta={**meta, "targets": []})]
        mean_scores = values[:n].double().mean(dim=(0, 1))
        dense = values[:, 0]
    else:  # --keep-top: a neuron outside an example's top-k counts as 0
        values, indices = tensors["values"], tensors["indices"]  # [N, 1, k]
        kept = {**meta, "top_k_kept": keep_top}
        parts = [NeuronScores(values[:n], indices[:n], grid, kept),
                 NeuronScores(values[n:], indices[n:], grid, {**kept, "targets": []})]
        total = torch.zeros(grid[0] * grid[1], dtype=torch.float64)
        total.index_add_(0, indices[:n].reshape(-1), values[:n].reshape(-1).double())
        mean_scores = (total / (n * values.shape[1])).view(grid)
        dense = torch.zeros(len(values), grid[0] * grid[1], dtype=values.dtype)
        dense.scatter_(1, indices[:, 0], values[:, 0])
        dense = dense.view(len(values), *grid)
    parts[0].save(run.file("scores"))
    if len(values) > n:
        parts[1].save(run.file("background_scores"))
    return mean_scores, dense


def _own_scorer(loaded: Any, records: list[Any], options: LocateOptions) -> Any:
    from neuronscope.workflows.common import prompt_scorer

    return prompt_scorer(loaded, records, leading_space=options.leading_space, first_piece=options.first_piece,
                         chat=options.chat, batch_size=options.batch_size)


def _expert_scores(merged: Any, adapter: Any, layer_list: list[int], meta: dict[str, Any],
                   keep_top: int | None) -> tuple[Any, torch.Tensor]:
    """A mixture-of-experts run's :class:`~neuronscope.results.expert_scores.ExpertNeuronScores` (flat ids over the
    scored layers) and the mean score of every neuron ``[n_neurons]``."""
    from neuronscope.attribute.moe_contribution import sub_layout
    from neuronscope.results.expert_scores import ExpertNeuronScores

    layout = sub_layout(adapter, layer_list)
    if "scores" in merged.tensors:
        values = merged.tensors["scores"]  # [N, 1, n_neurons]
        indices, mean_scores = None, values.double().mean(dim=(0, 1))
    else:  # --keep-top: a neuron outside an example's top-k counts as 0 in the mean
        values, indices = merged.tensors["values"], merged.tensors["indices"]  # [N, 1, k]
        total = torch.zeros(layout.n_neurons, dtype=torch.float64)
        total.index_add_(0, indices.reshape(-1), values.reshape(-1).double())
        mean_scores = total / (values.shape[0] * values.shape[1])
        meta = {**meta, "top_k_kept": keep_top}
    return ExpertNeuronScores(values, layout, indices, merged.tensors.get("bias"), meta), mean_scores
