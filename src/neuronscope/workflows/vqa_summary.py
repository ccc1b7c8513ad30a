"""The side-by-side of ``recipe vqa``: mean head maps of VQA and TQA, layer shares, top-head overlap, rank
correlations, accuracies and (with ``--ablation``) LPI against brute-force ablation; tables, plots, metrics, report.

Every figure is a mean over the questions that have it: VQA over every question asked, TQA over those with a
context; accuracies are the share of questions whose top-1 token is the answer.

Example:
    >>> summarise_questions(run, done, skipped, options)  # doctest: +SKIP  (called by recipe vqa)
"""

from __future__ import annotations

from typing import Any

import torch

from neuronscope.workflows.vqa_mechanism import compare_head_maps, head_order, layer_shares


def _mean(values: list[Any]) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _mean_map(done: list[tuple[dict[str, torch.Tensor], dict[str, Any]]], key: str) -> torch.Tensor | None:
    maps = [tensors[key].double() for tensors, _ in done if key in tensors]
    return torch.stack(maps).mean(0) if maps else None


def _rank_of(scores: torch.Tensor) -> torch.Tensor:
    """``[layers, heads]`` rank of each head (1 = best) in :func:`head_order`."""
    ranks = torch.empty(scores.numel(), dtype=torch.long)
    order = head_order(scores)
    ranks[order[:, 0] * scores.shape[1] + order[:, 1]] = torch.arange(1, scores.numel() + 1)
    return ranks.view_as(scores)


def _head_rows(maps: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    first = next(iter(maps.values()))
    ranks = {name: _rank_of(value) for name, value in maps.items()}
    rows = []
    for layer in range(first.shape[0]):
        for head in range(first.shape[1]):
            row: dict[str, Any] = {"layer": layer, "head": head}
            for name, value in maps.items():
                row[f"{name}_mean"] = round(float(value[layer, head]), 6)
                row[f"{name}_rank"] = int(ranks[name][layer, head])
            rows.append(row)
    return sorted(rows, key=lambda row: row[f"{next(iter(maps))}_rank"])


def _per_question_overlap(done: list[tuple[dict[str, torch.Tensor], dict[str, Any]]], k: int) -> float | None:
    return _mean([compare_head_maps(t["vqa_lpi"], t["tqa_lpi"], k)["top_overlap"] for t, _ in done
                  if "tqa_lpi" in t])


def _plots(run: Any, maps: dict[str, torch.Tensor], k: int) -> None:
    from neuronscope.report.vision_plots import grouped_bars_figure, head_maps_figure
    from neuronscope.workflows.common import write_png

    lpi = {name.split("_")[0].upper(): value for name, value in maps.items() if name.endswith("lpi")}
    marked = {name: [tuple(head) for head in head_order(value)[:k].tolist()] for name, value in lpi.items()}
    write_png(run, "plots/heads_vqa_tqa.png", head_maps_figure(
        lpi, f"Mean head LPI of the answer (framed: each condition's top {k}; own colour scale each)", marked,
        shared_scale=False))
    layers = list(range(next(iter(lpi.values())).shape[0]))
    write_png(run, "plots/layers_vqa_tqa.png", grouped_bars_figure(
        {name: layer_shares(value).tolist() for name, value in lpi.items()}, layers,
        "Each layer's share of the positive head LPI", "layer", "share"))


def summarise_questions(run: Any, done: list[tuple[dict[str, torch.Tensor], dict[str, Any]]],
                        skipped: list[dict[str, Any]], options: Any) -> Any:
    """Write the tables, plots and metrics of a finished ``recipe vqa`` loop; returns its RunResult."""
    from neuronscope.workflows.common import finish_run, write_table
    from neuronscope.workflows.result import RunResult

    k = options.top_heads
    maps = {name: value for name in ("vqa_lpi", "tqa_lpi", "vqa_ablation", "tqa_ablation")
            if (value := _mean_map(done, name)) is not None}
    records = [record for _, record in done]
    write_table(run, "tables/questions.csv", [{key: value for key, value in record.items() if key != "skipped"}
                                              for record in records])
    write_table(run, "tables/heads.csv", _head_rows(maps))
    metrics: dict[str, Any] = {
        "questions_done": len(done), "questions_skipped": len(skipped),
        "questions_with_context": sum("tqa_lpi" in tensors for tensors, _ in done),
        "vqa_accuracy": _mean([r["vqa_correct"] for r in records]),
        "tqa_accuracy": _mean([r.get("tqa_correct") for r in records]),
        **{key: _mean([r.get(key) for r in records]) for key in (
            "top_patch_on_object", "on_object_chance", "top_patch_touches_object", "touches_object_chance")},
        "tqa_top_source_is_answer": _mean([r.get("tqa_top_source_is_answer") for r in records]),
        "vqa_top_heads": head_order(maps["vqa_lpi"])[:k].tolist()}
    layer_rows = [{"layer": layer, **{f"{name}_share": round(float(layer_shares(value)[layer]), 4)
                                      for name, value in maps.items()}} for layer in range(maps["vqa_lpi"].shape[0])]
    write_table(run, "tables/layers.csv", layer_rows)
    lines = [f"{len(done)} questions ({len(skipped)} skipped); VQA accuracy {metrics['vqa_accuracy']:.3f}; "
             f"top {k} VQA heads (layer, head) {metrics['vqa_top_heads']}"]
    if "tqa_lpi" in maps:
        compared = compare_head_maps(maps["vqa_lpi"], maps["tqa_lpi"], k)
        metrics.update({"tqa_top_heads": compared["top_b"], "vqa_tqa_spearman": compared["spearman"],
                        "vqa_tqa_top_overlap": compared["top_overlap"],
                        "vqa_tqa_top_overlap_per_question": _per_question_overlap(done, k)})
        lines.append(f"TQA accuracy {metrics['tqa_accuracy']:.3f}; top {k} TQA heads {compared['top_b']}; "
                     f"top-{k} overlap {compared['top_overlap']:.2f}, Spearman of the mean maps "
                     f"{compared['spearman']:.3f}")
    for condition in ("vqa", "tqa"):
        if f"{condition}_ablation" in maps:
            check = compare_head_maps(maps[f"{condition}_lpi"], maps[f"{condition}_ablation"], k)
            metrics[f"{condition}_lpi_vs_ablation"] = {"spearman": check["spearman"],
                                                       "top_overlap": check["top_overlap"]}
            lines.append(f"{condition.upper()}: LPI vs zeroing each head, Spearman {check['spearman']:.3f}, "
                         f"top-{k} overlap {check['top_overlap']:.2f}")
    if metrics["top_patch_on_object"] is not None:
        lines.append(f"top patch of the top VQA head on the asked object (covered >= 50 %): "
                     f"{metrics['top_patch_on_object']:.3f} (a random patch: {metrics['on_object_chance']:.3f}); "
                     f"touching it: {metrics['top_patch_touches_object']:.3f} "
                     f"(random: {metrics['touches_object_chance']:.3f})")
    _plots(run, maps, k)
    metrics["skipped_inputs"] = skipped
    finish_run(run, metrics, "\n".join(lines), title="neuronscope · VQA vs textual QA: heads and patches")
    return RunResult("recipe vqa", str(run.path), metrics, lines)


__all__ = ["summarise_questions"]
