"""Plots of the in-context heads reproduction (``recipe icl``; docs/ICL.md): heads × layers maps, ablation bars
against random heads, per-demonstration bars, the two towers' scatter, the shallow merge by layer and the bias
before / after the mitigation. Each function takes plain numbers (lists or tensors) and returns a ``Figure``.

Example:
    >>> import torch
    >>> figure = head_maps_figure({"combined": torch.rand(4, 3)}, marked=torch.tensor([[2, 1]]))
    >>> len(figure.axes)      # one map and its colour bar
    2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from neuronscope.report.plots import _COLOURS, _figure, _style

__all__ = ["ablation_bars_figure", "bias_attention_figure", "bias_bars_figure", "demonstration_bars_figure",
           "head_maps_figure", "merge_lines_figure", "prompt_demonstrations_figure", "towers_scatter_figure"]


def _array(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def head_maps_figure(maps: Mapping[str, Any], marked: Any = None, title: str = "") -> Figure:
    """Heads × layers maps side by side (``name -> [layers, heads]``), the ``marked [n, 2]`` (layer, head) rows
    drawn as white rings (e.g. the top 1 %)."""
    figure = _figure((3.0 * len(maps) + 1.0, 3.8))
    marked_rows = _array(marked).reshape(-1, 2) if marked is not None else np.zeros((0, 2))
    for number, (name, values) in enumerate(maps.items()):
        grid = _array(values)
        axes = figure.add_subplot(1, len(maps), number + 1)
        limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        image = axes.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower",
                            interpolation="nearest")
        if len(marked_rows):
            axes.scatter(marked_rows[:, 1], marked_rows[:, 0], s=60, facecolors="none", edgecolors="black",
                         linewidths=1.4)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("head")
        axes.set_ylabel("layer" if number == 0 else "")
        axes.set_title(name)
        figure.colorbar(image, ax=axes, shrink=0.8)
        _style(axes)
    if title:
        figure.suptitle(title, fontsize=12)
    return figure


def ablation_bars_figure(groups: Sequence[Mapping[str, Any]], clean: float, ylabel: str = "ICL accuracy",
                         title: str = "Accuracy with heads zeroed at the last position") -> Figure:
    """Per head count ``n``: bars of the top heads of each ranking and of random heads (mean, with a min–max
    whisker), the clean accuracy as a line. ``groups``: ``{"n", "rankings": {name: value}, "random_mean",
    "random_min", "random_max"}``."""
    figure = _figure((5.6, 3.4))
    axes = figure.add_subplot()
    names = list(dict.fromkeys(name for group in groups for name in group["rankings"]))
    width = 0.8 / (len(names) + 1)
    for slot, name in enumerate([*names, "random"]):
        xs, heights, errors = [], [], [[], []]
        for position, group in enumerate(groups):
            xs.append(position + (slot - len(names) / 2) * width)
            if name == "random":
                mean = float(group["random_mean"])
                heights.append(mean)
                errors[0].append(mean - float(group["random_min"]))
                errors[1].append(float(group["random_max"]) - mean)
            else:
                heights.append(float(group["rankings"][name]))
        axes.bar(xs, heights, width=width, label=f"top ({name})" if name != "random" else "random (min-max)",
                 color=_COLOURS[slot % len(_COLOURS)], yerr=errors if name == "random" else None, capsize=3)
    axes.axhline(clean, color="#444444", linestyle="--", linewidth=1, label="clean")
    axes.set_xticks(range(len(groups)), [f"{group['n']} heads" for group in groups])
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(frameon=False, fontsize=8)
    _style(axes)
    return figure


def demonstration_bars_figure(heads: Sequence[Sequence[int]], slot_attention: Any, by_class: Any,
                              class_words: Sequence[str], pair_words: Sequence[str]) -> Figure:
    """Left: each head's mean attention from the last position to each demonstration slot's label
    (``slot_attention [k, n]``). Right: its mean logit minus at the label positions of each class's
    demonstrations (``by_class [k, C]``, logit minus ``pair_words[0] − pair_words[1]``)."""
    figure = _figure((9.0, 3.4))
    labels = [f"{layer}.{head}" for layer, head in heads]
    for panel, (values, legend, ylabel) in enumerate((
            (_array(slot_attention), [f"demo {j + 1}" for j in range(_array(slot_attention).shape[1])],
             "attention to the label"),
            (_array(by_class), [f"{word} demos" for word in class_words],
             f"logit minus ({pair_words[0]} − {pair_words[1]})"))):
        axes = figure.add_subplot(1, 2, panel + 1)
        width = 0.8 / max(values.shape[1], 1)
        for column in range(values.shape[1]):
            axes.bar(np.arange(len(labels)) + (column - (values.shape[1] - 1) / 2) * width, values[:, column],
                     width=width, label=legend[column], color=_COLOURS[column % len(_COLOURS)])
        axes.axhline(0, color="#888888", linewidth=0.8)
        axes.set_xticks(range(len(labels)), labels)
        axes.set_xlabel("head (layer.head)")
        axes.set_ylabel(ylabel)
        axes.legend(frameon=False, fontsize=8)
        _style(axes)
    return figure


def prompt_demonstrations_figure(heads: Sequence[Sequence[int]], attention: Any, logit_minus: Any,
                                 demo_classes: Sequence[int], class_words: Sequence[str],
                                 pair_words: Sequence[str]) -> Figure:
    """One prompt: per demonstration (bars coloured by its class), each head's attention to its label position
    (``attention [k, n]``) and the logit minus of what the head takes from there (``logit_minus [k, n]``)."""
    figure = _figure((9.0, 3.4))
    attention, logit_minus = _array(attention), _array(logit_minus)
    n_heads, n_demos = attention.shape
    colours = [_COLOURS[int(c) % len(_COLOURS)] for c in demo_classes]
    for panel, (values, ylabel) in enumerate(((attention, "attention to the label"),
                                              (logit_minus, f"logit minus ({pair_words[0]} − {pair_words[1]})"))):
        axes = figure.add_subplot(1, 2, panel + 1)
        width = 0.8 / n_demos
        for demo in range(n_demos):
            axes.bar(np.arange(n_heads) + (demo - (n_demos - 1) / 2) * width, values[:, demo], width=width,
                     color=colours[demo], edgecolor="white")
        axes.axhline(0, color="#888888", linewidth=0.8)
        axes.set_xticks(range(n_heads), [f"{layer}.{head}" for layer, head in heads])
        axes.set_xlabel("head (demonstrations left to right)")
        axes.set_ylabel(ylabel)
        _style(axes)
    handles = [Patch(color=_COLOURS[c % len(_COLOURS)], label=word) for c, word in enumerate(class_words)]
    figure.axes[0].legend(handles=handles, frameon=False, fontsize=8)
    return figure


def towers_scatter_figure(heads: Sequence[Sequence[int]], attention: Any, similarity: Mapping[str, Any],
                          correlation: Mapping[str, Sequence[float]], same_label: Sequence[float],
                          other_label: Sequence[float]) -> Figure:
    """One scatter per similarity (``name -> [B, k, n]``) of the attention ``[B, k, n]`` to each demonstration's
    label against it, one colour per head (its within-prompt correlation in the legend); last panel: mean
    attention on demonstrations of the query's class vs the others."""
    attention = _array(attention)
    figure = _figure((3.4 * (len(similarity) + 1), 3.4))
    for panel, (name, values) in enumerate(similarity.items()):
        values = _array(values)
        axes = figure.add_subplot(1, len(similarity) + 1, panel + 1)
        for slot, (layer, head) in enumerate(heads):
            axes.scatter(values[:, slot].ravel(), attention[:, slot].ravel(), s=8, alpha=0.6,
                         color=_COLOURS[slot % len(_COLOURS)],
                         label=f"{layer}.{head} (r {correlation[name][slot]:+.2f})")
        axes.set_xlabel(name.replace("_", " "))
        axes.set_ylabel("attention to the label" if panel == 0 else "")
        axes.legend(frameon=False, fontsize=7)
        _style(axes)
    axes = figure.add_subplot(1, len(similarity) + 1, len(similarity) + 1)
    positions = np.arange(len(heads))
    axes.bar(positions - 0.2, same_label, width=0.4, color=_COLOURS[0], label="query's class")
    axes.bar(positions + 0.2, other_label, width=0.4, color=_COLOURS[1], label="other classes")
    axes.set_xticks(positions, [f"{layer}.{head}" for layer, head in heads])
    axes.set_ylabel("mean attention per demonstration")
    axes.legend(frameon=False, fontsize=8)
    _style(axes)
    return figure


def merge_lines_figure(lines: Mapping[str, Sequence[float]], ylabel: str = "norm-weighted share",
                       title: str = "Shallow merge into the label and last positions") -> Figure:
    """One line per name over the layers (e.g. ``own_text_share``, ``other_text_share``, ``query_text_share``)."""
    figure = _figure((5.6, 3.4))
    axes = figure.add_subplot()
    for number, (name, values) in enumerate(lines.items()):
        axes.plot(range(len(values)), _array(values), marker="o", markersize=3, label=name.replace("_", " "),
                  color=_COLOURS[number % len(_COLOURS)])
    axes.set_xlabel("layer")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(frameon=False, fontsize=8)
    _style(axes)
    return figure


def bias_bars_figure(results: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Per bias kind (``kind -> ICLBias.as_dict()``) and metric (probability, rate): the bias before, after the
    mitigation on the in-context heads, and after the same mitigation on random heads (mean, min–max whisker)."""
    figure = _figure((4.2 * len(results), 3.4))
    for panel, (kind, result) in enumerate(results.items()):
        axes = figure.add_subplot(1, len(results), panel + 1)
        for slot, metric in enumerate(("probability", "rate")):
            randoms = [draw[metric] for draw in result["random"]] or [float("nan")]
            mean = float(np.mean(randoms))
            xs = slot + np.array([-0.27, 0.0, 0.27])
            axes.bar(xs[:2], [result["before"][metric], result["mitigated"][metric]], width=0.25,
                     color=[_COLOURS[0], _COLOURS[2]])
            axes.bar(xs[2], mean, width=0.25, color=_COLOURS[1],
                     yerr=[[mean - min(randoms)], [max(randoms) - mean]], capsize=3)
        axes.axhline(0, color="#888888", linewidth=0.8)
        axes.set_xticks([0, 1], ["p(favoured) − 1/C", "rate − 1/C"])
        axes.set_title(f"{kind} bias")
        handles = [Patch(color=_COLOURS[i], label=label)
                   for i, label in ((0, "before"), (2, "in-context heads re-weighted"), (1, "random (min-max)"))]
        axes.legend(handles=handles, frameon=False, fontsize=8)
        _style(axes)
    return figure


def bias_attention_figure(results: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Per bias kind: attention mass of the in-context heads (summed over heads) on the favoured class's label
    positions vs the others', per demonstration, and per demonstration slot, before and after the mitigation."""
    figure = _figure((4.2 * len(results), 3.4))
    for panel, (kind, result) in enumerate(results.items()):
        axes = figure.add_subplot(1, len(results), panel + 1)
        before, after = result["attention"]["before"], result["attention"]["after"]
        if kind == "recency":
            labels = [f"slot {j + 1}" for j in range(len(before["per_slot"]))]
            values = (before["per_slot"], after["per_slot"])
        else:
            labels = ["favoured / demo", "other / demo"]
            values = ([before["favoured_per_demo"], before["other_per_demo"]],
                      [after["favoured_per_demo"], after["other_per_demo"]])
        positions = np.arange(len(labels))
        axes.bar(positions - 0.2, values[0], width=0.4, color=_COLOURS[0], label="before")
        axes.bar(positions + 0.2, values[1], width=0.4, color=_COLOURS[2], label="re-weighted")
        axes.set_xticks(positions, labels)
        axes.set_ylabel("attention (sum over the heads)")
        axes.set_title(f"{kind}: attention to label positions")
        axes.legend(frameon=False, fontsize=8)
        _style(axes)
    return figure
