"""Interventions as context managers: set, scale (suppress = ×0, amplify = ×2), add, or patch activations at
chosen sites, layers, neurons/heads and positions, during a forward or ``generate``.

Example:
    >>> neurons = torch.tensor([[3, 17], [5, 2]])          # (layer, index) rows
    >>> with intervene(model, suppress(neurons)):          # zero them at the last position of every call
    ...     out = model.generate(**batch, max_new_tokens=5)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.models.devices import on_device
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.positions import CallState, PositionSpec, normalise, select
from neuronscope.trace.sites import resolve_site

OPS = ("set", "scale", "add", "patch")


@dataclass(frozen=True)
class Intervention:
    """One change at one site of one layer.

    Attributes:
        site: a site name (``"neuron"``, ``"attn"``, ``"resid_post"``, ...).
        layer: the decoder layer.
        op: ``"set"`` (replace by ``value``), ``"scale"`` (multiply by ``value``), ``"add"`` (add ``value``),
            ``"patch"`` (replace by ``value [batch, P, n]``, e.g. captured from another run, P = selected positions).
        value: a number, or a tensor broadcastable to ``[batch, P, n]`` (``[n]`` for one value per coordinate).
        neurons: coordinates of the site to change ``[n]``; None = all of them.
        positions: a position spec (see :mod:`neuronscope.trace.positions`); default ``"last"``.
    """

    site: str
    layer: int
    op: str
    value: float | torch.Tensor
    neurons: torch.Tensor | None = None
    positions: PositionSpec = "last"

    def __post_init__(self) -> None:
        check_change(self.op, self.value)


def check_change(op: str, value: float | torch.Tensor) -> None:
    """An intervention's op is one of :data:`OPS` and its value finite (:class:`InputError` otherwise)."""
    if op not in OPS:
        raise InputError(f"unknown intervention op '{op}': use one of {', '.join(OPS)}")
    finite = math.isfinite(value) if isinstance(value, (int, float)) else bool(torch.isfinite(value).all())
    if not finite:
        raise InputError(f"intervention value must be finite, got {value}")


class _Placed:
    """One intervention's index tensors on the device of the tensor it changes, made without making the host wait:
    the neuron index and a tensor value once per device, the selected (row, position) pairs at each call, all
    through pinned memory (a copy from ordinary host memory waits for everything queued on the GPU first, which
    during ``generate`` would be once per layer and step)."""

    def __init__(self, item: Intervention, index: torch.Tensor | None):
        self.item, self.index = item, index
        self.spec = normalise(item.positions)
        self.everywhere = _everywhere(item)
        self._constant: dict[str, tuple] = {}

    def constants(self, device: torch.device, width: int) -> tuple[torch.Tensor, object]:
        """``(coordinates, value)`` on ``device``."""
        key = str(device)
        if key not in self._constant:
            coords = torch.arange(width) if self.index is None else self.index
            value = self.item.value
            if isinstance(value, torch.Tensor):
                value = on_device(value, device)
            self._constant[key] = (on_device(coords, device), value)
        return self._constant[key]

    def pairs(self, call: CallState, device: torch.device) -> tuple | None:
        """``(rows, positions, columns)`` on ``device`` of this call's selected pairs, or None if none is."""
        selection = select(self.spec, call)
        if selection.empty:
            return None
        rows, cols = selection.valid.nonzero(as_tuple=True)
        placed = on_device(torch.stack([rows, selection.local[rows, cols], cols]), device)
        return placed[0], placed[1], placed[2]


def _everywhere(item: Intervention) -> bool:
    """Whether the intervention changes every position of every call by the same values (``positions="all"``, a
    number or one value per coordinate): then it is a column operation, with no per-call host work."""
    value = item.value
    return normalise(item.positions) == "all" and (not isinstance(value, torch.Tensor) or value.dim() <= 1)


def _apply_everywhere(tensor: torch.Tensor, placed: _Placed) -> torch.Tensor:
    """The columns ``coords`` of every position changed at once (same values as :func:`_apply`'s pairs)."""
    coords, value = placed.constants(tensor.device, tensor.shape[-1])
    if isinstance(value, torch.Tensor):
        value = value.to(dtype=tensor.dtype)
    if placed.item.op in ("set", "patch"):
        if not isinstance(value, torch.Tensor):
            return tensor.index_fill(-1, coords, value)
        new = value.expand(*tensor.shape[:-1], coords.numel())
    else:
        current = tensor.index_select(-1, coords)
        new = current * value if placed.item.op == "scale" else current + value
    return tensor.index_copy(-1, coords, new)


def _apply(tensor: torch.Tensor, placed: _Placed, call: CallState) -> torch.Tensor:
    if placed.everywhere:
        return _apply_everywhere(tensor, placed)
    pairs = placed.pairs(call, tensor.device)
    if pairs is None:
        return tensor
    rows, positions, cols = pairs
    coords, value = placed.constants(tensor.device, tensor.shape[-1])
    item = placed.item
    out = tensor.clone()
    current = out[rows[:, None], positions[:, None], coords[None, :]]  # [N, n]
    if isinstance(value, torch.Tensor):
        value = value.to(dtype=tensor.dtype)
        if value.dim() == 3:  # [batch, P, n] aligned with the selection
            value = value[rows, cols]
        elif value.dim() == 2:  # [batch, n]
            value = value[rows]
    if item.op == "set" or item.op == "patch":
        new = torch.broadcast_to(torch.as_tensor(value, device=tensor.device, dtype=tensor.dtype), current.shape)
    elif item.op == "scale":
        new = current * value
    else:
        new = current + value
    out[rows[:, None], positions[:, None], coords[None, :]] = new
    return out


def install(hooks: HookSet, adapter: ModelAdapter, interventions: Sequence[Intervention]) -> None:
    """Add the hooks of ``interventions`` to an open :class:`HookSet` (one hook per site and layer); expert and
    routing interventions of MoE models go to :mod:`neuronscope.trace.expert_interventions`."""
    experts = [item for item in interventions if not isinstance(item, Intervention)]
    if experts:
        from neuronscope.trace.expert_interventions import install_experts

        install_experts(hooks, adapter, experts)
        interventions = [item for item in interventions if isinstance(item, Intervention)]
    grouped: dict[tuple[str, int], list[Intervention]] = {}
    for item in interventions:
        normalise(item.positions)  # fail early on a bad spec
        grouped.setdefault((item.site, adapter.check_layer(item.layer)), []).append(item)
    for (site, layer), items in grouped.items():
        handle = resolve_site(adapter, site, layer)
        placed = []
        for item in items:
            index = None if item.neurons is None else torch.as_tensor(item.neurons, dtype=torch.long).reshape(-1)
            if index is not None and index.numel() and (int(index.max()) >= handle.width or int(index.min()) < 0):
                raise NeuronscopeError(
                    f"neuron index out of range for site '{site}' at layer {layer}: width is {handle.width}"
                )
            placed.append(_Placed(item, None if index is None else index.cpu()))

        def change(tensor: torch.Tensor, call: CallState, placed=placed) -> torch.Tensor:
            for one in placed:
                tensor = _apply(tensor, one, call)
            return tensor

        hooks.add(handle, change)


@contextmanager
def intervene(model: nn.Module, interventions: Intervention | Sequence[Intervention]) -> Iterator[None]:
    """Apply ``interventions`` to every forward run inside the block; hooks are removed on exit, also on error.

    Interventions at ``positions="all"`` with a number (or one value per neuron) are one column operation per
    call, with no host work; a set of only those is declared graph-safe, so that
    :func:`~neuronscope.trace.decode.greedy_generate` still replays its decode steps from a CUDA graph."""
    adapter = get_adapter(model)
    items = list(interventions) if isinstance(interventions, Iterable) else [interventions]
    # the same device work at every call (positions "all", fixed values): CUDA-graph decoding may replay it
    steady = all(isinstance(item, Intervention) and _everywhere(item) for item in items)
    with HookSet(adapter, graph_safe=steady) as hooks:
        install(hooks, adapter, items)
        yield


def _by_layer(neurons: torch.Tensor) -> dict[int, torch.Tensor]:
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    if neurons.dim() != 2 or neurons.shape[1] != 2:
        raise NeuronscopeError(f"neurons must be a [n, 2] tensor of (layer, index) rows, got {tuple(neurons.shape)}")
    return {int(layer): neurons[neurons[:, 0] == layer, 1] for layer in neurons[:, 0].unique().tolist()}


def _expert_rows(neurons: torch.Tensor) -> bool:
    """``[n, 3]`` (layer, expert, index) rows of an MoE model (see :mod:`neuronscope.results.neuron_layout`)."""
    neurons = torch.as_tensor(neurons)
    return neurons.dim() == 2 and neurons.shape[1] == 3


def _for_experts(neurons: torch.Tensor, op: str, value, positions: PositionSpec, site: str) -> list:
    from neuronscope.trace.expert_interventions import expert_neuron_interventions

    if site != "neuron":
        raise NeuronscopeError(f"(layer, expert, index) rows are expert neurons at the 'neuron' site, not '{site}'")
    return expert_neuron_interventions(neurons, op, value, positions)


def scale_neurons(
    neurons: torch.Tensor, factor: float, positions: PositionSpec = "last", site: str = "neuron"
) -> list[Intervention]:
    """Multiply neurons ``[n, 2]`` (layer, index) by ``factor`` at ``positions`` (MoE models: ``[n, 3]``
    (layer, expert, index) rows, for the tokens routed to each expert)."""
    if _expert_rows(neurons):
        return _for_experts(neurons, "scale", float(factor), positions, site)
    return [Intervention(site, layer, "scale", float(factor), index, positions)
            for layer, index in _by_layer(neurons).items()]


def suppress(neurons: torch.Tensor, positions: PositionSpec = "last", site: str = "neuron") -> list[Intervention]:
    """Zero neurons ``[n, 2]`` at ``positions`` (the papers' suppression)."""
    return scale_neurons(neurons, 0.0, positions, site)


def amplify(
    neurons: torch.Tensor, factor: float = 2.0, positions: PositionSpec = "last", site: str = "neuron"
) -> list[Intervention]:
    """Multiply neurons ``[n, 2]`` by ``factor`` (default ×2, the papers' boosting) at ``positions``."""
    return scale_neurons(neurons, factor, positions, site)


def set_neurons(
    neurons: torch.Tensor, values: float | torch.Tensor, positions: PositionSpec = "last", site: str = "neuron"
) -> list[Intervention]:
    """Set neurons ``[n, 2]`` to ``values`` (a number, or one per neuron ``[n]`` in the given order)."""
    if _expert_rows(neurons):
        return _for_experts(neurons, "set", values, positions, site)
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    out = []
    for layer in neurons[:, 0].unique().tolist():
        rows = neurons[:, 0] == layer
        value = values[rows] if isinstance(values, torch.Tensor) and values.dim() > 0 else values
        out.append(Intervention(site, layer, "set", value, neurons[rows, 1], positions))
    return out


def patch_neurons(
    neurons: torch.Tensor, source: torch.Tensor, positions: PositionSpec = "last", site: str = "neuron"
) -> list[Intervention]:
    """Replace neurons ``[n, 2]`` by values from another run: ``source [batch, P, n]`` in the order of ``neurons``."""
    if _expert_rows(neurons):
        return _for_experts(neurons, "patch", source, positions, site)
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    out = []
    for layer in neurons[:, 0].unique().tolist():
        rows = (neurons[:, 0] == layer).nonzero(as_tuple=True)[0]
        out.append(Intervention(site, layer, "patch", source[..., rows], neurons[rows, 1], positions))
    return out


def scale_heads(
    model: nn.Module, heads: torch.Tensor | Sequence[tuple[int, int]], factor: float, positions: PositionSpec = "all"
) -> list[Intervention]:
    """Multiply attention heads ``[n, 2]`` (layer, head) by ``factor`` at the attention output projection's input
    (the head's slice of ``o_proj``'s input): 0 ablates, 2 doubles the head's write to the residual stream."""
    adapter = get_adapter(model)
    heads = torch.as_tensor(heads, dtype=torch.long).reshape(-1, 2)
    out = []
    for layer in heads[:, 0].unique().tolist():
        slices = [adapter.head_slice(int(h), layer) for h in heads[heads[:, 0] == layer, 1].tolist()]
        columns = [torch.arange(part.start, part.stop) for part in slices]
        out.append(Intervention("attn", layer, "scale", factor, torch.cat(columns), positions))
    return out


def ablate_heads(
    model: nn.Module, heads: torch.Tensor | Sequence[tuple[int, int]], positions: PositionSpec = "all"
) -> list[Intervention]:
    """Zero attention heads ``[n, 2]`` (layer, head) at the attention output projection's input."""
    return scale_heads(model, heads, 0.0, positions)
