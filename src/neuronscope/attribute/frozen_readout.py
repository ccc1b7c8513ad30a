"""The frozen-norm readout shared by the log-probability-increase methods: the model's final norm frozen at the
scale ``σ`` of the final residual, so that logits are affine in the residual (see
:mod:`neuronscope.attribute.log_probability_increase`).

Example:
    >>> readout = FrozenReadout.from_adapter(get_adapter(model))
    >>> logits = readout.logits(final_residual, adapter.final_norm().scale(final_residual))   # [..., V]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from neuronscope.errors import NeuronscopeError
from neuronscope.inputs.targets import TargetSet
from neuronscope.models.adapter import ModelAdapter

#: :meth:`FrozenReadout.queue` issues products up to this many bytes ahead (on a one-layer LPI call at V = 32k the
#: model's forward is ~1.5 ms of host time in which the GPU would otherwise idle).
QUEUE_BYTES = 640 * 2**20
#: device types whose products are worth issuing ahead (a CPU computes each one at once: nothing to overlap).
QUEUE_DEVICES = ("cuda",)


@dataclass
class FrozenReadout:
    """The model's readout with the final norm frozen: ``z(x) = G C(x) / σ + offset`` over a vocabulary subset.

    ``G = W_U diag(g · s)`` is never stored: :meth:`delta` multiplies the (few) vectors by ``g · s`` and then by the
    unembedding rows, which are the model's own tensor wherever the dtype allows (a full-vocabulary readout of a
    bf16 model computed in bf16 copies nothing).

    Attributes:
        rows: ``W_U [V', d]``, the unembedding rows (``V'`` = full vocabulary or the candidate set).
        gain: ``[d]`` = the final norm's gain times the family's logit scale ``s``.
        offset: ``[V']`` = ``s · (W_U b_f + b_U)`` (final-norm bias and unembedding bias, times the logit scale
            ``s``, which ``directions`` carry too).
        centre: LayerNorm (subtract the mean of ``x``) or RMSNorm.
        softcap: the model's final logit soft-cap, or None.
        token_ids: ``[V']`` vocabulary ids of the columns, or None for the full vocabulary.
    """

    rows: torch.Tensor
    gain: torch.Tensor
    offset: torch.Tensor
    centre: bool
    softcap: float | None
    token_ids: torch.Tensor | None

    @classmethod
    def from_adapter(
        cls, adapter: ModelAdapter, token_ids: torch.Tensor | None = None, dtype: torch.dtype = torch.float32
    ) -> FrozenReadout:
        """Build it from a model's final norm and unembedding (restricted to ``token_ids`` if given)."""
        unembedding = adapter.unembedding()
        device = unembedding.device
        rows = unembedding if token_ids is None else unembedding[token_ids.to(device)]
        norm = adapter.final_norm()
        scale = adapter.readout.scale  # the family's logit multiplier folds into the affine readout
        gain = norm.gain.to(device, dtype) * scale
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        offset = torch.zeros(rows.shape[0], device=device, dtype=wide)
        if norm.bias is not None:
            offset = offset + rows.to(wide) @ norm.bias.to(device, wide)
        bias = adapter.unembedding_bias()
        if bias is not None:
            offset = offset + (bias if token_ids is None else bias[token_ids.to(device)]).to(wide)
        return cls(rows.to(dtype), gain, offset * scale, norm.kind == "layer", adapter.readout.softcap, token_ids)

    @property
    def device(self) -> torch.device:
        return self.rows.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the products (the compute dtype)."""
        return self.rows.dtype

    def delta(self, writes: torch.Tensor) -> torch.Tensor:
        """The linear part ``G C(v) = W_U (g · s ⊙ C(v))`` for vectors ``[..., d]`` → ``[..., V']`` (divide by
        ``σ`` yourself)."""
        writes = writes.to(self.device, self.rows.dtype)
        if self.centre:
            writes = writes - writes.mean(-1, keepdim=True)
        return (writes * self.gain) @ self.rows.T

    def queue(self, vectors: torch.Tensor, chunk_size: int) -> list[torch.Tensor]:
        """On a GPU, :meth:`delta` of the first chunks of ``vectors [n, d]`` issued now, in chunk order, up to
        :data:`QUEUE_BYTES` (e.g. before a forward, so that they run while the host issues its kernels)."""
        if self.device.type not in QUEUE_DEVICES:
            return []
        per_chunk = chunk_size * self.rows.shape[0] * self.rows.element_size()
        count = min(-(-vectors.shape[0] // chunk_size), QUEUE_BYTES // max(per_chunk, 1))
        return [self.delta(vectors[start * chunk_size:(start + 1) * chunk_size]) for start in range(count)]

    def logits(self, residual: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``z(x) = G C(x) / σ + offset`` for residuals ``[..., d]`` and scales ``[..., 1]`` → ``[..., V']`` (no
        soft-cap)."""
        wide = self.offset.dtype
        return self.delta(residual).to(wide) / sigma.to(self.device, wide) + self.offset

    def column(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Columns of ``token_ids`` (any shape) in this readout."""
        if self.token_ids is None:
            return token_ids.clone()
        index = torch.searchsorted(self.token_ids.cpu(), token_ids.cpu())
        return index.clamp(max=self.token_ids.numel() - 1)


def readout_for(
    adapter: ModelAdapter, targets: TargetSet, candidates: Sequence[int] | torch.Tensor | None, dtype: torch.dtype
) -> FrozenReadout:
    """The readout over the full vocabulary, or exactly over ``candidates ∪ targets`` (sorted token ids)."""
    if candidates is None:
        return FrozenReadout.from_adapter(adapter, None, dtype)
    ids = torch.as_tensor(candidates, dtype=torch.long).reshape(-1)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= adapter.vocab_size):
        raise NeuronscopeError(f"candidate token ids must be in [0, {adapter.vocab_size}): got {ids.tolist()[:10]}")
    ids = torch.cat([ids, targets.token_ids[targets.valid]]).unique()  # the targets always take part
    return FrozenReadout.from_adapter(adapter, ids, dtype)
