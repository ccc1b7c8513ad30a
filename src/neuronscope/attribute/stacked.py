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

from neuronscope.models.adapter import ModelAdapter

STACK_LIMIT = 64 * 2**20  # bytes of float32 scores [rows, layers × d_ff] up to which the stacked path is used


def fits(adapter: ModelAdapter, layers: list[int], rows: int, device: torch.device) -> bool:
    """Whether :class:`StackedScores` serves this call (one device and dtype, small buffers)."""
    weights = [adapter.value_vectors(layer) for layer in layers]
    return (rows * len(layers) * adapter.d_ff * 4 <= STACK_LIMIT
            and all(w.device == device and w.dtype == weights[0].dtype for w in weights))


class StackedScores:
    """Buffers and kernels of one stacked call (module docstring).

    Args:
        adapter: the model's adapter; ``layers``: the scored layers (slot ``s`` is ``layers[s]``).
        directions: ``[m, d]`` the distinct target directions; ``row_target``: ``[rows]`` which one each score row
            uses; ``flat_index``: ``[rows]`` each score row's token ``b·T + position`` in the forward.
        score_dtype: the scores' (float32, float64 for float64 models).
        centre: move LayerNorm's centring onto the value vectors.
    """

    def __init__(self, adapter: ModelAdapter, layers: list[int], directions: torch.Tensor, row_target: torch.Tensor,
                 flat_index: torch.Tensor, score_dtype: torch.dtype, centre: bool):
        first = adapter.value_vectors(layers[0])
        device, weights_dtype = first.device, first.dtype
        self.adapter, self.layers, self.centre, self.score_dtype = adapter, layers, centre, score_dtype
        self.directions = directions.to(device)
        self.cast = self.directions.to(weights_dtype)
        self.row_target, self.flat_index = row_target.to(device), flat_index.to(device)
        m, d_ff = self.directions.shape[0], adapter.d_ff
        self.acts: torch.Tensor | None = None  # [L, rows, d_ff] in the site's dtype, made at the first layer
        self.products = torch.empty(len(layers), m, d_ff, dtype=weights_dtype, device=device)

    def record(self, slot: int, tensor: torch.Tensor) -> None:
        """Inside the forward: layer ``slot``'s target rows of its site ``[B, T, d_ff]`` and its products."""
        if self.acts is None:
            self.acts = tensor.new_empty(len(self.layers), self.row_target.numel(), tensor.shape[-1])
        torch.index_select(tensor.reshape(-1, tensor.shape[-1]), 0, self.flat_index, out=self.acts[slot])
        torch.mm(self.cast, self.adapter.value_vectors(self.layers[slot]).T, out=self.products[slot])

    def write(self, buffer: torch.Tensor) -> None:
        """After the forward: every layer's scores into the selection ``buffer [rows, layers × d_ff]``."""
        products = self.products.to(self.score_dtype)  # [L, m, d_ff]
        if self.centre:  # <w - mean(w), v> = <w, v> - mean(w) · Σ v
            means = torch.stack([self.adapter.value_vectors(layer).to(self.score_dtype).mean(-1)
                                 for layer in self.layers])  # [L, d_ff]
            products = products - means[:, None, :] * self.directions.to(self.score_dtype).sum(-1)[None, :, None]
        per_row = products.index_select(1, self.row_target)  # [L, rows, d_ff]
        rows = self.row_target.numel()
        torch.mul(self.acts.transpose(0, 1), per_row.transpose(0, 1), out=buffer.view(rows, len(self.layers), -1))
