"""The neuron id space of a mixture-of-experts model, defined in this one place.

A neuron of an MoE model is a row ``(layer, expert, index)``:

- ``expert`` in ``0 .. E-1``: a routed expert of an MoE layer; ``index`` is a coordinate of the input of that
  expert's down projection (``0 .. d_expert-1``);
- ``expert`` in ``E .. E+S-1``: shared expert ``expert - E`` of that layer (DeepSeek, Qwen2/3.5-MoE, Llama-4),
  which every token uses;
- ``expert = -1``: a dense layer of the same model (DeepSeek's ``first_k_dense_replace`` layers, Qwen3-MoE's
  ``mlp_only_layers``, Llama-4's non-MoE layers): today's dense neuron ``(layer, index)``.

Neuron sets of MoE models are ``LongTensor [n, 3]`` of such rows; those of dense models stay ``[n, 2]``
``(layer, index)``. Scores over all neurons of an MoE model use one flat id space: each *unit* (a routed expert,
a shared expert or a dense layer) owns a contiguous block of ids, in the order layer, then expert id (dense layers:
their one unit). :class:`NeuronLayout` converts between rows and flat ids and is saved beside every score file.

Example:
    >>> layout = NeuronLayout.from_units([(0, -1, 24), (1, 0, 12), (1, 1, 12), (1, 2, 20)])
    >>> layout.n_neurons, layout.flat(torch.tensor([[1, 1, 3]])).tolist()
    (68, [39])
    >>> layout.rows(torch.tensor([39])).tolist()
    [[1, 1, 3]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from neuronscope.errors import InputError

DENSE = -1  #: the expert id of a dense layer's neurons


@dataclass(frozen=True, eq=False)
class NeuronLayout:
    """Units ``[U, 4]`` of ``(layer, expert, width, offset)`` rows; flat ids ``offset .. offset + width - 1``.

    Attributes:
        units: ``LongTensor [U, 4]`` sorted by (layer, expert), offsets contiguous from 0.
        n_routed: ``{layer: E}`` the number of routed experts of each MoE layer (ids ``>= E`` are shared).
    """

    units: torch.Tensor
    n_routed: dict[int, int]

    @classmethod
    def from_units(cls, units: Sequence[tuple[int, int, int]], n_routed: dict[int, int] | None = None
                   ) -> NeuronLayout:
        """Build from ``(layer, expert, width)`` triples (any order); ``n_routed`` defaults to ``max id + 1``
        over the non-negative ids of each layer (no shared experts)."""
        ordered = sorted((int(a), int(b), int(c)) for a, b, c in units)
        if len({(a, b) for a, b, _ in ordered}) != len(ordered):
            raise InputError("a neuron layout lists the same (layer, expert) unit twice")
        rows, offset = [], 0
        for layer, expert, width in ordered:
            if width <= 0:
                raise InputError(f"unit (layer {layer}, expert {expert}) has width {width}: widths must be > 0")
            rows.append((layer, expert, width, offset))
            offset += width
        if n_routed is None:
            n_routed = {}
            for layer, expert, _, _ in rows:
                if expert >= 0:
                    n_routed[layer] = max(n_routed.get(layer, 0), expert + 1)
        return cls(torch.tensor(rows, dtype=torch.long).reshape(-1, 4), dict(n_routed))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, NeuronLayout) and torch.equal(self.units, other.units)
                and self.n_routed == other.n_routed)

    __hash__ = None  # type: ignore[assignment]

    # -- sizes -------------------------------------------------------------------------------------------------
    @property
    def n_neurons(self) -> int:
        """All neurons of all units."""
        return int((self.units[:, 2]).sum()) if len(self.units) else 0

    @property
    def layers(self) -> list[int]:
        return sorted({int(layer) for layer in self.units[:, 0].tolist()})

    def unit_index(self, layer: int, expert: int) -> int:
        """Row of ``units`` of ``(layer, expert)``; raises :class:`InputError` naming the valid experts."""
        hits = ((self.units[:, 0] == layer) & (self.units[:, 1] == expert)).nonzero()
        if hits.numel() == 0:
            experts = self.units[self.units[:, 0] == layer, 1].tolist()
            raise InputError(f"layer {layer} has no expert {expert}: its units are {experts or 'none'} "
                             "(routed 0..E-1, shared E.., -1 for a dense layer)")
        return int(hits[0, 0])

    def width(self, layer: int, expert: int) -> int:
        return int(self.units[self.unit_index(layer, expert), 2])

    def block(self, layer: int, expert: int) -> slice:
        """Flat ids of one unit, as a slice."""
        _, _, width, offset = self.units[self.unit_index(layer, expert)].tolist()
        return slice(offset, offset + width)

    def layer_block(self, layer: int) -> slice:
        """Flat ids of all units of one layer (they are contiguous)."""
        rows = self.units[self.units[:, 0] == layer]
        if len(rows) == 0:
            raise InputError(f"layer {layer} has no neurons in this layout (layers: {self.layers})")
        return slice(int(rows[0, 3]), int(rows[-1, 3] + rows[-1, 2]))

    def is_shared(self, layer: int, expert: int) -> bool:
        return expert >= self.n_routed.get(layer, 0) and expert != DENSE

    # -- rows <-> flat ids -------------------------------------------------------------------------------------
    def check(self, neurons: torch.Tensor, name: str = "neurons") -> torch.Tensor:
        """``neurons [n, 3]`` as a LongTensor on CPU; raises :class:`InputError` for rows outside the layout."""
        neurons = torch.as_tensor(neurons).long().cpu()
        if neurons.dim() != 2 or neurons.shape[1] != 3:
            raise InputError(f"{name} of a mixture-of-experts model must be [n, 3] (layer, expert, index) rows "
                             f"(expert -1 for a dense layer), got shape {tuple(neurons.shape)}")
        self.flat(neurons)
        return neurons

    def flat(self, neurons: torch.Tensor) -> torch.Tensor:
        """Flat ids ``[n]`` of rows ``[n, 3]``."""
        neurons = torch.as_tensor(neurons).long().cpu().reshape(-1, 3)
        key_units = self.units[:, 0] * (1 << 32) + (self.units[:, 1] + 1)
        keys = neurons[:, 0] * (1 << 32) + (neurons[:, 1] + 1)
        position = torch.searchsorted(key_units, keys).clamp(max=max(len(self.units) - 1, 0))
        found = (key_units[position] == keys) if len(self.units) else torch.zeros_like(keys, dtype=torch.bool)
        width = self.units[position, 2]
        inside = found & (neurons[:, 2] >= 0) & (neurons[:, 2] < width)
        if not bool(inside.all()):
            bad = neurons[~inside][0].tolist()
            raise InputError(f"neuron {tuple(bad)} is not in this model: check the layer, the expert id (routed "
                             "0..E-1, shared E.., -1 for a dense layer) and the index (below the unit's width)")
        return self.units[position, 3] + neurons[:, 2]

    def rows(self, flat: torch.Tensor) -> torch.Tensor:
        """Rows ``[n, 3]`` (layer, expert, index) of flat ids ``[n]``."""
        flat = torch.as_tensor(flat).long().cpu().reshape(-1)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.n_neurons):
            raise InputError(f"flat neuron ids must be in [0, {self.n_neurons})")
        unit = torch.searchsorted(self.units[:, 3].contiguous(), flat, right=True) - 1
        return torch.stack([self.units[unit, 0], self.units[unit, 1], flat - self.units[unit, 3]], dim=1)

    # -- files -------------------------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``units`` as ``[layer, expert, width, offset]`` lists and ``n_routed``."""
        return {"units": self.units.tolist(), "n_routed": {str(k): v for k, v in self.n_routed.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NeuronLayout:
        units = torch.tensor(data["units"], dtype=torch.long).reshape(-1, 4)
        return cls(units, {int(k): int(v) for k, v in data.get("n_routed", {}).items()})
