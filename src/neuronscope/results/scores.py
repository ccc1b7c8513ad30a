"""Typed neuron scores with ``save`` / ``load`` (safetensors + JSON metadata) and ``top_k``.

Scores are dense ``[examples, targets, layers, d_ff]`` or sparse (the top-k of each (example, target): flat
indices ``layer * d_ff + i`` and values ``[examples, targets, k]``), never pickled.

Example:
    >>> scores = NeuronScores(torch.randn(2, 1, 4, 32), meta={"method": "contribution"})
    >>> neurons, values = scores.top_k(5)          # over examples and targets summed
    >>> scores.save("runs/x/scores"); NeuronScores.load("runs/x/scores")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from neuronscope.errors import NeuronscopeError, ResultFileError
from neuronscope.results.io import read_json, read_safetensors, write_json, write_safetensors
from neuronscope.results.provenance import versions


@dataclass
class NeuronScores:
    """Scores of neurons.

    Attributes:
        values: dense ``[examples, targets, layers, d_ff]``, or sparse ``[examples, targets, k]``.
        indices: None (dense) or the flat indices ``layer * d_ff + i`` of sparse values, ``[examples, targets, k]``.
        shape: ``(layers, d_ff)`` of the neuron grid.
        meta: how they were made (model, revision, dtype, method, site, positions, targets, thresholds, versions).
    """

    format: ClassVar[str] = "neuronscope.neuron_scores"
    also_reads: ClassVar[tuple[str, ...]] = ()  #: older formats a subclass still reads

    values: torch.Tensor
    indices: torch.Tensor | None = None
    shape: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.indices is None:
            if self.values.dim() != 4:
                raise NeuronscopeError(
                    f"dense scores must be [examples, targets, layers, d_ff], got {tuple(self.values.shape)}"
                )
            self.shape = (int(self.values.shape[2]), int(self.values.shape[3]))
        elif self.shape is None or self.indices.shape != self.values.shape:
            raise NeuronscopeError("sparse scores need indices of the same shape as values and the grid shape")
        self.meta.setdefault("versions", versions())

    @property
    def sparse(self) -> bool:
        return self.indices is not None

    @property
    def n_examples(self) -> int:
        return int(self.values.shape[0])

    def dense(self) -> torch.Tensor:
        """``[examples, targets, layers, d_ff]`` (zeros where a sparse result kept nothing)."""
        if not self.sparse:
            return self.values
        layers, d_ff = self.shape
        out = self.values.new_zeros(*self.values.shape[:2], layers * d_ff)
        out.scatter_(-1, self.indices, self.values)
        return out.view(*self.values.shape[:2], layers, d_ff)

    def to_sparse(self, k: int) -> NeuronScores:
        """Keep the top-``k`` (signed, descending) neurons of each (example, target)."""
        if self.sparse:
            raise NeuronscopeError("these scores are sparse already")
        flat = self.values.flatten(2)
        values, indices = flat.topk(min(k, flat.shape[-1]), dim=-1)
        return NeuronScores(values, indices, self.shape, {**self.meta, "top_k_kept": k})

    def total(self) -> torch.Tensor:
        """Sum over examples and targets ``[layers, d_ff]``."""
        return self.dense().sum(dim=(0, 1))

    def grid(self, n_layers: int | None = None, absolute: bool = False) -> torch.Tensor:
        """Scores summed over examples and targets on the model's full grid ``[n_layers, d_ff]`` (float32).

        Methods run on some ``layers`` return those layers only (listed in ``meta["layers"]``); they are put back
        in place here, other layers 0. ``absolute`` sums ``|score|`` (e.g. CNA differences of either sign).

        Example:
            >>> contribution(model, batch, targets, layers=[5, 6]).grid(n_layers=30)   # rows 5, 6 filled
        """
        dense = self.dense().float()
        summed = (dense.abs() if absolute else dense).sum(dim=(0, 1))  # [listed layers, d_ff]
        layers = self.meta.get("layers")
        if layers is None:
            layers = list(range(summed.shape[0]))
        if len(layers) != summed.shape[0]:
            raise NeuronscopeError(f"scores have {summed.shape[0]} layers but their meta lists {len(layers)}")
        out = torch.zeros(n_layers if n_layers is not None else max(layers) + 1, summed.shape[1])
        out[torch.as_tensor(layers, dtype=torch.long)] = summed.cpu()
        return out

    def top_k(self, k: int, example: int | None = None, target: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` neurons ``[k, 2]`` (layer, index) and their values ``[k]`` of one (example, target) or of
        the sum over the ones not given. Rows name the model's layers: a method run on some ``layers`` lists them
        in ``meta["layers"]`` (its layer axis), and the axis slot is mapped back to that layer here.

        Example:
            >>> contribution(model, batch, targets, layers=[5, 6]).top_k(1)[0]   # tensor([[6, 17]]): layer 6
        """
        dense = self.dense()
        if example is not None:
            dense = dense[example:example + 1]
        if target is not None:
            dense = dense[:, target:target + 1]
        grid = dense.sum(dim=(0, 1))
        values, flat = grid.flatten().topk(min(k, grid.numel()))
        d_ff = grid.shape[1]
        slots = flat // d_ff
        layers = self.meta.get("layers")
        if layers is not None:
            if len(layers) != grid.shape[0]:
                raise NeuronscopeError(f"scores have {grid.shape[0]} layers but their meta lists {len(layers)}")
            slots = torch.as_tensor(layers, dtype=torch.long)[slots]
        return torch.stack([slots, flat % d_ff], dim=1), values

    def as_dict(self) -> dict[str, Any]:
        """Shape, sparsity and how the scores were made (the tensors stay in the safetensors file)."""
        return {"format": self.format, "shape": list(self.shape), "sparse": self.sparse,
                "examples": self.n_examples, "targets": int(self.values.shape[1]), "meta": self.meta}

    def summary(self) -> str:
        layers, d_ff = self.shape
        kind = f"sparse, top {self.values.shape[-1]} kept" if self.sparse else "dense"
        return (f"{self.meta.get('method', 'neuron')} scores of {self.n_examples} examples x "
                f"{int(self.values.shape[1])} targets over {layers} x {d_ff} neurons ({kind})")

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` (tensors) and ``path.json`` (metadata), atomically; returns the JSON path."""
        path = Path(path)
        tensors = {"values": self.values.detach()}
        if self.sparse:
            tensors["indices"] = self.indices.detach()
        write_safetensors(path.with_suffix(".safetensors"), tensors)
        return write_json(path.with_suffix(".json"), self.as_dict())

    @classmethod
    def load(cls, path: str | Path) -> NeuronScores:
        """Read scores saved by :meth:`save`; a missing or damaged file is a ``ResultFileError`` naming it."""
        path = Path(path)
        json_path = path.with_suffix(".json")
        meta = read_json(json_path, what="scores metadata")
        if not isinstance(meta, dict) or meta.get("format") not in (cls.format, *cls.also_reads):
            raise ResultFileError(f"{json_path} does not hold neuronscope {cls.format.split('.')[-1]}; pass the path that "
                                  "scores were saved to")
        tensors, _ = read_safetensors(path.with_suffix(".safetensors"), what="scores tensor file")
        if "values" not in tensors or (meta.get("sparse") and "indices" not in tensors):
            raise ResultFileError(f"{path.with_suffix('.safetensors')}: the scores tensors are incomplete; rerun "
                                  "the step that wrote them")
        return cls(tensors["values"], tensors.get("indices"), tuple(meta["shape"]), meta["meta"])
