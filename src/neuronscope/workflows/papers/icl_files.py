"""The files of ``recipe icl`` beyond each result's own JSON: the prompts, the heads × layers maps as tensors, the
tables and the figures (each figure folder under ``plots/`` is one section of ``report.html``).

| file | what |
| --- | --- |
| ``prompts.json`` | every prompt set: text, query class, demonstration classes, label words |
| ``heads.safetensors`` | ``{lpi,ablation}_combined [layers, heads]``, ``{lpi,ablation}_per_label [C, layers, heads]`` |
| ``tables/heads.csv`` | every head: combined and per-label scores of both rankings, and its rank |
| ``tables/accuracy.csv`` | ICL accuracy of each prompt set (locate, evaluation, other data set) |
| ``tables/ablation.csv`` | accuracy and p(true class) with the top / random heads zeroed |
| ``tables/positions.csv``, ``tables/towers.csv``, ``tables/merge.csv``, ``tables/bias.csv`` | per-head projection, two towers, merge by layer, bias per condition |
| ``plots/1_in_context_heads/`` | heads × layers maps (LPI, ablation; combined and per predicted label), ablation bars |
| ``plots/2_demonstrations/`` | per-demonstration attention and logit-minus bars |
| ``plots/3_two_towers/`` | attention vs similarity scatter, same- vs other-label attention |
| ``plots/4_shallow_merge/`` | merge shares by layer |
| ``plots/5_bias/`` | bias before / after the mitigation, and attention mass on the label positions |
"""

from __future__ import annotations

from typing import Any

import torch

from neuronscope.workflows.common import write_png, write_table

HEADS, DEMOS, TOWERS, MERGE, BIAS = ("plots/1_in_context_heads", "plots/2_demonstrations", "plots/3_two_towers",
                                     "plots/4_shallow_merge", "plots/5_bias")


def write_icl_files(state: Any, by_lpi: Any, by_ablation: Any) -> None:
    """Write every file of the table above from the run's state (:class:`~.icl.ICLRun`) and results."""
    run, metrics = state.run, state.metrics
    run.write_json("prompts.json", state.prompts)
    rankings = {"lpi": by_lpi, "ablation": by_ablation}
    run.write_tensors("heads", {f"{name}_{part}": torch.tensor(getattr(result, part), dtype=torch.float32)
                                for name, result in rankings.items() for part in ("combined", "per_label")},
                      {"label_words": ",".join(by_lpi.label_words), "counts_per_label": str(by_lpi.counts)})
    _head_tables_and_maps(state, rankings)
    _ablation(state)
    positions = run.read_json("positions.json")
    towers = run.read_json("towers.json")
    _demonstrations(state, positions)
    _towers(state, towers)
    merge = metrics["merge"]
    shares = {name: merge[name] for name in ("own_text_share", "other_text_share", "query_text_share")}
    write_table(run, "tables/merge.csv", [{"layer": layer, **{name: merge[name][layer] for name in merge
                                                              if isinstance(merge[name], list)}}
                                          for layer in range(len(merge["own_text_share"]))])
    from neuronscope.report.icl_plots import merge_lines_figure

    write_png(run, f"{MERGE}/merge_by_layer.png", merge_lines_figure(shares))
    write_bias_files(run, metrics["bias"])


def write_bias_files(run: Any, results: dict[str, Any]) -> None:
    """``tables/bias.csv`` and the two bias figures of ``plots/5_bias/`` from ``{kind: ICLBias.as_dict()}``."""
    from neuronscope.report.icl_plots import bias_attention_figure, bias_bars_figure

    rows = []
    for kind, result in results.items():
        conditions = [("before", result["before"]), ("mitigated", result["mitigated"])]
        conditions += [(f"random {i}", draw) for i, draw in enumerate(result["random"])]
        rows += [{"kind": kind, "condition": name, **values} for name, values in conditions]
    write_table(run, "tables/bias.csv", rows)
    write_png(run, f"{BIAS}/bias_before_after.png", bias_bars_figure(results))
    write_png(run, f"{BIAS}/attention_on_label_positions.png", bias_attention_figure(results))


def _head_tables_and_maps(state: Any, rankings: dict[str, Any]) -> None:
    from neuronscope.report.icl_plots import head_maps_figure

    run, words = state.run, rankings["lpi"].label_words
    layers, heads = state.sizes
    marked = max(state.metrics["head_counts"])
    ranks = {}
    for name, result in rankings.items():
        order = result.top(layers * heads).tolist()
        ranks[name] = {tuple(row): rank + 1 for rank, row in enumerate(order)}
        maps = {"combined": torch.tensor(result.combined)}
        maps.update({f"{word}-heads": torch.tensor(result.per_label[c]) for c, word in enumerate(words)})
        title = f"In-context heads by {'LPI' if name == 'lpi' else 'ablation'} (top {marked} ringed)"
        write_png(run, f"{HEADS}/heads_{name}.png", head_maps_figure(maps, result.top(marked), title))
    rows = []
    for layer in range(layers):
        for head in range(heads):
            row: dict[str, Any] = {"layer": layer, "head": head}
            for name, result in rankings.items():
                row[f"{name}_rank"] = ranks[name][(layer, head)]
                row[f"{name}_combined"] = result.combined[layer][head]
                row.update({f"{name}_{word}": result.per_label[c][layer][head] for c, word in enumerate(words)})
            rows.append(row)
    write_table(run, "tables/heads.csv", rows)
    accuracy = [{"set": f"locate ({kind})", **values} for kind, values in state.metrics["locate_accuracy"].items()]
    accuracy += [{"set": f"evaluation ({kind})", "accuracy": value}
                 for kind, value in state.metrics["eval_accuracy"].items()]
    other = state.metrics.get("other_dataset")
    if other:
        accuracy += [{"set": f"{other['name']} ({kind})", **other[kind]} for kind in ("natural", "unrelated")]
    write_table(run, "tables/accuracy.csv", [{key: value for key, value in row.items() if not isinstance(value, list)}
                                             for row in accuracy])


def _ablation(state: Any) -> None:
    from neuronscope.report.icl_plots import ablation_bars_figure

    figures, groups, rows = state.metrics["ablation"], [], []
    words = state.words(state.metrics["label_kind"])
    for name, values in figures.items():
        if "accuracy" in values:
            rows.append({"condition": name, "accuracy": values["accuracy"], "p_true": values["p_true"],
                         **{f"predicted_{word}": share for word, share
                            in zip(words, values["predicted_share"], strict=True)}})
    for n in state.metrics["head_counts"]:
        summary = figures[f"random_{n}_summary"]
        groups.append({"n": n, "rankings": {name: figures[f"{name}_top_{n}"]["accuracy"] for name in ("lpi", "ablation")},
                       "random_mean": summary["mean"], "random_min": summary["min"], "random_max": summary["max"]})
    write_table(state.run, "tables/ablation.csv", rows)
    write_png(state.run, f"{HEADS}/ablation_vs_random.png", ablation_bars_figure(groups, figures["clean"]["accuracy"]))


def _demonstrations(state: Any, positions: dict[str, Any]) -> None:
    from neuronscope.report.icl_plots import demonstration_bars_figure, prompt_demonstrations_figure

    words = positions["label_words"]
    pair = [words[c] for c in positions["label_pair"]]
    attention = torch.tensor(positions["attention"])  # [B, k, n]
    slot_attention = attention.mean(0)
    rows = []
    for slot, head in enumerate(positions["heads"]):
        row = {"layer": head[0], "head": head[1], "label_share": positions["label_share"][slot],
               "mass_output_correlation": positions["mass_output_correlation"][slot]}
        row.update({f"logit_minus_at_{word}": value for word, value in zip(words, positions["mean_by_class"][slot],
                                                                           strict=True)})
        row.update({f"attention_demo_{j + 1}": float(value) for j, value in enumerate(slot_attention[slot])})
        rows.append(row)
    write_table(state.run, "tables/positions.csv", rows)
    write_png(state.run, f"{DEMOS}/mean_by_demonstration.png",
              demonstration_bars_figure(positions["heads"], slot_attention, positions["mean_by_class"], words, pair))
    write_png(state.run, f"{DEMOS}/first_prompt.png",
              prompt_demonstrations_figure(positions["heads"], positions["attention"][0], positions["logit_minus"][0],
                                           positions["demo_classes"][0], words, pair))


def _towers(state: Any, towers: dict[str, Any]) -> None:
    from neuronscope.report.icl_plots import towers_scatter_figure

    rows = []
    for slot, head in enumerate(towers["heads"]):
        rows.append({"layer": head[0], "head": head[1],
                     **{f"r_{name}": values[slot] for name, values in towers["correlation"].items()},
                     "same_label_attention": towers["same_label_attention"][slot],
                     "other_label_attention": towers["other_label_attention"][slot]})
    write_table(state.run, "tables/towers.csv", rows)
    shown = {name: towers["similarity"][name] for name in ("qk_text", "qk_positions", "embedding")
             if name in towers["similarity"]}
    write_png(state.run, f"{TOWERS}/attention_vs_similarity.png",
              towers_scatter_figure(towers["heads"], towers["attention"], shown, towers["correlation"],
                                    towers["same_label_attention"], towers["other_label_attention"]))
