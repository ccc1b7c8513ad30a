"""Neuron sets and their index forms: ``LongTensor [n, 2]`` of ``(layer, index)`` rows, flat indices
``layer * d_ff + index``, and boolean masks ``[layers, d_ff]``; the checks every aggregation starts with.

Example:
    >>> neurons_to_flat(torch.tensor([[1, 2]]), d_ff=8).tolist()
    [10]
"""

from __future__ import annotations

import torch
from torch import Tensor

from neuronscope.errors import InputError, NeuronscopeError

# --------------------------------------------------------------------------------------------------------------
# validation and index conversions
# --------------------------------------------------------------------------------------------------------------


def _check_neuron_scores(scores: Tensor, *, min_dim: int = 2, name: str = "scores") -> None:
    if not isinstance(scores, Tensor):
        raise InputError(f"{name} must be a torch.Tensor [..., layers, d_ff], got {type(scores).__name__}")
    if scores.dim() < min_dim:
        raise InputError(
            f"{name} must have at least {min_dim} dimensions ([..., layers, d_ff]), got shape {tuple(scores.shape)}"
        )
    if scores.is_complex() or scores.dtype == torch.bool:
        raise InputError(f"{name} must be a real floating or integer tensor, got dtype {scores.dtype}")


def _check_fraction(fraction: float, name: str = "fraction") -> None:
    if (
        not isinstance(fraction, (int, float))
        or isinstance(fraction, bool)
        or not (0.0 <= float(fraction) <= 1.0)
    ):
        raise NeuronscopeError(
            f"{name} must be a number in [0, 1] (a fraction of the maximum score), got {fraction!r}; "
            "for example 0.2 keeps neurons scoring above 20% of the maximum"
        )


def check_neurons(
    neurons: Tensor, n_layers: int | None = None, d_ff: int | None = None, name: str = "neurons"
) -> None:
    """Raise `InputError` unless ``neurons`` is an integer ``[n, 2]`` tensor of in-range ``(layer, index)`` rows."""
    if not isinstance(neurons, Tensor):
        raise InputError(
            f"{name} must be a LongTensor [n, 2] of (layer, index) rows, got {type(neurons).__name__}"
        )
    if neurons.dim() != 2 or neurons.shape[1] != 2:
        raise InputError(f"{name} must have shape [n, 2] ((layer, index) rows), got {tuple(neurons.shape)}")
    if neurons.dtype.is_floating_point or neurons.is_complex() or neurons.dtype == torch.bool:
        raise InputError(f"{name} must hold integers (torch.long), got dtype {neurons.dtype}")
    if neurons.numel() == 0:
        return
    if int(neurons.min()) < 0:
        raise InputError(f"{name} holds a negative layer or index; use 0-based (layer, index) rows")
    if n_layers is not None and int(neurons[:, 0].max()) >= n_layers:
        raise InputError(
            f"{name} holds layer {int(neurons[:, 0].max())} but the model has {n_layers} layers (0..{n_layers - 1})"
        )
    if d_ff is not None and int(neurons[:, 1].max()) >= d_ff:
        raise InputError(f"{name} holds index {int(neurons[:, 1].max())} but d_ff is {d_ff} (0..{d_ff - 1})")


def neurons_to_flat(neurons: Tensor, d_ff: int) -> Tensor:
    """Flat indices ``layer * d_ff + index`` of a neuron set.

    Args:
        neurons: ``[n, 2]`` (layer, index) rows.
        d_ff: FFN width.

    Returns:
        ``LongTensor [n]``.

    Example:
        >>> neurons_to_flat(torch.tensor([[0, 3], [2, 1]]), d_ff=4).tolist()
        [3, 9]
    """
    check_neurons(neurons, d_ff=d_ff)
    neurons = neurons.long()
    return neurons[:, 0] * d_ff + neurons[:, 1]


def flat_to_neurons(flat: Tensor, d_ff: int) -> Tensor:
    """Inverse of `neurons_to_flat`: ``[...]`` flat indices -> ``[..., 2]`` (layer, index).

    Example:
        >>> flat_to_neurons(torch.tensor([3, 9]), d_ff=4).tolist()
        [[0, 3], [2, 1]]
    """
    flat = flat.long()
    return torch.stack((torch.div(flat, d_ff, rounding_mode="floor"), flat % d_ff), dim=-1)


def neurons_to_mask(neurons: Tensor, n_layers: int, d_ff: int) -> Tensor:
    """Boolean mask ``[n_layers, d_ff]`` that is True at the given neurons (duplicates are fine).

    Example:
        >>> neurons_to_mask(torch.tensor([[1, 0]]), n_layers=2, d_ff=2).tolist()
        [[False, False], [True, False]]
    """
    check_neurons(neurons, n_layers, d_ff)
    mask = torch.zeros(n_layers * d_ff, dtype=torch.bool, device=neurons.device)
    mask[neurons_to_flat(neurons, d_ff)] = True
    return mask.view(n_layers, d_ff)


def mask_to_neurons(mask: Tensor) -> Tensor:
    """The neurons where a ``[layers, d_ff]`` mask is True, as ``[n, 2]`` rows in flat-index order.

    Example:
        >>> mask_to_neurons(torch.tensor([[False, True], [True, False]])).tolist()
        [[0, 1], [1, 0]]
    """
    if mask.dim() != 2:
        raise InputError(f"mask must have shape [layers, d_ff], got {tuple(mask.shape)}")
    return torch.nonzero(mask.bool(), as_tuple=False)
