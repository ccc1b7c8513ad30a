"""The device-selected contribution of a small batch in the fewest kernels: a GPU forward at batch 1 is bound by
the host issuing kernels (a 7B model's forward of 620 tokens issues ~1,300 of them, ~20 µs of host time each), so
every kernel the scoring adds per layer shows in the wall time, not its arithmetic.

Inside the forward each layer issues two: the target rows of its neuron site into one stacked buffer
(``index_select(..., out=)``) and the products ``<w_i, u_t>`` of its value vectors with the ``m`` distinct target
directions into another (``mm(..., out=)``, the very product :func:`~.contribution.value_products` computes, so
the numbers are the dense grid's to the last bit). After the forward, four kernels for all layers at once: the
products to the score dtype, gathered per score row, multiplied by the activations straight into the selection
buffer ``[rows, layers × d_ff]`` (activations promoted inside the product, as the other paths do), and the
top-k of :class:`~neuronscope.attribute.selection.BufferedTopK`.

Used when every scored layer is on one device, shares one dtype, and the stacked buffers are small
(:data:`STACK_LIMIT`); the layer-by-layer path of :mod:`~.contribution` otherwise.
"""

from __future__ import annotations

import torch

STACK_LIMIT = 64 * 2**20  # bytes of float32 scores [rows, layers × d_ff] up to which the stacked path is used


def fits(d_ff: int, weights: list[torch.Tensor], rows: int, device: torch.device) -> bool:
    """Whether :class:`StackedScores` serves this call: the scored layers' value vectors ``weights`` on one device
    and in one dtype, and small buffers."""
    return (rows * len(weights) * d_ff * 4 <= STACK_LIMIT
            and all(w.device == device and w.dtype == weights[0].dtype for w in weights))


class StackedScores:
    """Buffers and kernels of one stacked call (module docstring).

    Args:
        weights: the scored layers' value vectors ``[d_ff, d]`` (slot ``s`` is the ``s``-th scored layer).
        directions: ``[m, d]`` the distinct target directions; ``row_target``: ``[rows]`` which one each score row
            uses; ``flat_index``: ``[rows]`` each score row's token ``b·T + position`` in the forward.
        score_dtype: the scores' (float32, float64 for float64 models).
        centre: move LayerNorm's centring onto the value vectors.
    """

    def __init__(self, weights: list[torch.Tensor], directions: torch.Tensor, row_target: torch.Tensor,
                 flat_index: torch.Tensor, score_dtype: torch.dtype, centre: bool):
        device, weights_dtype = weights[0].device, weights[0].dtype
        self.weights, self.centre, self.score_dtype = weights, centre, score_dtype
        self.directions = directions.to(device)
        self.cast = self.directions.to(weights_dtype)
        self.row_target, self.flat_index = row_target.to(device), flat_index.to(device)
        m, d_ff = self.directions.shape[0], weights[0].shape[0]
        self.acts: torch.Tensor | None = None  # [L, rows, d_ff] in the site's dtype, made at the first layer
        self.products = torch.empty(len(weights), m, d_ff, dtype=weights_dtype, device=device)

    def record(self, slot: int, tensor: torch.Tensor) -> None:
        """Inside the forward: layer ``slot``'s target rows of its site ``[B, T, d_ff]`` and its products."""
        if self.acts is None:
            self.acts = tensor.new_empty(len(self.weights), self.row_target.numel(), tensor.shape[-1])
        torch.index_select(tensor.reshape(-1, tensor.shape[-1]), 0, self.flat_index, out=self.acts[slot])
        torch.mm(self.cast, self.weights[slot].T, out=self.products[slot])

    def write(self, buffer: torch.Tensor) -> None:
        """After the forward: every layer's scores into the selection ``buffer [rows, layers × d_ff]``."""
        products = self.products.to(self.score_dtype)  # [L, m, d_ff]
        if self.centre:  # <w - mean(w), v> = <w, v> - mean(w) · Σ v
            means = torch.stack([w.to(self.score_dtype).mean(-1) for w in self.weights])  # [L, d_ff]
            products = products - means[:, None, :] * self.directions.to(self.score_dtype).sum(-1)[None, :, None]
        per_row = products.index_select(1, self.row_target)  # [L, rows, d_ff]
        rows = self.row_target.numel()
        torch.mul(self.acts.transpose(0, 1), per_row.transpose(0, 1), out=buffer.view(rows, len(self.weights), -1))
