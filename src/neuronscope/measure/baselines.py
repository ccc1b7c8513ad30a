"""Random-neuron baselines: sets of the same size and layer distribution as a located set (mixture-of-experts
models: the same layer × expert distribution, :func:`random_sets_like`).

A located set of neurons is only meaningful if intervening on it does more than intervening on random
neurons drawn the same way. Both Pan et al. 2024 (causal effect against random neurons) and Chen, Dejl &
Toni 2024 (PCR of key vs. random neurons) compare with such baselines. Matching the layer distribution
matters: late-layer neurons move the output more than early ones, whatever their identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from neuronscope.aggregate.neurons import check_neurons, neurons_to_flat
from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.measure.metrics import Summary, summarise
from neuronscope.results.neuron_layout import NeuronLayout

__all__ = ["random_neurons_like", "random_sets_like", "summarise_draws"]


def random_neurons_like(
    neurons: Tensor,
    d_ff: int,
    *,
    n_draws: int = 1,
    seed: int = 0,
    generator: torch.Generator | None = None,
    exclude: Tensor | None = None,
    exclude_given: bool = False,
    n_layers: int | None = None,
) -> Tensor:
    """Random neuron sets with the same number of neurons in each layer as ``neurons``.

    Each draw picks, in every layer l, as many distinct indices as ``neurons`` has in l, uniformly among the
    layer's indices that are not excluded. Draws are independent of each other.

    Args:
        neurons: ``[n, 2]`` (layer, index) rows of the located set.
        d_ff: FFN width (indices are drawn from ``0 .. d_ff - 1``).
        n_draws: how many random sets. Default 1.
        seed: seed of a fresh CPU generator (default 0: reproducible). Ignored when ``generator`` is given.
        generator: a `torch.Generator` to draw from (advances it).
        exclude: ``[m, 2]`` neurons never to draw (e.g. all key neurons of every query).
        exclude_given: also exclude ``neurons`` themselves. Default False.
        n_layers: number of layers, only to validate ``neurons``.

    Returns:
        ``LongTensor [n_draws, n, 2]``; within a draw, rows are ordered by layer, then index (not in the
        order of ``neurons``).

    Raises:
        InputError: bad neuron sets. NeuronscopeError: a layer has fewer allowed indices than it needs.

    Example:
        >>> located = torch.tensor([[3, 10], [3, 11], [5, 0]])
        >>> draws = random_neurons_like(located, d_ff=64, n_draws=4, seed=1, exclude_given=True)
        >>> draws.shape, draws[0, :, 0].tolist()
        (torch.Size([4, 3, 2]), [3, 3, 5])
    """
    check_neurons(neurons, n_layers=n_layers, d_ff=d_ff)
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 0:
        raise NeuronscopeError(f"n_draws must be a non-negative integer, got {n_draws!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    neurons = neurons.long().cpu()
    n = int(neurons.shape[0])
    if n == 0 or n_draws == 0:
        return torch.empty(n_draws, n, 2, dtype=torch.long)

    excluded_flat: list[Tensor] = []
    if exclude is not None:
        check_neurons(exclude, d_ff=d_ff, name="exclude")
        excluded_flat.append(neurons_to_flat(exclude.long().cpu(), d_ff))
    if exclude_given:
        excluded_flat.append(neurons_to_flat(neurons, d_ff))

    layer_counts = torch.bincount(neurons[:, 0])
    blocks = []
    for layer in torch.nonzero(layer_counts, as_tuple=False).squeeze(1).tolist():
        count = int(layer_counts[layer])
        blocked = torch.zeros(d_ff, dtype=torch.bool)
        for flat in excluded_flat:
            in_layer = flat[torch.div(flat, d_ff, rounding_mode="floor") == layer] % d_ff
            blocked[in_layer] = True
        available = d_ff - int(blocked.sum())
        if count > available:
            raise NeuronscopeError(
                f"layer {layer} needs {count} random neurons but only {available} of its {d_ff} are not "
                "excluded; exclude fewer neurons or compare with a smaller set"
            )
        # Uniform sample without replacement: the `count` smallest of i.i.d. uniform keys; excluded keys are 2.
        keys = torch.rand(n_draws, d_ff, generator=generator)
        keys[:, blocked] = 2.0
        picked = keys.topk(count, dim=-1, largest=False).indices.sort(dim=-1).values  # [n_draws, count]
        layers = torch.full_like(picked, layer)
        blocks.append(torch.stack((layers, picked), dim=-1))
    return torch.cat(blocks, dim=1)


def random_sets_like(
    neurons: Tensor,
    *,
    d_ff: int | None = None,
    n_layers: int | None = None,
    layout: NeuronLayout | None = None,
    match: str = "unit",
    n_draws: int = 1,
    generator: torch.Generator | None = None,
    exclude: Tensor | None = None,
    exclude_given: bool = False,
) -> Tensor:
    """Random sets distributed like ``neurons``, the one baseline rule for dense and mixture-of-experts models.

    ``[n, 2]`` (layer, index) rows: :func:`random_neurons_like` (the same count in each layer, from ``d_ff``
    indices). ``[n, 3]`` (layer, expert, index) rows:
    :func:`~neuronscope.aggregate.expert_sampling.random_expert_neurons_like` over ``layout``
    (``get_adapter(model).moe.layout``) with ``match="unit"`` (the same count in each (layer, expert): the random
    neurons sit in the same experts, so routing is matched) or ``"layer"``.

    Returns:
        ``[n_draws, n, 2]`` or ``[n_draws, n, 3]``.

    Example:
        >>> layout = NeuronLayout.from_units([(0, -1, 8), (1, 0, 6), (1, 1, 6)])
        >>> draws = random_sets_like(torch.tensor([[1, 1, 2], [1, 1, 4], [0, -1, 3]]), layout=layout, n_draws=3,
        ...                          exclude_given=True)
        >>> draws.shape, sorted(map(tuple, draws[0, :, :2].tolist()))
        (torch.Size([3, 3, 3]), [(0, -1), (1, 1), (1, 1)])
    """
    neurons = torch.as_tensor(neurons).long()
    if neurons.dim() == 2 and neurons.shape[1] == 3:
        if layout is None:
            raise InputError("(layer, expert, index) neurons need the model's layout for their random baseline: "
                             "pass layout=get_adapter(model).moe.layout")
        from neuronscope.aggregate.expert_sampling import random_expert_neurons_like

        return random_expert_neurons_like(neurons, layout, match=match, n_draws=n_draws, generator=generator,
                                          exclude=exclude, exclude_given=exclude_given)
    if d_ff is None:
        raise InputError("(layer, index) neurons need d_ff (the FFN width) for their random baseline")
    return random_neurons_like(neurons, d_ff, n_draws=n_draws, generator=generator, exclude=exclude,
                               exclude_given=exclude_given, n_layers=n_layers)


def summarise_draws(values: Tensor | Sequence[float]) -> Summary:
    """Mean, std (sample), min, max and n of a metric measured once per random draw.

    Example:
        >>> summarise_draws([0.1, 0.3]).as_dict()["mean"]
        0.2
    """
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.dim() > 1:
        raise InputError(f"give one value per draw ([n_draws]), got shape {tuple(values.shape)}")
    return summarise(values)
