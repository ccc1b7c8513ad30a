"""Random expert-neuron baselines for PCR and causal-effect comparisons on mixture-of-experts models (pure math).

A located set of expert neurons is compared with random sets drawn with the same **layer × expert** distribution:
``match="unit"`` (default) draws, in every (layer, expert) unit of the located set, as many distinct neurons of
that unit as the set has there — the random neurons sit in the same experts, so routing (which tokens reach the
expert) is matched too; ``match="layer"`` draws, in every layer, as many neurons uniformly among all of the layer's
neurons (every routed and shared expert, or the dense layer) — a baseline that does not hold the experts fixed.
Dense models use :func:`neuronscope.measure.baselines.random_neurons_like` (same per-layer rule).

Example:
    >>> layout = NeuronLayout.from_units([(1, e, 12) for e in range(4)])      # get_adapter(model).moe.layout
    >>> located = torch.tensor([[1, 3, 7], [1, 3, 9], [1, 0, 2]])
    >>> draws = random_expert_neurons_like(located, layout, n_draws=4, seed=1, exclude_given=True)
    >>> draws.shape, draws[0, :, :2].tolist()
    (torch.Size([4, 3, 3]), [[1, 0], [1, 3], [1, 3]])
"""

from __future__ import annotations

import torch
from torch import Tensor

from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.results.neuron_layout import NeuronLayout

MATCHES = ("unit", "layer")

__all__ = ["MATCHES", "random_expert_neurons_like"]


def random_expert_neurons_like(
    neurons: Tensor,
    layout: NeuronLayout,
    *,
    match: str = "unit",
    n_draws: int = 1,
    seed: int = 0,
    generator: torch.Generator | None = None,
    exclude: Tensor | None = None,
    exclude_given: bool = False,
) -> Tensor:
    """Random sets of ``(layer, expert, index)`` neurons distributed like ``neurons`` (see the module docstring).

    Args:
        neurons: ``[n, 3]`` rows of the located set.
        layout: the model's neuron layout (``get_adapter(model).moe.layout``).
        match: ``"unit"`` (same count per (layer, expert), default) or ``"layer"`` (same count per layer).
        n_draws: how many random sets. Default 1.
        seed: seed of a fresh CPU generator (default 0). Ignored when ``generator`` is given.
        generator: a ``torch.Generator`` to draw from (advances it).
        exclude: ``[m, 3]`` neurons never to draw.
        exclude_given: also exclude ``neurons`` themselves.

    Returns:
        ``LongTensor [n_draws, n, 3]``; within a draw, rows are ordered by flat id (layer, expert, index).

    Raises:
        InputError: rows outside the layout, a bad ``match``. NeuronscopeError: a unit or layer has fewer allowed
        neurons than it needs.
    """
    if match not in MATCHES:
        raise InputError(f"match must be one of {', '.join(MATCHES)}, got {match!r}")
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 0:
        raise NeuronscopeError(f"n_draws must be a non-negative integer, got {n_draws!r}")
    neurons = layout.check(neurons)
    generator = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    n = int(neurons.shape[0])
    if n == 0 or n_draws == 0:
        return torch.empty(n_draws, n, 3, dtype=torch.long)
    blocked = torch.zeros(layout.n_neurons, dtype=torch.bool)
    if exclude is not None:
        blocked[layout.flat(layout.check(exclude, name="exclude"))] = True
    if exclude_given:
        blocked[layout.flat(neurons)] = True
    if match == "unit":
        groups = {(layer, expert): layout.block(layer, expert) for layer, expert in neurons[:, :2].tolist()}
        counts = {key: int(((neurons[:, 0] == key[0]) & (neurons[:, 1] == key[1])).sum()) for key in groups}
    else:
        groups = {(layer,): layout.layer_block(layer) for layer in neurons[:, 0].tolist()}
        counts = {key: int((neurons[:, 0] == key[0]).sum()) for key in groups}
    picks = []
    for key in sorted(groups):
        block, count = groups[key], counts[key]
        allowed = ~blocked[block]
        if count > int(allowed.sum()):
            where = f"layer {key[0]}, expert {key[1]}" if len(key) == 2 else f"layer {key[0]}"
            raise NeuronscopeError(f"{where} needs {count} random neurons but only {int(allowed.sum())} are not "
                                   "excluded; exclude fewer neurons or compare with a smaller set")
        # Uniform without replacement: the `count` smallest of i.i.d. uniform keys; excluded keys are 2.
        keys = torch.rand(n_draws, block.stop - block.start, generator=generator)
        keys[:, ~allowed] = 2.0
        picks.append(keys.topk(count, dim=-1, largest=False).indices + block.start)
    flat = torch.cat(picks, dim=1).sort(dim=-1).values  # [n_draws, n]
    return layout.rows(flat.reshape(-1)).view(n_draws, n, 3)
