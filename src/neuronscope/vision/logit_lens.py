"""The logit lens over image tokens: which word each image patch "says" at each layer.

For a vision-language model, the residual stream at an image-token position is read through the model's own final
norm and unembedding, as if the model stopped there (nostalgebraist's logit lens, applied to image positions as
Yu & Ananiadou 2024 do for LLaVA):

    logits_l(s) = W_U · norm_f(h_l(s)) + b_U          (then the model's logit soft-cap, if any)

``h_0`` is the language model's input at the image positions, i.e. the visual embeddings after the projector; ``h_l``
(l = 1..L) is the output of decoder layer l - 1 (``output_hidden_states[l]`` of Hugging Face models). The final
norm uses each row's own scale (the model's real norm module), not a frozen one.

Only what is asked is kept: per (stage, patch) the top-``k`` tokens and the rank of a few chosen tokens (rank 0 = the
top token; rank = how many tokens have a strictly larger logit). Logits exist one ``[chunk, vocab]`` block at a
time; no ``stages × patches × vocab`` tensor is built.

Example:
    >>> lens = image_logit_lens(model, batch, layout.positions, k=3, token_ids=[red_id])  # doctest: +SKIP
    >>> lens.top_ids[-1, 0]       # the 3 top tokens of the first patch after the last layer  # doctest: +SKIP
    >>> lens.ranks[:, :, 0]       # rank of "red" per (stage, patch)                           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neuronscope.errors import InputError
from neuronscope.models.adapter import get_adapter
from neuronscope.trace.capture import capture

DEFAULT_CHUNK = 256


# ---------------------------------------------------------------------------------------------------- pure math
def top_tokens_and_ranks(
    logits: torch.Tensor, k: int, token_ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` tokens (ids and log-probabilities) and the ranks of ``token_ids`` in each row of ``logits``.

    Args:
        logits: ``[n, vocab]``.
        k: tokens kept per row (clipped to the vocabulary).
        token_ids: ``[m]`` tokens whose rank is wanted (default none).

    Returns:
        ``(top_ids [n, k], top_log_probs [n, k], ranks [n, m])``: ties in the top-k go to the lower id; a rank is
        the number of tokens with a strictly larger logit (0 = the top token).

    Example:
        >>> ids, _, ranks = top_tokens_and_ranks(torch.tensor([[0.0, 3.0, 1.0]]), 2, torch.tensor([2, 0]))
        >>> ids.tolist(), ranks.tolist()
        ([[1, 2]], [[1, 2]])
    """
    if logits.dim() != 2:
        raise InputError(f"logits must be [n, vocab], got {tuple(logits.shape)}")
    k = min(int(k), logits.shape[1])
    values = logits.float()
    log_probs = values.log_softmax(-1)
    # stable sort: equal logits keep id order, so the top-k is deterministic
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices[:, :k]
    top_log_probs = log_probs.gather(-1, order)
    if token_ids is None or token_ids.numel() == 0:
        return order, top_log_probs, torch.zeros(values.shape[0], 0, dtype=torch.long)
    chosen = values.gather(-1, token_ids.to(values.device).reshape(1, -1).expand(values.shape[0], -1))  # [n, m]
    ranks = (values[:, None, :] > chosen[:, :, None]).sum(-1)
    return order, top_log_probs, ranks


# ---------------------------------------------------------------------------------------------------- model plumbing
@dataclass
class LogitLens:
    """The logit lens over a row's image tokens.

    Attributes:
        stages: names of the read-outs: ``"embeddings"`` (after the projector), then ``"layer 0"`` ... (outputs).
        positions: ``[P]`` the sequence positions read (image tokens, in the layout's order).
        top_ids: ``[stages, P, k]`` top tokens; ``top_log_probs``: their log-probabilities.
        token_ids: ``[m]`` tokens whose rank was asked; ``ranks``: ``[stages, P, m]``; ``token_log_probs``:
            ``[stages, P, m]`` their log-probabilities.
    """

    stages: list[str]
    positions: torch.Tensor
    top_ids: torch.Tensor
    top_log_probs: torch.Tensor
    token_ids: torch.Tensor
    ranks: torch.Tensor
    token_log_probs: torch.Tensor

    def top_tokens(self, tokenizer: Any, stage: int = -1) -> list[list[str]]:
        """The decoded top tokens of one stage: one list of ``k`` strings per position."""
        return [[tokenizer.decode([int(t)]) for t in row] for row in self.top_ids[stage]]


def _residuals(model: nn.Module, batch: Any, positions: torch.Tensor, stages: list[int]) -> list[torch.Tensor]:
    """``[P, d_model]`` per stage: 0 = decoder input (embeddings), l = output of layer l - 1."""
    explicit = positions.reshape(1, -1)
    layers = sorted({max(stage - 1, 0) for stage in stages})
    sites = ["resid_post"] + (["resid_pre"] if 0 in stages else [])
    with capture(model, sites=sites, layers=layers, positions=explicit) as acts:
        model(**batch.inputs)
    out = []
    for stage in stages:
        site, layer = ("resid_pre", 0) if stage == 0 else ("resid_post", stage - 1)
        out.append(acts.get(site, layer)[0])
    return out


@torch.no_grad()
def image_logit_lens(
    model: nn.Module,
    batch: Any,
    positions: torch.Tensor | Sequence[int],
    *,
    k: int = 5,
    token_ids: torch.Tensor | Sequence[int] | None = None,
    stages: Sequence[int] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> LogitLens:
    """Read the residual stream at ``positions`` of a one-row ``batch`` through the final norm and unembedding.

    Args:
        model: a vision-language (or any causal) model with an adapter.
        batch: a :class:`~neuronscope.inputs.batch.Batch` of one row (image + prompt).
        positions: ``[P]`` positions to read, e.g. ``image_layout(...).positions``.
        k: top tokens kept per (stage, position) (default 5).
        token_ids: tokens whose rank and log-probability are kept (e.g. the answer word), default none.
        stages: which read-outs, ``0`` = embeddings, ``l`` = output of layer ``l - 1`` (default all ``0..L``).
        chunk_size: positions unembedded at once.

    Returns:
        :class:`LogitLens`.

    Example:
        >>> lens = image_logit_lens(model, batch, layout.positions, k=1)  # doctest: +SKIP
    """
    if len(batch) != 1:
        raise InputError(f"the logit lens reads one row at a time; got a batch of {len(batch)}: use batch.select([i])")
    adapter = get_adapter(model)
    positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    if positions.numel() == 0:
        raise InputError("no positions to read: pass the image-token positions of the row (layout.positions)")
    stages = list(range(adapter.n_layers + 1)) if stages is None else [int(s) for s in stages]
    bad = [s for s in stages if not 0 <= s <= adapter.n_layers]
    if bad:
        raise InputError(f"stages {bad} out of range: 0 (embeddings) to {adapter.n_layers} (last layer's output)")
    tokens = torch.as_tensor([] if token_ids is None else token_ids, dtype=torch.long).reshape(-1)
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= adapter.vocab_size):
        raise InputError(f"token ids must be within [0, {adapter.vocab_size}), got {tokens.tolist()}")
    tops, top_lps, ranks, token_lps = [], [], [], []
    for residual in _residuals(model, batch, positions, stages):
        parts: list[list[torch.Tensor]] = [[], [], [], []]
        for start in range(0, residual.shape[0], chunk_size):
            logits = adapter.logits_from_residual(residual[start:start + chunk_size]).float()
            ids, lps, rank = top_tokens_and_ranks(logits, k, tokens)
            picked = logits.log_softmax(-1)[:, tokens.to(logits.device)] if tokens.numel() else rank.float()
            for part, value in zip(parts, (ids, lps, rank, picked), strict=True):
                part.append(value.cpu())
        tops.append(torch.cat(parts[0]))
        top_lps.append(torch.cat(parts[1]))
        ranks.append(torch.cat(parts[2]))
        token_lps.append(torch.cat(parts[3]))
    names = ["embeddings" if s == 0 else f"layer {s - 1}" for s in stages]
    return LogitLens(names, positions, torch.stack(tops), torch.stack(top_lps), tokens, torch.stack(ranks),
                     torch.stack(token_lps))


__all__ = ["DEFAULT_CHUNK", "LogitLens", "image_logit_lens", "top_tokens_and_ranks"]
