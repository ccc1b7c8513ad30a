"""Capture activations at chosen sites, layers, positions and neurons during a forward or ``generate``.

Only what was asked for is kept: the selected positions (and neurons), detached unless gradients are wanted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.models.adapter import get_adapter
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.positions import CallState, Explicit, PositionSpec, normalise, per_call
from neuronscope.trace.sites import resolve_site, site_exists


class Capture:
    """Activations recorded by :func:`capture`.

    ``get(site, layer)`` → ``[batch, P, width]`` where P are the selected positions in call order (for
    ``"last"`` during ``generate``: the prompt's last position, then each step); ``positions(site, layer)`` →
    ``[batch, P]`` absolute positions; ``stack(site)`` → ``[batch, layers, P, width]``.
    """

    def __init__(self, sites: list[str], layers: list[int], explicit: Explicit | None, n_layers: int):
        self.n_layers = n_layers
        self.sites = sites
        self.layers = layers
        self._chunks: dict[tuple[str, int], list[torch.Tensor]] = {}
        self._positions: dict[tuple[str, int], list[torch.Tensor]] = {}
        self._explicit = explicit
        self._filled: dict[tuple[str, int], torch.Tensor] = {}

    def _record(self, key: tuple[str, int], values: torch.Tensor, absolute: torch.Tensor) -> None:
        self._chunks.setdefault(key, []).append(values)
        self._positions.setdefault(key, []).append(absolute)

    def _fill(self, key: tuple[str, int], values: torch.Tensor, mask: torch.Tensor, slots: torch.Tensor) -> None:
        """Explicit positions may arrive over several calls (``generate``): fill a ``[batch, k, width]`` buffer."""
        if key not in self._chunks:
            buffer = values.new_zeros(values.shape[0], slots.numel(), values.shape[-1])
            self._chunks[key] = [buffer]
            self._filled[key] = torch.zeros(values.shape[0], slots.numel(), dtype=torch.bool)
        buffer = self._chunks[key][0]
        if bool(mask.all()):  # the usual case: every position in this call (a plain forward)
            self._chunks[key][0] = values
        else:
            self._chunks[key][0] = torch.where(mask.to(values.device)[..., None], values, buffer)
        self._filled[key] |= mask

    def get(self, site: str = "neuron", layer: int | None = None) -> torch.Tensor:
        if layer is None:
            if len(self.layers) != 1:
                raise NeuronscopeError(f"this capture holds layers {self.layers}: name one, or use stack()")
            layer = self.layers[0]
        key = (site, layer % self.n_layers)
        if key not in self._chunks:
            raise NeuronscopeError(
                f"nothing captured at site '{site}', layer {layer}: captured sites {self.sites}, layers "
                f"{self.layers} (did the model run inside the capture block?)"
            )
        chunks = self._chunks[key]
        if self._explicit is not None:
            missing = ~self._filled[key] & self._explicit.valid.expand_as(self._filled[key])
            if bool(missing.any()):
                raise NeuronscopeError("some requested positions were never reached by the model's calls")
        device = chunks[0].device
        return torch.cat([chunk.to(device) for chunk in chunks], dim=1) if len(chunks) > 1 else chunks[0]

    def positions(self, site: str = "neuron", layer: int | None = None) -> torch.Tensor:
        """Absolute positions ``[batch, P]`` of ``get(site, layer)``'s columns."""
        layer = self.layers[0] if layer is None else layer % self.n_layers
        if self._explicit is not None:
            return self._explicit.positions
        return torch.cat(self._positions[(site, layer)], dim=1)

    def stack(self, site: str = "neuron", device: torch.device | str | None = None) -> torch.Tensor:
        """All captured layers of ``site``: ``[batch, layers, P, width]`` on ``device`` (default: the first's)."""
        tensors = [self.get(site, layer) for layer in self.layers]
        device = device or tensors[0].device
        return torch.stack([tensor.to(device) for tensor in tensors], dim=1)


@contextmanager
def capture(
    model: nn.Module,
    sites: str | Sequence[str] = "neuron",
    layers: int | Sequence[int] | None = None,
    positions: PositionSpec = "last",
    neurons: torch.Tensor | Sequence[int] | None = None,
    keep_grad: bool = False,
    to: torch.device | str | None = None,
) -> Iterator[Capture]:
    """Record activations while the block runs the model (a forward or ``generate``).

    Args:
        model: a Hugging Face causal LM or vision-language model.
        sites: one site name or several (see :mod:`neuronscope.trace.sites`). Default ``"neuron"``.
        layers: a layer, a list, or None for all layers (hybrids: all layers that have every requested site).
        positions: ``"last"`` (default), ``"all"``, ``"prompt"``, ``"generated"`` or explicit positions.
        neurons: keep only these coordinates of the site (e.g. a head's slice); None keeps all.
        keep_grad: keep the autograd graph (for gradient methods); otherwise values are detached.
        to: move captured values to this device (e.g. ``"cpu"`` to free GPU memory); default: where computed.

    Example:
        >>> with capture(model, layers=[0, 1]) as acts:
        ...     model(**batch)
        >>> acts.stack().shape  # [batch, 2, 1, d_ff]
    """
    adapter = get_adapter(model)
    site_list = [sites] if isinstance(sites, str) else list(sites)
    layer_list = adapter.resolve_layers(layers)
    if layers is None:
        layer_list = [layer for layer in layer_list if all(site_exists(adapter, s, layer) for s in site_list)]
    spec = normalise(positions)
    neuron_index = None if neurons is None else torch.as_tensor(neurons, dtype=torch.long)
    result = Capture(site_list, layer_list, spec if isinstance(spec, Explicit) else None, adapter.n_layers)
    handles = [resolve_site(adapter, site, layer) for site in site_list for layer in layer_list]
    for handle in handles:
        if neuron_index is not None and int(neuron_index.max()) >= handle.width:
            raise NeuronscopeError(
                f"neuron index {int(neuron_index.max())} is out of range for site '{handle.site}' "
                f"(width {handle.width})"
            )
    selection_on = per_call(spec, lambda call, device: (  # once per call and device
        torch.arange(call.batch, device=device)[:, None], None if neuron_index is None else neuron_index.to(device)))

    with HookSet(adapter) as hooks:
        for handle in handles:
            key = (handle.site, handle.layer)

            def record(tensor: torch.Tensor, call: CallState, key: tuple[str, int] = key) -> None:
                selection, local, rows, index = selection_on(call, tensor.device)
                if selection.empty:
                    return None
                values = tensor if selection.everything else tensor[rows, local]
                if index is not None:
                    values = values[..., index]
                values = values if keep_grad else values.detach().clone()
                if to is not None:
                    values = values.to(to)
                if selection.slots is not None:
                    result._fill(key, values, selection.valid, selection.slots)
                else:
                    result._record(key, values, selection.absolute)
                return None

            hooks.add(handle, record)
        yield result
