"""Attention probabilities recorded or re-weighted inside the stock attention modules.

Transformers' own extension point is used: a function registered in ``AttentionInterface`` (with the eager mask in
``AttentionMaskInterface``) under the name ``"neuronscope_edit"``, switched on for the block. The function calls the
family's stock ``eager_attention_forward`` (the one its modeling file defines), so every family detail (scaling,
soft-capping, sinks, grouped-query heads) stays the model's own; then, for the heads of a plan, it replaces the
probabilities of the query row ``t`` by ``A'`` and adds ``Σ_s (A'[t, s] − A[t, s]) · v_s`` to that head's output,
which is exactly the output the head would compute from ``A'`` (``out = A v``).

Re-weighting (pure math in :func:`reweight_probabilities`), per head and row, with factors ``w_s`` on the chosen
sources ``S``:

- ``renormalise="sources"`` (default): ``A'_s = A_s w_s · (Σ_{S} A) / (Σ_{S} A w)`` on ``S``, other sources
  unchanged: the mass on ``S`` is kept and only redistributed (e.g. between the label positions of two classes);
- ``"row"``: ``A' = A ⊙ w / Σ (A ⊙ w)`` (the whole row renormalised);
- ``"none"``: ``A'_s = A_s w_s`` (rows no longer sum to 1: the contributions from ``S`` are scaled).

Edits apply to the last query position of every forward call (the prompt's last position, or the one position of
a cached step). Keys are absolute positions (full-attention caches).

Example:
    >>> plan = AttentionReweighting(layer=20, heads=torch.tensor([3]), sources=label_positions,
    ...                             factors=torch.tensor([[2.0, 1.0, 1.0, 1.0]]))
    >>> with edited_attention(model, [plan], record_layers=[20]) as record:
    ...     logits = model(**batch.inputs).logits
    >>> record.rows[20].shape                  # [B, H, 1, T]: the last row before the edit
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError, UnsupportedModelError
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.models.attention import attention_module

IMPLEMENTATION = "neuronscope_edit"
RENORMALISE = ("sources", "row", "none")
_STATE = "_neuronscope_attention_edit"


# -- pure math ---------------------------------------------------------------------------------------------------
def reweight_probabilities(probs: torch.Tensor, sources: torch.Tensor, factors: torch.Tensor,
                           renormalise: str = "sources") -> torch.Tensor:
    """Re-weight attention rows at chosen sources (see the module docstring).

    Args:
        probs: ``[B, k, T]`` probability rows (one per head).
        sources: ``[B, S]`` distinct source positions per row.
        factors: ``[B, S]`` (same for every head) or ``[B, k, S]``.
        renormalise: ``"sources"``, ``"row"`` or ``"none"``.

    Returns:
        ``[B, k, T]`` the new rows (float32).

    Example:
        >>> p = torch.tensor([[[0.5, 0.3, 0.2]]])
        >>> reweight_probabilities(p, torch.tensor([[1, 2]]), torch.tensor([[1.0, 2.0]]))
        tensor([[[0.5000, 0.2143, 0.2857]]])
    """
    if renormalise not in RENORMALISE:
        raise NeuronscopeError(f"renormalise must be one of {', '.join(RENORMALISE)}, not {renormalise!r}")
    probs = probs.float()
    index = sources.to(probs.device).long()[:, None, :].expand(-1, probs.shape[1], -1)  # [B, k, S]
    factors = factors.to(probs.device).float()
    factors = factors[:, None, :].expand_as(index) if factors.dim() == 2 else factors
    picked = probs.gather(-1, index)
    scaled = picked * factors
    if renormalise == "sources":
        kept, now = picked.sum(-1, keepdim=True), scaled.sum(-1, keepdim=True)
        scaled = scaled * torch.where(now > 0, kept / now.clamp_min(1e-30), torch.zeros_like(now))
    new = probs.scatter(-1, index, scaled)
    if renormalise == "row":
        new = new / new.sum(-1, keepdim=True).clamp_min(1e-30)
    return new


# -- plans and records -------------------------------------------------------------------------------------------
@dataclass
class AttentionReweighting:
    """Re-weight heads ``heads [k]`` of ``layer`` at the last query position: factors ``[B, S]`` or ``[B, k, S]``
    on source positions ``sources [B, S]`` (distinct per row)."""

    layer: int
    heads: torch.Tensor
    sources: torch.Tensor
    factors: torch.Tensor
    renormalise: str = "sources"

    def __post_init__(self) -> None:
        self.heads = torch.as_tensor(self.heads, dtype=torch.long).reshape(-1)
        self.sources = torch.as_tensor(self.sources, dtype=torch.long)
        self.factors = torch.as_tensor(self.factors, dtype=torch.float32)
        if self.sources.dim() != 2 or self.factors.shape[0] != self.sources.shape[0] \
                or self.factors.shape[-1] != self.sources.shape[1] or self.factors.dim() not in (2, 3):
            raise NeuronscopeError(f"sources must be [B, S] and factors [B, S] or [B, k, S]; got "
                                   f"{tuple(self.sources.shape)} and {tuple(self.factors.shape)}")
        if self.factors.dim() == 3 and self.factors.shape[1] != self.heads.numel():
            raise NeuronscopeError(f"factors [B, k, S] need k = {self.heads.numel()} heads")
        if bool((self.sources < 0).any()):
            raise NeuronscopeError("source positions must be non-negative")
        ordered = self.sources.sort(-1).values
        if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
            raise NeuronscopeError("each row's source positions must be distinct")
        if not bool(torch.isfinite(self.factors).all()) or bool((self.factors < 0).any()):
            raise NeuronscopeError("re-weighting factors must be finite and non-negative")

    def select(self, rows: torch.Tensor | Sequence[int], shift: int = 0) -> AttentionReweighting:
        """The plan for a sub-batch ``rows`` whose positions moved by ``-shift`` (leading padding cut off)."""
        index = torch.as_tensor(rows, dtype=torch.long)
        return AttentionReweighting(self.layer, self.heads, self.sources[index] - shift, self.factors[index],
                                    self.renormalise)


@dataclass
class AttentionRecord:
    """What :func:`edited_attention` recorded in the last forward call of the block, per layer.

    Attributes:
        rows: ``[B, H, Q, T]`` probabilities of the recorded query rows before any edit (float32).
        edited: ``[B, k, T]`` the re-weighted last rows of the plan's heads.
        value_output_norms: ``[B, H, T]`` ``‖v_s[kv(h)] · W_O[slice_h]‖`` (if asked for).
    """

    rows: dict[int, torch.Tensor] = field(default_factory=dict)
    edited: dict[int, torch.Tensor] = field(default_factory=dict)
    value_output_norms: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class _LayerState:
    layer: int
    plans: list[AttentionReweighting]
    record: AttentionRecord | None
    queries: str | torch.Tensor
    output_rows: torch.Tensor | None  # W_O rows [H * d_head, d] when value-output norms are asked for


# -- the attention function --------------------------------------------------------------------------------------
def stock_eager_attention(module: nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The ``eager_attention_forward`` of the modeling file that defines ``module``'s class."""
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        raise UnsupportedModelError(
            f"{type(module).__name__} has no eager_attention_forward in its modeling file: its attention cannot be "
            "recorded or re-weighted through the attention interface"
        )
    return eager


def _query_rows(queries: str | torch.Tensor, batch: int, q_len: int, offset: int) -> torch.Tensor:
    if isinstance(queries, str):
        return torch.full((batch, 1), q_len - 1, dtype=torch.long)
    local = queries.long() - offset
    if bool(((local < 0) | (local >= q_len)).any()):
        raise NeuronscopeError(f"recorded query positions must lie in this call's positions [{offset}, "
                               f"{offset + q_len})")
    return local


def _edit_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    out, weights = stock_eager_attention(module)(module, query, key, value, attention_mask, scaling=scaling,
                                                 dropout=dropout, **kwargs)
    state: _LayerState | None = getattr(module, _STATE, None)
    if state is None:
        return out, weights
    batch, n_heads, q_len, k_len = weights.shape
    kv_group = n_heads // value.shape[1]
    if state.record is not None:
        rows = _query_rows(state.queries, batch, q_len, k_len - q_len).to(weights.device)
        picked = weights.float().gather(2, rows[:, None, :, None].expand(-1, n_heads, -1, k_len))
        state.record.rows[state.layer] = picked.detach()
        if state.output_rows is not None:
            per_head = state.output_rows.reshape(n_heads, -1, state.output_rows.shape[-1]).to(value.device)
            values = value.float().repeat_interleave(kv_group, dim=1)  # [B, H, T, d_head]
            projected = torch.einsum("bhtk,hkd->bhtd", values, per_head.float())
            state.record.value_output_norms[state.layer] = projected.norm(dim=-1).detach()
    if not state.plans:
        return out, weights
    out, weights = out.clone(), weights.clone()
    for plan in state.plans:
        if plan.sources.shape[0] != batch or int(plan.sources.max()) >= k_len:
            raise NeuronscopeError(f"layer {state.layer}: the re-weighting plan has {plan.sources.shape[0]} rows and "
                                   f"sources up to {int(plan.sources.max())}, but the call has {batch} rows and "
                                   f"{k_len} keys")
        heads = plan.heads.to(weights.device)
        last = weights[:, heads, q_len - 1, :].float()  # [B, k, T]
        new = reweight_probabilities(last, plan.sources, plan.factors, plan.renormalise)
        values = value[:, heads // kv_group].float()  # [B, k, T, d_head]
        change = torch.einsum("bkt,bktd->bkd", new - last, values)
        out[:, q_len - 1, heads] = out[:, q_len - 1, heads] + change.to(out.dtype)
        weights[:, heads, q_len - 1] = new.to(weights.dtype)
        if state.record is not None:
            state.record.edited[state.layer] = new.detach()
    return out, weights


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(IMPLEMENTATION, _edit_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)


# -- plumbing ----------------------------------------------------------------------------------------------------
@contextmanager
def attention_implementation(model: nn.Module, adapter: ModelAdapter, name: str) -> Iterator[None]:
    """Run the language model with attention implementation ``name`` inside the block, restoring it after."""
    owner = adapter.decoder if hasattr(adapter.decoder, "set_attn_implementation") else model
    before = owner.config._attn_implementation
    if before == name:
        yield
        return
    owner.set_attn_implementation(name)
    try:
        yield
    finally:
        owner.set_attn_implementation(before)


@contextmanager
def edited_attention(model: nn.Module, plans: Sequence[AttentionReweighting] = (), *,
                     record_layers: Sequence[int] = (), queries: str | torch.Tensor = "last",
                     value_output_norms: bool = False) -> Iterator[AttentionRecord]:
    """Re-weight attention by ``plans`` and record probabilities of ``record_layers`` inside the block.

    Args:
        plans: :class:`AttentionReweighting` items (several per layer are applied in order).
        record_layers: layers whose probability rows (all heads) are recorded.
        queries: ``"last"`` (the last query row of each call) or absolute positions ``[B, Q]`` to record.
        value_output_norms: also record ``‖v_s W_O[slice_h]‖`` per head and source of the recorded layers.

    Example:
        >>> with edited_attention(model, record_layers=[0, 1], queries=label_positions) as record:
        ...     model(**batch.inputs)
        >>> record.rows[0].shape          # [B, H, k, T]
    """
    adapter = get_adapter(model)
    _register()
    record = AttentionRecord() if record_layers else None
    layers = sorted({adapter.check_layer(p.layer) for p in plans} | {adapter.check_layer(x) for x in record_layers})
    queries = queries if isinstance(queries, str) else torch.as_tensor(queries, dtype=torch.long)
    modules = []
    try:
        for layer in layers:
            module = attention_module(adapter, layer)
            stock_eager_attention(module)
            recorded = layer in {adapter.check_layer(x) for x in record_layers}
            rows = adapter.attn_output_weight(layer).detach() if (recorded and value_output_norms) else None
            for plan in plans:
                if plan.heads.numel() and int(plan.heads.max()) >= adapter.n_heads:
                    raise NeuronscopeError(f"head {int(plan.heads.max())} is out of range ({adapter.n_heads} heads)")
            state = _LayerState(layer, [p for p in plans if adapter.check_layer(p.layer) == layer],
                                record if recorded else None, queries, rows)
            object.__setattr__(module, _STATE, state)
            modules.append(module)
        with attention_implementation(model, adapter, IMPLEMENTATION):
            yield record if record is not None else AttentionRecord()
    finally:
        for module in modules:
            if hasattr(module, _STATE):
                object.__delattr__(module, _STATE)
