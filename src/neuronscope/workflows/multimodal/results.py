"""What the multimodal-neurons workflow finds (Pan et al. 2024): per (image, concept) pair the top-k neurons, and
per concept the neurons ranked over its pairs; the files of a run folder.

Per concept (across images): ``sum`` = the sum of a neuron's kept scores over the concept's pairs (a neuron outside
a pair's top-k adds 0) and ``frequency`` = in how many of the concept's pairs it is in the top-k. Neurons are
ranked by ``sum`` (default) or ``frequency`` (ties broken by the other).

On a mixture-of-experts model the neurons are ``(layer, expert, index)`` rows (expert ``-1`` for a dense layer):
flat ids are those of the model's :class:`~neuronscope.models.moe.NeuronLayout` (:attr:`MultimodalNeurons.layout`),
``concepts.json`` / ``neurons.csv`` gain ``expert`` and ``kind`` (routed, shared, dense) columns, and the
``concepts.safetensors`` totals are ``[n_neurons]`` over the flat ids (the layout in its metadata). A dense model's
files are as they were.

Example:
    >>> found = MultimodalNeurons.load("runs/dogs")   # doctest: +SKIP
    >>> found.concept_neurons("dog", 10)              # [10, 2] (layer, index) rows; [10, 3] for MoE  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from neuronscope.aggregate.neurons import flat_to_neurons
from neuronscope.aggregate.select import SparseTopK
from neuronscope.errors import InputError
from neuronscope.results.neuron_layout import DENSE, NeuronLayout
from neuronscope.runs.folder import RunDir

RANK_BY = ("sum", "frequency")


@dataclass
class MultimodalNeurons:
    """What :func:`find_multimodal_neurons` found.

    Attributes:
        captions: per input image (dataset order), ``{"index", "id", "caption", "generated_ids", "targets",
            "skipped"}`` (``skipped`` is the reason, or None).
        pairs: per (image, target), ``{"index", "id", "concept", "word", "step", "token_id", "token",
            "position"}``; ``position`` is in the left-padded captioning batch (``prompt_len - 1 + step``).
        values: ``[n_pairs, k]`` the kept (top-k) scores, best first; ``flat_indices``: ``[n_pairs, k]``
            ``layer * d_ff + index`` (MoE: the flat ids of ``layout``).
        n_layers, d_ff: the model's layers and FFN width (the score grid of a dense model).
        meta: how the run was made.
        metrics: counts (images declared / captioned / skipped, pairs, concepts).
        layout: the neuron id space of a mixture-of-experts model (None for a dense model).
    """

    format: ClassVar[str] = "neuronscope.multimodal_neurons"

    captions: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    values: torch.Tensor
    flat_indices: torch.Tensor
    n_layers: int
    d_ff: int
    meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    layout: NeuronLayout | None = None

    @property
    def grid(self) -> tuple[int, int]:
        """What the flat ids address: ``(n_layers, d_ff)``, or ``(1, n_neurons)`` for an MoE model."""
        return (self.n_layers, self.d_ff) if self.layout is None else (1, self.layout.n_neurons)

    def rows(self, flat: torch.Tensor) -> torch.Tensor:
        """Neuron rows of flat ids ``[n]``: ``[n, 2]`` (layer, index), or ``[n, 3]`` (layer, expert, index)."""
        return flat_to_neurons(flat, self.d_ff) if self.layout is None else self.layout.rows(flat)

    @property
    def concepts(self) -> list[str]:
        """Concepts with at least one pair, sorted by number of pairs (descending), then name."""
        counts: dict[str, int] = {}
        for pair in self.pairs:
            counts[pair["concept"]] = counts.get(pair["concept"], 0) + 1
        return sorted(counts, key=lambda c: (-counts[c], c))

    def pair_rows(self, concept: str) -> list[int]:
        """Rows of :attr:`pairs` whose concept is ``concept``."""
        return [row for row, pair in enumerate(self.pairs) if pair["concept"] == concept]

    def pair_top_k(self, rows: Sequence[int] | None = None) -> SparseTopK:
        """The kept top-k of the given pair rows (default all) as a :class:`SparseTopK`."""
        rows = list(range(len(self.pairs))) if rows is None else list(rows)
        index = torch.as_tensor(rows, dtype=torch.long)
        return SparseTopK(self.values[index], self.flat_indices[index], *self.grid)

    def pair_neurons(self, row: int, k: int | None = None) -> torch.Tensor:
        """``[k, 2]`` (layer, index) of pair ``row``'s top-k (best first); ``[k, 3]`` for an MoE model."""
        flat = self.flat_indices[row] if k is None else self.flat_indices[row, :k]
        return self.rows(flat)

    def concept_totals(self, concept: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum [layers, d_ff], frequency LongTensor [layers, d_ff])`` of a concept over its pairs (MoE:
        ``[1, n_neurons]`` over the layout's flat ids)."""
        rows = self.pair_rows(concept)
        if not rows:
            raise InputError(f"concept {concept!r} has no pairs; known concepts: {', '.join(self.concepts)}")
        top = self.pair_top_k(rows)
        return top.sum(), top.frequency()

    def concept_ranking(self, concept: str, rank_by: str = "sum") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The concept's neurons (those selected in at least one pair), best first.

        Returns:
            ``(neurons [m, 2], sums [m], frequencies [m])`` (MoE: ``neurons [m, 3]``).
        """
        if rank_by not in RANK_BY:
            raise InputError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
        total, frequency = self.concept_totals(concept)
        flat_total, flat_freq = total.flatten(), frequency.flatten()
        selected = (flat_freq > 0).nonzero(as_tuple=True)[0]
        primary = flat_total[selected] if rank_by == "sum" else flat_freq[selected].to(flat_total.dtype)
        secondary = flat_freq[selected].to(flat_total.dtype) if rank_by == "sum" else flat_total[selected]
        # Stable two-key sort: secondary first, then primary; ties keep ascending flat index.
        order = torch.argsort(secondary, descending=True, stable=True)
        order = order[torch.argsort(primary[order], descending=True, stable=True)]
        chosen = selected[order]
        return self.rows(chosen), flat_total[chosen], flat_freq[chosen]

    def concept_neurons(self, concept: str, n: int | None = None, rank_by: str = "sum") -> torch.Tensor:
        """The concept's top-``n`` neurons ``[n, 2]`` (MoE: ``[n, 3]``; all selected ones when ``n`` is None)."""
        neurons = self.concept_ranking(concept, rank_by)[0]
        return neurons if n is None else neurons[:n]

    def as_dict(self) -> dict[str, Any]:
        """Counts and how the run was made (captions and pairs are in ``captions.json`` / ``pairs.json``)."""
        layout = {} if self.layout is None else {"layout": self.layout.as_dict()}
        return {"format": self.format, **{k: v for k, v in self.metrics.items() if k != "skipped_inputs"},
                "n_layers": self.n_layers, "d_ff": self.d_ff, **layout, "meta": self.meta}

    def summary(self) -> str:
        m = self.metrics
        return (f"{m.get('images_captioned', 0)} of {m.get('images_declared', 0)} images captioned "
                f"({m.get('images_skipped', 0)} skipped), {m.get('pairs', 0)} (image, concept) pairs, "
                f"{m.get('concepts', 0)} concepts: {', '.join(self.concepts[:10])}")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """A folder: ``result.json`` (counts, meta, captions, pairs) and ``pairs.safetensors``."""
        from neuronscope.results.io import write_json, write_safetensors

        folder = Path(path)
        write_safetensors(folder / "pairs.safetensors", {"values": self.values, "flat_indices": self.flat_indices})
        write_json(folder / "result.json", {**self.as_dict(), "metrics": self.metrics,
                                            "captions": self.captions, "pairs": self.pairs})
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MultimodalNeurons:
        """Read a saved result (:meth:`save`) or a finished run folder (its ledger, ``pairs``, ``config.json``)."""
        from neuronscope.results.io import read_json, read_safetensors

        saved = Path(path) / "result.json"
        if saved.is_file():
            data = read_json(saved, what="multimodal neurons file")
            tensors, _ = read_safetensors(Path(path) / "pairs.safetensors", what="multimodal pairs")
            return cls(data["captions"], data["pairs"], tensors["values"], tensors["flat_indices"],
                       int(data["n_layers"]), int(data["d_ff"]), meta=data["meta"], metrics=data["metrics"],
                       layout=_layout(data))
        run = RunDir.open(path)
        tensors, meta = run.read_tensors("pairs")
        config = run.read_json("config.json")
        captions = []
        for entry in sorted(run.ledger_entries(), key=lambda e: int(e["index"])):
            captions.append({"index": int(entry["index"]), **run.read_example(entry["key"])[1]})
        metrics = run.read_json("metrics.json") if run.exists("metrics.json") else {}
        return cls(captions, run.read_json("pairs.json"), tensors["values"], tensors["flat_indices"],
                   int(meta["n_layers"]), int(meta["d_ff"]), meta=config, metrics=metrics, layout=_layout(meta))


def _layout(data: dict[str, Any]) -> NeuronLayout | None:
    return NeuronLayout.from_dict(data["layout"]) if "layout" in data else None


def write_results(run: RunDir, result: MultimodalNeurons, model: nn.Module, processor: Any, *,
                  report_neurons: int = 100, rank_by: str = "sum") -> None:
    """Write captions, pairs, per-concept neurons (JSON + CSV with top tokens), metrics and plots into ``run``."""
    from neuronscope.explain.top_tokens import top_tokens
    from neuronscope.report.plots import layer_histogram_figure, score_histogram_figure

    run.write_json("captions.json", [
        {"id": c["id"], "caption": c.get("caption"), "concepts": [t["concept"] for t in c.get("targets", [])],
         "skipped": c.get("skipped")} for c in result.captions])
    layout = {} if result.layout is None else {"layout": result.layout.as_dict()}
    run.write_tensors("pairs", {"values": result.values, "flat_indices": result.flat_indices},
                      {"n_layers": result.n_layers, "d_ff": result.d_ff, **layout})
    run.write_json("pairs.json", result.pairs)
    concepts_out, rows, dense, sets = [], [], {}, {}
    for number, concept in enumerate(result.concepts):
        neurons, sums, freqs = result.concept_ranking(concept, rank_by)
        neurons, sums, freqs = neurons[:report_neurons], sums[:report_neurons], freqs[:report_neurons]
        tokens = top_tokens(model, neurons, processor, k=10).tokens if len(neurons) else []
        n_pairs = len(result.pair_rows(concept))
        entries = [{**_neuron_columns(result, row), "sum": float(s), "frequency": int(f), "top_tokens": tokens[r]}
                   for r, (row, s, f) in enumerate(zip(neurons.tolist(), sums, freqs, strict=True))]
        concepts_out.append({"concept": concept, "pairs": n_pairs, "rank_by": rank_by, "neurons": entries})
        rows.extend({"concept": concept, "rank": r + 1, **{**e, "top_tokens": " ".join(map(repr, e["top_tokens"]))}}
                    for r, e in enumerate(entries))
        total, frequency = result.concept_totals(concept)
        if result.layout is not None:  # [n_neurons] over the layout's flat ids
            total, frequency = total.reshape(-1), frequency.reshape(-1)
        dense[f"sum.{number}"], dense[f"frequency.{number}"] = total, frequency
        sets[concept] = neurons if result.layout is None else neurons[:, [0, 2]]  # (layer, index) per layer
    run.write_json("concepts.json", concepts_out)
    expert = [] if result.layout is None else ["expert", "kind"]
    run.write_csv("neurons.csv", rows, ["concept", "rank", "layer", *expert, "neuron", "sum", "frequency",
                                        "top_tokens"])
    if dense:
        run.write_tensors("concepts", dense, {"concepts": result.concepts, "rank_by": rank_by, **layout})
    run.write_json("metrics.json", result.metrics)
    run.write_skipped(result.metrics["skipped_inputs"])
    if sets:
        shown = dict(list(sets.items())[:6])
        run.write_png("plots/concept_neurons_per_layer.png",
                      layer_histogram_figure(shown, result.n_layers, title=f"Top-{report_neurons} neurons per layer"))
    if result.values.numel():
        run.write_png("plots/pair_scores.png", score_histogram_figure(
            result.values, title="Kept scores of all (image, concept) pairs", xlabel="contribution"))


def _neuron_columns(result: MultimodalNeurons, row: list[int]) -> dict[str, Any]:
    """``{layer, neuron}`` of a dense row; ``{layer, expert, kind, neuron}`` of an MoE row (kind: routed, shared,
    dense — expert -1)."""
    if result.layout is None:
        return {"layer": int(row[0]), "neuron": int(row[1])}
    layer, expert, index = (int(v) for v in row)
    kind = "dense" if expert == DENSE else "shared" if result.layout.is_shared(layer, expert) else "routed"
    return {"layer": layer, "expert": expert, "kind": kind, "neuron": index}
