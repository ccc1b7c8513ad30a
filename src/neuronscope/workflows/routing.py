"""``routing``: which experts of a mixture-of-experts model the tokens of some prompts are sent to, per MoE layer
(:func:`~neuronscope.attribute.moe_router.routing_statistics`): for each expert the number of tokens routed to it,
their share, the mean router weight when routed and the mean router score (softmax over all experts, or sigmoid for
sigmoid routers) over all counted tokens.

Tokens counted: every prompt token (``--positions all``), each prompt's last token (``last``), or only the tokens
that are one of ``--words`` (a concept's tokens, wherever they are). Padding never counts. Prompts go through the
model ``--batch-size`` at a time; the batches' statistics are merged exactly
(:func:`~neuronscope.attribute.moe_router.merge_router_statistics`).

With ``--out``: ``routing.json`` (``RouterStatistics``, read back with ``load_result``), ``tables/routing.csv``
(layer, expert, kind, tokens, share, mean_weight, mean_score), ``plots/routing_share.png`` (layers × experts),
``metrics.json`` and ``report.html``.

Example:
    >>> routing(RoutingOptions(model="./tiny-mixtral", prompt=["the capital of france is paris"],
    ...                        words="paris"))                                         # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from neuronscope.errors import InputError, NothingProcessedError
from neuronscope.workflows.common import RunResult, load, model_device, write_png
from neuronscope.workflows.options import parse_layers, split_words
from neuronscope.workflows.specs.text import RoutingOptions


def word_positions(input_ids: torch.Tensor, mask: torch.Tensor | None, processor: Any,
                   words: list[str]) -> list[list[int]]:
    """Per row, the positions whose token is one of ``words`` (a whole token; case and leading space ignored)."""
    wanted = {word.lower() for word in words}
    tokenizer = getattr(processor, "tokenizer", processor)
    rows = []
    for row, ids in enumerate(input_ids.tolist()):
        keep = mask[row].tolist() if mask is not None else [1] * len(ids)
        rows.append([position for position, (token, valid) in enumerate(zip(ids, keep, strict=True))
                     if valid and tokenizer.decode([token]).strip().lower() in wanted])
    return rows


def routing(options: RoutingOptions, *, loaded: Any = None) -> RunResult:
    """Run ``routing`` (see the module docstring)."""
    from neuronscope.attribute.moe_router import merge_router_statistics, routing_statistics
    from neuronscope.inputs.batch import encode_prompts
    from neuronscope.inputs.prompts import prompt_records
    from neuronscope.models.adapter import get_adapter
    from neuronscope.runs.folder import RunDir

    records = prompt_records(options.prompts, options.prompt, [])
    words = split_words(options.words) if options.words is not None else None
    if options.out is not None:
        RunDir.check(options.out, overwrite=options.overwrite)
    loaded = load(options, loaded)
    adapter = get_adapter(loaded.model)
    if adapter.moe is None:
        raise InputError(f"'{adapter.model_type}' is a dense model: routing needs a mixture-of-experts model (see "
                         "'neuronscope models')")
    layers = [layer for layer in adapter.resolve_layers(parse_layers(options.layers)) if adapter.moe.is_moe(layer)]
    if not layers:
        raise InputError(f"--layers {options.layers}: none of them is a mixture-of-experts layer (MoE layers: "
                         f"{sorted(adapter.moe.layers)})")
    parts = []
    for start in range(0, len(records), options.batch_size):
        chunk = [record.prompt for record in records[start:start + options.batch_size]]
        batch = encode_prompts(loaded.processor, chunk, chat=options.chat, model=loaded.model)
        positions: Any = options.positions
        if words is not None:
            positions = word_positions(batch.input_ids, batch.inputs.get("attention_mask"), loaded.processor, words)
            if not any(positions):
                continue
        parts.append(routing_statistics(loaded.model, batch.to(model_device(loaded.model)), positions, layers))
    if not parts or not sum(part.n_tokens for part in parts):
        raise NothingProcessedError(f"no token of the prompts is one of {', '.join(words or [])}: give words that "
                                    "are whole tokens of these prompts (or drop --words)")
    stats = merge_router_statistics(parts)
    stats.meta.update(positions=options.positions, words=words, prompts=len(records))
    metrics = _metrics(stats, options, adapter)
    lines = stats.summary().splitlines()
    if options.out is None:
        return RunResult("routing", "", metrics, lines)
    _write(options, stats, metrics, adapter)
    return RunResult("routing", str(options.out), metrics, [*lines, f"results in {options.out}"])


def _rows(stats: Any, adapter: Any) -> list[dict[str, Any]]:
    rows = []
    for slot, layer in enumerate(stats.layers):
        for expert in range(stats.counts.shape[1]):
            rows.append({"layer": layer, "expert": expert,
                         "kind": "shared" if adapter.moe.layout.is_shared(layer, expert) else "routed",
                         "tokens": int(stats.counts[slot, expert]), "share": float(stats.fraction[slot, expert]),
                         "mean_weight": float(stats.mean_weight[slot, expert]),
                         "mean_score": float(stats.mean_score[slot, expert])})
    return rows


def _metrics(stats: Any, options: RoutingOptions, adapter: Any) -> dict[str, Any]:
    top = {str(layer): [{"expert": expert, "share": share} for expert, share in stats.top_experts(layer, options.top)]
           for layer in stats.layers}
    return {"title": f"Routing of {stats.n_tokens} tokens ({adapter.moe.family.name})", "tokens": stats.n_tokens,
            "prompts": stats.meta["prompts"], "layers": stats.layers, "positions": options.positions,
            "words": stats.meta["words"], "top_experts": top}


def _write(options: RoutingOptions, stats: Any, metrics: dict[str, Any], adapter: Any) -> None:
    from neuronscope.report import build_report
    from neuronscope.report.plots import heatmap_figure
    from neuronscope.runs.folder import RunDir

    results = RunDir(options.out, overwrite=options.overwrite)
    results.write_config({"command": "routing", **options.recorded()})
    results.write_meta({"runtime": options.runtime()})
    stats.save(results.file("routing.json"))
    rows = _rows(stats, adapter)
    results.write_csv("tables/routing.csv", rows, list(rows[0]))
    results.write_json("metrics.json", metrics)
    write_png(results, "plots/routing_share.png",
              heatmap_figure(stats.fraction, stats.layers, list(range(stats.fraction.shape[1])),
                             title=f"Share of {stats.n_tokens} tokens routed to each expert", xlabel="expert",
                             ylabel="layer", colour_label="share of tokens"))
    build_report(results.path)
