"""Selection over neuron scores: relative thresholds, deterministic top-k, sums and frequencies.

Scores are tensors ``[..., layers, d_ff]``; a neuron is ``(layer, index)`` and a set of neurons is a
``LongTensor [n, 2]`` of ``(layer, index)`` rows. Internally a neuron is also addressed by its *flat index*
``layer * d_ff + index`` (row-major over ``[layers, d_ff]``), which is what the sparse helpers store.

Every top-k here is deterministic: among equal scores the neuron with the smaller flat index (lower layer,
then lower index) wins and comes first, so results do not depend on the backend's ``topk`` tie order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from neuronscope.aggregate.neurons import (
    _check_fraction,
    _check_neuron_scores,
    check_neurons,
    flat_to_neurons,
    mask_to_neurons,
    neurons_to_flat,
)
from neuronscope.errors import InputError, NeuronscopeError

__all__ = [
    "SparseTopK",
    "frequency_of_neuron_sets",
    "frequency_over_examples",
    "layer_histogram",
    "sparse_top_k",
    "sum_over_examples",
    "threshold_relative",
    "threshold_relative_mask",
    "top_k_neurons",
    "top_k_per_layer",
]


# --------------------------------------------------------------------------------------------------------------
# relative thresholds
# --------------------------------------------------------------------------------------------------------------


def threshold_relative_mask(scores: Tensor, fraction: float) -> Tensor:
    """Mask of the neurons whose score is strictly above ``fraction`` times their example's maximum.

    The maximum is taken over the last two dimensions ``[layers, d_ff]`` separately for every leading index
    (every example / prompt), as in the knowledge-neuron and QRNCA recipes (``NA > 0.2 * max``). If an
    example's maximum is <= 0 nothing of it is kept (every score is <= max <= fraction * max).

    Args:
        scores: ``[..., layers, d_ff]`` real scores.
        fraction: in ``[0, 1]``; 0 keeps the strictly positive scores, 1 keeps nothing.

    Returns:
        ``BoolTensor`` of the same shape as ``scores``.

    Raises:
        NeuronscopeError: ``fraction`` outside ``[0, 1]``. InputError: bad shape, or NaN scores.

    Example:
        >>> threshold_relative_mask(torch.tensor([[1.0, 0.1], [0.5, -2.0]]), 0.2).tolist()
        [[True, False], [True, False]]
    """
    _check_neuron_scores(scores)
    _check_fraction(fraction)
    example_max = scores.amax(dim=(-2, -1), keepdim=True)
    if torch.isnan(example_max).any():
        raise InputError(
            "scores contain NaN; check the attribution run (dtype overflow?) before thresholding"
        )
    return scores > fraction * example_max


def threshold_relative(scores: Tensor, fraction: float) -> Tensor:
    """The scores with everything at or below ``fraction * max`` (per example) set to zero.

    Same rule as `threshold_relative_mask` (which returns the mask instead). Kept scores are unchanged.

    Args:
        scores: ``[..., layers, d_ff]``.
        fraction: in ``[0, 1]``.

    Returns:
        A new tensor, same shape and dtype as ``scores``.

    Example:
        >>> threshold_relative(torch.tensor([[1.0, 0.1], [0.5, -2.0]]), 0.2).tolist()
        [[1.0, 0.0], [0.5, 0.0]]
    """
    mask = threshold_relative_mask(scores, fraction)
    return torch.where(mask, scores, torch.zeros((), dtype=scores.dtype, device=scores.device))


# --------------------------------------------------------------------------------------------------------------
# deterministic top-k
# --------------------------------------------------------------------------------------------------------------


def _top_k_rows(rows: Tensor, k: int, *, largest: bool, absolute: bool) -> tuple[Tensor, Tensor]:
    """Deterministic top-k along the last dim of ``rows [B, n]``: (values [B, k], indices [B, k]).

    Order: by key (descending if ``largest``), ties by ascending index. Runs in O(B * n) plus a sort of k items.
    """
    n = rows.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise NeuronscopeError(f"k must be a non-negative integer, got {k!r}")
    if k > n:
        raise NeuronscopeError(f"k={k} is larger than the number of candidates ({n}); ask for at most {n}")
    if rows.is_floating_point() and torch.isnan(rows).any():
        raise InputError("scores contain NaN; check the attribution run before taking a top-k")
    batch = rows.shape[0]
    if k == 0 or batch == 0:
        empty = torch.empty(batch, k, dtype=torch.long, device=rows.device)
        return rows.new_empty(batch, k), empty
    key = rows.abs() if absolute else rows
    if not largest:
        # Negation is exact for floats; integers are promoted so that the minimum of int64 cannot overflow.
        key = -(key.double() if not key.is_floating_point() else key)
    kth = key.topk(k, dim=-1, largest=True, sorted=True).values[:, -1:]  # [B, 1]
    above = key > kth
    need = k - above.sum(dim=-1, keepdim=True)  # how many ties at the k-th value each row still takes
    tie = key == kth
    if bool((tie.sum(dim=-1, keepdim=True) == need).all()):
        chosen = above | tie  # the usual case: no surplus ties at the k-th value
    else:
        tie_rank = tie.cumsum(dim=-1)  # 1-based rank among ties, by ascending index
        chosen = above | (tie & (tie_rank <= need))
    index = torch.nonzero(chosen, as_tuple=False)[:, 1].view(batch, k)  # ascending index within each row
    chosen_key = key.gather(-1, index)
    order = torch.sort(chosen_key, dim=-1, descending=True, stable=True).indices
    index = index.gather(-1, order)
    return rows.gather(-1, index), index


def top_k_neurons(
    scores: Tensor, k: int, *, largest: bool = True, absolute: bool = False
) -> tuple[Tensor, Tensor]:
    """The k best neurons over all ``layers x d_ff``, ranked by signed score.

    Args:
        scores: ``[layers, d_ff]``.
        k: how many neurons, ``0 <= k <= layers * d_ff``.
        largest: True (default) ranks descending; False ranks ascending (most negative first).
        absolute: rank by ``|score|`` instead (returned values keep their sign). Default False.

    Returns:
        ``(neurons [k, 2], values [k])``; ties are broken by ascending (layer, index).

    Example:
        >>> neurons, values = top_k_neurons(torch.tensor([[0.5, 2.0], [2.0, -1.0]]), 2)
        >>> neurons.tolist(), values.tolist()
        ([[0, 1], [1, 0]], [2.0, 2.0])
    """
    _check_neuron_scores(scores)
    if scores.dim() != 2:
        raise InputError(
            f"top_k_neurons takes one example's scores [layers, d_ff], got shape {tuple(scores.shape)}; "
            "use sparse_top_k for a batch"
        )
    d_ff = scores.shape[1]
    values, flat = _top_k_rows(scores.reshape(1, -1), k, largest=largest, absolute=absolute)
    return flat_to_neurons(flat[0], d_ff), values[0]


def top_k_per_layer(
    scores: Tensor, k: int, *, largest: bool = True, absolute: bool = False
) -> tuple[Tensor, Tensor]:
    """The k best neurons of every layer.

    Args:
        scores: ``[layers, d_ff]``.
        k: neurons per layer, ``0 <= k <= d_ff``.
        largest, absolute: as in `top_k_neurons`.

    Returns:
        ``(neurons [layers * k, 2], values [layers * k])`` grouped by layer (ascending), ranked within a layer.

    Example:
        >>> neurons, values = top_k_per_layer(torch.tensor([[0.5, 2.0], [3.0, -1.0]]), 1)
        >>> neurons.tolist(), values.tolist()
        ([[0, 1], [1, 0]], [2.0, 3.0])
    """
    _check_neuron_scores(scores)
    if scores.dim() != 2:
        raise InputError(f"top_k_per_layer takes scores [layers, d_ff], got shape {tuple(scores.shape)}")
    n_layers = scores.shape[0]
    values, index = _top_k_rows(scores, k, largest=largest, absolute=absolute)
    layers = torch.arange(n_layers, device=scores.device).unsqueeze(1).expand(n_layers, k)
    neurons = torch.stack((layers.reshape(-1), index.reshape(-1)), dim=-1)
    return neurons, values.reshape(-1)


@dataclass(frozen=True)
class SparseTopK:
    """The top-k neurons of each example, kept sparse: ``values`` and ``flat_indices`` are ``[..., k]``.

    ``flat_indices`` address ``[n_layers, d_ff]`` row-major (``layer * d_ff + index``); rows are ranked best
    first. Build with `sparse_top_k`; ``to_dense()`` rebuilds ``[..., n_layers, d_ff]`` with zeros elsewhere.
    """

    values: Tensor
    flat_indices: Tensor
    n_layers: int
    d_ff: int

    @property
    def k(self) -> int:
        return int(self.flat_indices.shape[-1])

    def neurons(self) -> Tensor:
        """``[..., k, 2]`` (layer, index) rows."""
        return flat_to_neurons(self.flat_indices, self.d_ff)

    def to_dense(self) -> Tensor:
        """``[..., n_layers, d_ff]`` with the kept values and zeros elsewhere."""
        lead = self.values.shape[:-1]
        dense = self.values.new_zeros(*lead, self.n_layers * self.d_ff)
        dense.scatter_(-1, self.flat_indices, self.values)
        return dense.view(*lead, self.n_layers, self.d_ff)

    def sum(self) -> Tensor:
        """Sum over all leading (example) dims of the kept values, as dense ``[n_layers, d_ff]``."""
        total = self.values.new_zeros(self.n_layers * self.d_ff)
        total.index_add_(0, self.flat_indices.reshape(-1), self.values.reshape(-1))
        return total.view(self.n_layers, self.d_ff)

    def frequency(self) -> Tensor:
        """How many examples keep each neuron: ``LongTensor [n_layers, d_ff]``."""
        counts = torch.bincount(self.flat_indices.reshape(-1), minlength=self.n_layers * self.d_ff)
        return counts.view(self.n_layers, self.d_ff)


def sparse_top_k(scores: Tensor, k: int, *, largest: bool = True, absolute: bool = False) -> SparseTopK:
    """Per-example top-k over ``layers x d_ff``, returned sparse (no dense copy is kept).

    Args:
        scores: ``[..., layers, d_ff]``; every leading index is one example.
        k: neurons per example.
        largest, absolute: as in `top_k_neurons`.

    Returns:
        `SparseTopK` with ``values`` / ``flat_indices`` of shape ``[..., k]``.

    Example:
        >>> top = sparse_top_k(torch.tensor([[[1.0, 3.0]], [[2.0, 0.0]]]), 1)
        >>> top.flat_indices.tolist(), top.frequency().tolist()
        ([[1], [0]], [[1, 1]])
    """
    _check_neuron_scores(scores)
    n_layers, d_ff = scores.shape[-2], scores.shape[-1]
    lead = scores.shape[:-2]
    values, flat = _top_k_rows(scores.reshape(-1, n_layers * d_ff), k, largest=largest, absolute=absolute)
    return SparseTopK(values.view(*lead, k), flat.view(*lead, k), n_layers, d_ff)


# --------------------------------------------------------------------------------------------------------------
# sums, frequencies, histograms
# --------------------------------------------------------------------------------------------------------------


def sum_over_examples(scores: Tensor, selected: Tensor | None = None) -> Tensor:
    """Sum scores over the example dimension, optionally only where each example selected the neuron.

    Args:
        scores: ``[examples, layers, d_ff]``.
        selected: optional ``BoolTensor`` of the same shape (e.g. from `threshold_relative_mask`); unselected
            entries count as zero.

    Returns:
        ``[layers, d_ff]``.

    Example:
        >>> s = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]])
        >>> sum_over_examples(s).tolist(), sum_over_examples(s, s > 1.5).tolist()
        ([[4.0, 6.0]], [[3.0, 6.0]])
    """
    _check_neuron_scores(scores, min_dim=3)
    if scores.dim() != 3:
        raise InputError(f"scores must be [examples, layers, d_ff], got shape {tuple(scores.shape)}")
    if selected is None:
        return scores.sum(dim=0)
    if selected.shape != scores.shape:
        raise InputError(
            f"selected must have the shape of scores {tuple(scores.shape)}, got {tuple(selected.shape)}"
        )
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    return torch.where(selected.bool(), scores, zero).sum(dim=0)


def frequency_over_examples(selected: Tensor) -> Tensor:
    """How many examples select each neuron.

    Args:
        selected: ``BoolTensor [examples, layers, d_ff]``.

    Returns:
        ``LongTensor [layers, d_ff]``.

    Example:
        >>> frequency_over_examples(torch.tensor([[[True, False]], [[True, True]]])).tolist()
        [[2, 1]]
    """
    if selected.dim() != 3:
        raise InputError(f"selected must be [examples, layers, d_ff], got shape {tuple(selected.shape)}")
    return selected.bool().sum(dim=0, dtype=torch.long)


def frequency_of_neuron_sets(neuron_sets: list[Tensor], n_layers: int, d_ff: int) -> Tensor:
    """How many of the given neuron sets contain each neuron (a set counts a neuron once, even if repeated).

    Args:
        neuron_sets: list of ``[n_i, 2]`` (layer, index) tensors, one per example.
        n_layers, d_ff: the score grid.

    Returns:
        ``LongTensor [n_layers, d_ff]``.

    Example:
        >>> sets = [torch.tensor([[0, 1], [0, 1]]), torch.tensor([[0, 1], [1, 0]])]
        >>> frequency_of_neuron_sets(sets, 2, 2).tolist()
        [[0, 2], [1, 0]]
    """
    flats = []
    for i, neurons in enumerate(neuron_sets):
        check_neurons(neurons, n_layers, d_ff, name=f"neuron_sets[{i}]")
        flats.append(torch.unique(neurons_to_flat(neurons, d_ff).cpu()))
    if not flats:
        return torch.zeros(n_layers, d_ff, dtype=torch.long)
    counts = torch.bincount(torch.cat(flats), minlength=n_layers * d_ff)
    return counts.view(n_layers, d_ff)


def layer_histogram(neurons: Tensor, n_layers: int) -> Tensor:
    """Number of neurons of the set in each layer.

    Args:
        neurons: ``[n, 2]`` (layer, index) rows.
        n_layers: number of layers of the model.

    Returns:
        ``LongTensor [n_layers]``.

    Example:
        >>> layer_histogram(torch.tensor([[0, 5], [2, 1], [2, 7]]), 3).tolist()
        [1, 0, 2]
    """
    check_neurons(neurons, n_layers=n_layers)
    return torch.bincount(neurons[:, 0].long(), minlength=n_layers)


def select_neurons(
    mean_scores: Tensor, layers: list[int] | None = None, threshold: float | None = None, top_k: int | None = 20,
    allowed: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The neurons a locate run keeps: above ``threshold`` × the maximum (if given), the ``top_k`` best (if given).

    Args:
        mean_scores: ``[scored layers, d_ff]`` the mean score of every neuron.
        layers: the model layer of each row (default ``0 .. rows - 1``).
        threshold: a fraction in [0, 1] of the maximum mean score (see :func:`threshold_relative_mask`).
        top_k: at most this many, best first; None keeps every neuron over the threshold.
        allowed: ``BoolTensor [scored layers, d_ff]``: only these neurons may be chosen, and the threshold is
            relative to their maximum (default: every neuron; see :mod:`.specific`).

    Returns:
        ``(neurons [n, 2] with model layer numbers, their scores [n])``, best first; ties: lower layer, then index.

    Example:
        >>> select_neurons(torch.tensor([[1.0, 3.0], [2.0, 0.5]]), [4, 7], 0.4, None)[0].tolist()
        [[4, 1], [7, 0]]
    """
    pool = torch.ones_like(mean_scores, dtype=torch.bool) if allowed is None else allowed.bool()
    if threshold is not None:
        ranked = mean_scores if allowed is None else torch.where(pool, mean_scores, float("-inf"))
        pool = pool & threshold_relative_mask(ranked, threshold)
    candidates = mask_to_neurons(pool)
    values = mean_scores[candidates[:, 0], candidates[:, 1]]
    order = torch.sort(values, descending=True, stable=True).indices
    if top_k is not None:
        order = order[:top_k]
    chosen = candidates[order]
    layer_list = list(range(mean_scores.shape[0])) if layers is None else list(layers)
    rows = torch.tensor(layer_list, dtype=torch.long)[chosen[:, 0]] if len(chosen) else chosen[:, 0]
    return torch.stack([rows, chosen[:, 1]], dim=1), values[order]
