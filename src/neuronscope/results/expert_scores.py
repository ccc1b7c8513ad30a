"""Scores of the neurons of a mixture-of-experts model: ``(layer, expert, index)`` neurons in one flat id space
(:class:`~neuronscope.models.moe.NeuronLayout`, saved with the scores), expert-level and layer-level sums.

Files: ``<path>.safetensors`` (values, optional sparse indices, bias scores) and ``<path>.json`` (the layout, how
the scores were made). Dense models keep :class:`~neuronscope.results.scores.NeuronScores` and its files as they are.

Example:
    >>> scores.top_k(5)                       # ([5, 3] (layer, expert, index) rows, [5] values)
    >>> scores.unit_scores()                  # [examples, targets, units]: each expert's total, biases included
    >>> scores.top_table(20)                  # rows for CSV / JSON: layer, expert, kind, neuron, score
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from neuronscope.errors import NeuronscopeError, ResultFileError
from neuronscope.results.io import read_json, read_safetensors, write_csv, write_json, write_safetensors
from neuronscope.results.neuron_layout import DENSE, NeuronLayout
from neuronscope.results.provenance import versions

TABLE_COLUMNS = ("layer", "expert", "kind", "neuron", "score")


@dataclass
class ExpertNeuronScores:
    """Scores of an MoE model's neurons.

    Attributes:
        values: dense ``[examples, targets, n_neurons]`` (flat ids of ``layout``), or sparse ``[examples, targets,
            k]`` with ``indices``.
        layout: the neuron id space.
        indices: None (dense) or the flat ids of sparse values ``[examples, targets, k]``.
        bias: ``[examples, targets, units]`` what each unit adds that belongs to no neuron (gpt-oss's expert
            biases times the router weight; output-projection biases), or None when nothing does.
        meta: how they were made.
    """

    format: ClassVar[str] = "neuronscope.expert_neuron_scores"

    values: torch.Tensor
    layout: NeuronLayout
    indices: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.dim() != 3:
            raise NeuronscopeError(f"expert scores are [examples, targets, neurons], got {tuple(self.values.shape)}")
        if self.indices is None and self.values.shape[-1] != self.layout.n_neurons:
            raise NeuronscopeError(f"dense expert scores need {self.layout.n_neurons} neurons per row, got "
                                   f"{self.values.shape[-1]}")
        self.meta.setdefault("versions", versions())

    @property
    def sparse(self) -> bool:
        return self.indices is not None

    @property
    def n_examples(self) -> int:
        return int(self.values.shape[0])

    def dense(self) -> torch.Tensor:
        """``[examples, targets, n_neurons]`` (zeros where a sparse result kept nothing)."""
        if not self.sparse:
            return self.values
        out = self.values.new_zeros(*self.values.shape[:2], self.layout.n_neurons)
        return out.scatter(-1, self.indices, self.values)

    def to_sparse(self, k: int) -> ExpertNeuronScores:
        """Keep the top-``k`` (signed, descending) neurons of each (example, target)."""
        if self.sparse:
            raise NeuronscopeError("these scores are sparse already")
        values, indices = self.values.topk(min(k, self.values.shape[-1]), dim=-1)
        return ExpertNeuronScores(values, self.layout, indices, self.bias, {**self.meta, "top_k_kept": k})

    def total(self) -> torch.Tensor:
        """Sum over examples and targets ``[n_neurons]``."""
        return self.dense().sum(dim=(0, 1))

    def top_k(self, k: int, example: int | None = None, target: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` neurons ``[k, 3]`` (layer, expert, index) and their values ``[k]`` of one (example, target) or
        of the sum over the ones not given."""
        dense = self.dense()
        if example is not None:
            dense = dense[example:example + 1]
        if target is not None:
            dense = dense[:, target:target + 1]
        values, flat = dense.sum(dim=(0, 1)).topk(min(k, dense.shape[-1]))
        return self.layout.rows(flat), values

    def as_grid(self) -> torch.Tensor:
        """``[examples, targets, 1, n_neurons]``: the scores as a one-"layer" grid, for the dense selection math
        (:mod:`neuronscope.aggregate.select`, QRNCA); turn its ``(0, flat)`` neuron rows back into
        ``(layer, expert, index)`` rows with :meth:`rows`."""
        return self.dense()[:, :, None, :]

    def rows(self, flat: torch.Tensor) -> torch.Tensor:
        """``(layer, expert, index)`` rows ``[n, 3]`` of flat ids ``[n]`` (or of ``[n, 2]`` ``(0, flat)`` rows)."""
        flat = torch.as_tensor(flat)
        return self.layout.rows(flat[:, -1] if flat.dim() == 2 else flat)

    def unit_scores(self) -> torch.Tensor:
        """Expert-level scores ``[examples, targets, units]`` (units = rows of ``layout.units``): each expert's
        (or dense layer's) neurons summed, plus its bias term — its total contribution."""
        dense = self.dense()
        units = self.layout.units
        unit_of = torch.repeat_interleave(torch.arange(len(units)), units[:, 2]).to(dense.device)
        out = dense.new_zeros(*dense.shape[:2], len(units)).index_add(2, unit_of, dense)
        return out if self.bias is None else out + self.bias.to(out)

    def layer_scores(self) -> torch.Tensor:
        """``[examples, targets, layers]`` (layers = ``layout.layers``): each layer's total."""
        per_unit = self.unit_scores()
        layers = self.layout.layers
        index = torch.tensor([layers.index(int(layer)) for layer in self.layout.units[:, 0].tolist()])
        return per_unit.new_zeros(*per_unit.shape[:2], len(layers)).index_add(2, index.to(per_unit.device),
                                                                              per_unit)

    def top_table(self, k: int, example: int | None = None, target: int | None = None) -> list[dict[str, Any]]:
        """The top-``k`` neurons as rows ``{layer, expert, kind, neuron, score}`` (kind: routed, shared, dense)."""
        rows, values = self.top_k(k, example, target)
        out = []
        for (layer, expert, index), value in zip(rows.tolist(), values.tolist(), strict=True):
            kind = "dense" if expert == DENSE else ("shared" if self.layout.is_shared(layer, expert) else "routed")
            out.append({"layer": layer, "expert": expert, "kind": kind, "neuron": index, "score": value})
        return out

    def write_top_csv(self, path: str | Path, k: int = 100) -> Path:
        """``path`` (CSV) with the top-``k`` neurons of the sum over examples and targets."""
        return write_csv(path, self.top_table(k), TABLE_COLUMNS)

    # -- protocol ----------------------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, "layout": self.layout.as_dict(), "sparse": self.sparse,
                "examples": self.n_examples, "targets": int(self.values.shape[1]),
                "n_neurons": self.layout.n_neurons, "meta": self.meta}

    def summary(self) -> str:
        kind = f"sparse, top {self.values.shape[-1]} kept" if self.sparse else "dense"
        units = self.layout.units
        experts = int((units[:, 1] != DENSE).sum())
        return (f"{self.meta.get('method', 'neuron')} scores of {self.n_examples} examples x "
                f"{int(self.values.shape[1])} targets over {self.layout.n_neurons} neurons of {experts} experts "
                f"and {len(units) - experts} dense layers in {len(self.layout.layers)} layers ({kind})")

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` and ``path.json`` atomically; returns the JSON path."""
        path = Path(path)
        tensors = {"values": self.values.detach()}
        if self.sparse:
            tensors["indices"] = self.indices.detach()
        if self.bias is not None:
            tensors["bias"] = self.bias.detach()
        write_safetensors(path.with_suffix(".safetensors"), tensors)
        return write_json(path.with_suffix(".json"), self.as_dict())

    @classmethod
    def load(cls, path: str | Path) -> ExpertNeuronScores:
        """Read scores saved by :meth:`save`; a missing or damaged file is a ``ResultFileError`` naming it."""
        path = Path(path)
        meta = read_json(path.with_suffix(".json"), what="expert scores metadata")
        if not isinstance(meta, dict) or meta.get("format") != cls.format:
            raise ResultFileError(f"{path.with_suffix('.json')} does not hold neuronscope expert neuron scores")
        tensors, _ = read_safetensors(path.with_suffix(".safetensors"), what="expert scores tensor file")
        if "values" not in tensors or (meta.get("sparse") and "indices" not in tensors):
            raise ResultFileError(f"{path.with_suffix('.safetensors')}: the scores tensors are incomplete")
        return cls(tensors["values"], NeuronLayout.from_dict(meta["layout"]), tensors.get("indices"),
                   tensors.get("bias"), meta["meta"])
