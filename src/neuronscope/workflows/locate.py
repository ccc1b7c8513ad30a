"""``locate``: score every neuron of a model with an attribution method on prompts, select the top ones, and
write a run folder (scores, selection, top tokens, plots, metrics, report).

Resumable (``--resume``), data-parallel under torchrun (each process scores its shard, rank 0 merges), batched
with out-of-memory back-off. The run folder, an earlier run in it and the options are all checked before the
model is loaded.

Files: ``scores.safetensors`` / ``scores.json`` (:class:`~neuronscope.results.scores.NeuronScores`, dense
``[prompts, 1, layers, d_ff]`` or with ``--keep-top`` sparse), ``neurons.json`` / ``neurons.csv`` (the selection,
model layer numbers), ``top_tokens.json``, ``plots/layers.png``, ``plots/scores.png``, ``metrics.json``,
``summary.txt``, ``report.html``, and the per-prompt ledger under ``examples/`` and ``progress/``.

Mixture-of-experts models: the scores are
:class:`~neuronscope.results.expert_scores.ExpertNeuronScores` (``[prompts, 1, n_neurons]`` over the flat ids of
the scored layers, the layout and each expert's bias term saved with them), the selection's rows are
``rank, layer, expert, kind, neuron, score`` (see :mod:`.neuron_files`), and ``tables/unit_scores.csv`` holds each
expert's (or dense layer's) mean total score — which experts carry the targets.

Example:
    >>> locate(LocateOptions(model="./tiny", prompt=["The capital of France is"], target=["Paris"],
    ...                      out=Path("runs/paris")))                               # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import torch

from neuronscope.errors import NothingProcessedError
from neuronscope.workflows.common import RunResult, load, model_device, write_png
from neuronscope.workflows.neuron_files import top_neuron_lines, write_selection, write_unit_table
from neuronscope.workflows.options import parse_key_values, parse_layers
from neuronscope.workflows.specs.text import DEFAULT_TOP_K, LocateOptions


def locate(options: LocateOptions, *, loaded: Any = None) -> RunResult:
    """Run ``locate`` (see the module docstring); returns where the results are and the top neurons."""
    from neuronscope.attribute.registry import get_method
    from neuronscope.inputs.prompts import prompt_records
    from neuronscope.runs.folder import RunDir
    from neuronscope.runs.session import run_session

    records = prompt_records(options.prompts, options.prompt, options.target)
    method = get_method(options.method)
    layer_request = parse_layers(options.layers)
    kwargs = method.keyword_arguments(options.site, layer_request, parse_key_values(options.option))
    config = {"command": "locate", **options.recorded()}
    RunDir.check(options.out, resume=options.resume, overwrite=options.overwrite, config=config)
    loaded = load(options, loaded)
    from neuronscope.inputs.targets import resolve_targets
    from neuronscope.models.adapter import get_adapter

    adapter = get_adapter(loaded.model)
    if options.raising_pool is not None and adapter.moe is not None:
        from neuronscope.errors import OptionError

        raise OptionError("--raising-pool measures dense FFN neurons; on a mixture-of-experts model measure "
                          "expert neurons with 'neuronscope intervene --mode amplify' instead")
    layer_list = adapter.resolve_layers(layer_request)
    token_ids = resolve_targets(loaded.processor, records, adapter.vocab_size, leading_space=options.leading_space,
                                first_piece=options.first_piece)
    _encode(loaded, [records[0].prompt], options.chat)  # a prompt the template cannot render fails here, once
    items = list(zip(records, token_ids, strict=True))
    with run_session(options.out, config, resume=options.resume, overwrite=options.overwrite,
                     runtime=options.runtime()) as session:
        report = session.loop(items, lambda chunk: score_chunk(loaded, method.function, kwargs, chunk, options),
                              batch_size=options.batch_size, label="prompts")
        if not session.gather():
            return RunResult("locate", str(session.run.path), {"rank": session.process.rank,
                                                               "processed": report.processed})
        return _finish(session.run, options, records, loaded, layer_list)


def _encode(loaded: Any, prompts: list[str], chat: bool) -> Any:
    from neuronscope.inputs.batch import encode_prompts

    return encode_prompts(loaded.processor, prompts, chat=chat, model=loaded.model).to(model_device(loaded.model))


def score_chunk(loaded: Any, method: Any, kwargs: dict[str, Any], chunk: list[tuple[int, Any]],
                 options: LocateOptions) -> list[Any]:
    """Score one batch of prompts: per prompt its tensors (``scores [1, layers, d_ff]``, or with ``keep_top``
    only the best ``values`` / flat ``indices``) and its record."""
    from neuronscope.inputs.targets import last_position_targets
    from neuronscope.runs.loop import Example

    records = [record for _, (record, _) in chunk]
    batch = _encode(loaded, [record.prompt for record in records], options.chat)
    targets = last_position_targets(loaded.model, loaded.processor, batch, [token for _, (_, token) in chunk],
                                    [record.target for record in records])
    scores = method(loaded.model, batch, targets, **kwargs)
    dense = scores.dense().detach().cpu()
    if options.keep_top is not None:
        flat = dense.flatten(2)
        top = flat.topk(min(options.keep_top, flat.shape[-1]), dim=-1)
    out = []
    for row, record in enumerate(records):
        meta = {"id": record.id, "prompt": record.prompt, "target": record.target,
                "token_id": int(targets.token_ids[row, 0]), "token": targets.labels[row][0],
                "layers": scores.meta.get("layers")}
        tensors = ({"scores": dense[row].contiguous()} if options.keep_top is None else
                   {"values": top.values[row].contiguous(), "indices": top.indices[row].contiguous()})
        if getattr(scores, "bias", None) is not None:  # MoE: what each expert adds that belongs to no neuron
            tensors["bias"] = scores.bias[row].detach().cpu().contiguous()
        out.append(Example(tensors, meta))
    return out


def _merged_scores(merged: Any, adapter: Any, layer_list: list[int], meta: dict[str, Any],
                   keep_top: int | None) -> tuple[Any, torch.Tensor]:
    """The run's score object (:class:`NeuronScores`, or :class:`ExpertNeuronScores` for an MoE model, whose flat
    ids cover the scored layers) and the mean score of every neuron (``[layers, d_ff]``, MoE: ``[n_neurons]``)."""
    from neuronscope.results.scores import NeuronScores

    layout = None
    if adapter.moe is not None:
        from neuronscope.attribute.moe_contribution import sub_layout

        layout = sub_layout(adapter, layer_list)
        grid: tuple[int, ...] = (layout.n_neurons,)
    else:
        grid = (len(layer_list), adapter.d_ff)
    if "scores" in merged.tensors:
        values = merged.tensors["scores"]  # [N, 1, layers, d_ff] or MoE [N, 1, n_neurons]
        indices, mean_scores = None, values.double().mean(dim=(0, 1))
    else:  # --keep-top: a neuron outside an example's top-k counts as 0 in the mean
        values, indices = merged.tensors["values"], merged.tensors["indices"]  # [N, 1, k]
        total = torch.zeros(math.prod(grid), dtype=torch.float64)
        total.index_add_(0, indices.reshape(-1), values.reshape(-1).double())
        mean_scores = (total / (values.shape[0] * values.shape[1])).view(grid)
        meta = {**meta, "top_k_kept": keep_top}
    if layout is not None:
        from neuronscope.results.expert_scores import ExpertNeuronScores

        return ExpertNeuronScores(values, layout, indices, merged.tensors.get("bias"), meta), mean_scores
    scores = NeuronScores(values, meta=meta) if indices is None else NeuronScores(values, indices, grid, meta)
    return scores, mean_scores


def _finish(run: Any, options: LocateOptions, records: list[Any], loaded: Any, layer_list: list[int]) -> RunResult:
    """Rank 0, once every example is done: merge, save scores, select, explain, plot, report."""
    from neuronscope.aggregate.select import select_neurons
    from neuronscope.models.adapter import get_adapter
    from neuronscope.report import build_report
    from neuronscope.report.plots import score_histogram_figure
    from neuronscope.runs.shards import merge_shards

    merged = merge_shards(run, expected=len(records))
    if not merged.records:
        raise NothingProcessedError(f"{run.path}: no prompt was scored; check the prompts")
    run.file("merged.safetensors").unlink(missing_ok=True)  # scores.safetensors below holds the same values
    adapter = get_adapter(loaded.model)
    meta = {"method": options.method, "site": options.site, "layers": layer_list,
            "model": {**loaded.describe(), **adapter.describe()},
            "targets": [{key: r[key] for key in ("id", "target", "token_id", "token")} for r in merged.records],
            "method_options": parse_key_values(options.option)}
    scores, mean_scores = _merged_scores(merged, adapter, layer_list, meta, options.keep_top)
    scores.save(run.file("scores"))
    top_k = options.top_k if options.top_k is not None or options.threshold is not None else DEFAULT_TOP_K
    if adapter.moe is not None:  # one row of flat ids, then (layer, expert, index) rows
        flat, chosen = select_neurons(mean_scores[None], [0], options.threshold, top_k)
        neurons = scores.rows(flat[:, 1].contiguous())
        write_unit_table(run, scores)
    else:
        neurons, chosen = select_neurons(mean_scores, layer_list, options.threshold, options.raising_pool or top_k)
    raising: dict[str, Any] = {}
    if options.raising_pool is not None:
        from neuronscope.workflows.raising import keep_raising

        neurons, effects, raising = keep_raising(loaded, options, merged.records, neurons, top_k)
        slots = torch.tensor([layer_list.index(layer) for layer in neurons[:, 0].tolist()], dtype=torch.long)
        chosen = mean_scores[slots, neurons[:, 1]].to(chosen.dtype)  # the method's scores; effects in metrics
        raising["raising_effects"] = [{"layer": int(layer), "index": int(index), "mean_log_p_change": float(value)}
                                      for (layer, index), value in zip(neurons.tolist(), effects.tolist(),
                                                                       strict=True)]
    rows = write_selection(run, loaded.model, loaded.processor, neurons, chosen, adapter.n_layers, options.explain_k)
    write_png(run, "plots/scores.png", score_histogram_figure(mean_scores, title="Mean score of every neuron",
                                                              log_count=True))
    metrics = {"prompts": len(records), "neurons_scored": int(mean_scores.numel()), "neurons_selected": len(rows),
               "max_mean_score": float(mean_scores.max()), "min_mean_score": float(mean_scores.min()), **raising}
    run.write_json("metrics.json", metrics)
    run.write_text("summary.txt", f"{options.method} scores of {mean_scores.numel()} neurons of {options.model} "
                   f"over {len(records)} prompts; {len(rows)} selected (threshold {options.threshold}, top-k "
                   f"{options.top_k or ''}).\n")
    build_report(run.path)
    lines = [f"{len(records)} prompts scored with {options.method}; results in {run.path} "
             f"(report: {run.path / 'report.html'})", *top_neuron_lines(rows, run.read_json("top_tokens.json"))]
    return RunResult("locate", str(run.path), metrics, lines)
