"""Knowledge-editing metrics in the sense of ROME (Meng et al. 2022) and EasyEdit (Wang et al. 2024): an edit's
success, reliability (on its own prompts), generalisation (on paraphrases), locality (token agreement of greedy
answers, KL of next-token distributions on unrelated prompts). Pure functions over logits and token ids.

Example:
    >>> edit_success(torch.tensor([[0.0, 3.0]]), torch.tensor([1])).tolist()
    [True]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from neuronscope.errors import InputError, NeuronscopeError

EditRule = Literal["top1", "target_over_source"]


def _check_logits(logits: Tensor, name: str = "logits") -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise InputError(f"{name} must be next-token logits [n, vocab], got {shape}")


def _as_ids(ids: Tensor | Sequence[int], n: int, name: str) -> Tensor:
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if ids.numel() != n:
        raise InputError(f"{name} must hold one token id per prompt ({n}), got {ids.numel()}")
    return ids


def edit_success(
    logits: Tensor,
    target_ids: Tensor | Sequence[int],
    source_ids: Tensor | Sequence[int] | None = None,
    *,
    rule: EditRule = "top1",
) -> Tensor:
    """Per-prompt success of an edit from next-token logits.

    Rules:
        ``"top1"`` (default, EasyEdit's accuracy for a one-token target): the target is the argmax token.
        ``"target_over_source"`` (ROME's efficacy / paraphrase score): ``P(target) > P(source)``, the new
        object more likely than the old one; needs ``source_ids``.

    Args:
        logits: ``[n, vocab]`` next-token logits at the end of each prompt (after the edit).
        target_ids: ``[n]`` the new (target) token of each prompt.
        source_ids: ``[n]`` the old (source / true) token, for ``"target_over_source"``.
        rule: see above.

    Returns:
        ``BoolTensor [n]``.

    Example:
        >>> logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
        >>> edit_success(logits, [1, 2]).tolist()
        [True, False]
        >>> edit_success(logits, [1, 2], [2, 1], rule="target_over_source").tolist()
        [True, True]
    """
    _check_logits(logits)
    target = _as_ids(target_ids, logits.shape[0], "target_ids").to(logits.device)
    if rule == "top1":
        # An exact tie at the maximum is resolved by torch.argmax (the first maximal id).
        return logits.argmax(dim=-1) == target
    if rule == "target_over_source":
        if source_ids is None:
            raise NeuronscopeError(
                'rule "target_over_source" needs source_ids (the old token of each prompt)'
            )
        source = _as_ids(source_ids, logits.shape[0], "source_ids").to(logits.device)
        # Softmax is monotone, so comparing logits compares probabilities.
        return logits.gather(-1, target[:, None]).squeeze(-1) > logits.gather(-1, source[:, None]).squeeze(-1)
    raise NeuronscopeError(f"unknown rule {rule!r}; choose 'top1' or 'target_over_source'")


def reliability(
    logits: Tensor,
    target_ids: Tensor | Sequence[int],
    source_ids: Tensor | Sequence[int] | None = None,
    *,
    rule: EditRule = "top1",
) -> float:
    """Reliability (edit success rate) on the edit prompts themselves: mean of `edit_success`.

    ROME calls it efficacy (rule ``"target_over_source"``); EasyEdit calls it reliability (top-1 accuracy).

    Example:
        >>> reliability(torch.tensor([[0.0, 2.0], [1.0, 0.0]]), [1, 1])
        0.5
    """
    return float(edit_success(logits, target_ids, source_ids, rule=rule).double().mean())


def generalisation(
    paraphrase_logits: Tensor,
    target_ids: Tensor | Sequence[int],
    source_ids: Tensor | Sequence[int] | None = None,
    *,
    rule: EditRule = "top1",
) -> float:
    """Generalisation: `reliability` measured on paraphrases of the edit prompts (ROME: paraphrase score).

    Example:
        >>> generalisation(torch.tensor([[0.0, 2.0]]), [1])
        1.0
    """
    return reliability(paraphrase_logits, target_ids, source_ids, rule=rule)


def token_agreement(
    original_tokens: Sequence[Sequence[int]] | Tensor, edited_tokens: Sequence[Sequence[int]] | Tensor
) -> float:
    """Locality as EasyEdit measures it: agreement of greedy outputs before and after the edit.

    For each unrelated prompt, the fraction of positions of the original greedy output where the edited
    model produced the same token (positions the edited output lacks count as disagreement); then the mean
    over prompts. 1.0 = the edit left these prompts untouched.

    Args:
        original_tokens: per prompt, the token ids the original model generated (greedy).
        edited_tokens: per prompt, the edited model's token ids.

    Example:
        >>> token_agreement([[1, 2, 3, 4], [5, 6]], [[1, 2, 0, 4], [5]])
        0.625
    """
    originals, editeds = list(original_tokens), list(edited_tokens)
    if len(originals) != len(editeds):
        raise InputError(f"got {len(originals)} original outputs but {len(editeds)} edited outputs")
    if not originals:
        raise InputError("no locality prompts given")
    per_prompt = []
    for i, (original, edited) in enumerate(zip(originals, editeds, strict=True)):
        original = torch.as_tensor(original, dtype=torch.long).reshape(-1)
        edited = torch.as_tensor(edited, dtype=torch.long).reshape(-1)
        if original.numel() == 0:
            raise InputError(f"original output {i} is empty; generate at least one token per prompt")
        length = min(original.numel(), edited.numel())
        same = int((original[:length] == edited[:length]).sum())
        per_prompt.append(same / original.numel())
    return sum(per_prompt) / len(per_prompt)


def kl_divergence(original_logits: Tensor, edited_logits: Tensor) -> Tensor:
    """``KL(P_original || P_edited) = sum_v p(v) (log p(v) - log q(v))`` per row, from logits.

    Computed in float64 from log-softmax; terms with ``p(v) = 0`` contribute 0.

    Args:
        original_logits: ``[..., vocab]``.
        edited_logits: ``[..., vocab]``.

    Returns:
        float64 ``[...]`` (in nats).

    Example:
        >>> p = torch.log(torch.tensor([[0.5, 0.5]]))
        >>> q = torch.log(torch.tensor([[0.25, 0.75]]))
        >>> round(kl_divergence(p, q).item(), 6)
        0.143841
    """
    if original_logits.shape != edited_logits.shape:
        raise InputError(
            f"original and edited logits must have the same shape, got {tuple(original_logits.shape)} "
            f"and {tuple(edited_logits.shape)}"
        )
    log_p = torch.log_softmax(original_logits.double(), dim=-1)
    log_q = torch.log_softmax(edited_logits.double(), dim=-1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros((), dtype=torch.float64))
    return terms.sum(dim=-1)


def locality_kl(original_logits: Tensor, edited_logits: Tensor) -> float:
    """Mean ``KL(original || edited)`` of next-token distributions over unrelated prompts (0 = unchanged).

    Example:
        >>> locality_kl(torch.zeros(2, 5), torch.zeros(2, 5))
        0.0
    """
    _check_logits(original_logits, "original_logits")
    return float(kl_divergence(original_logits, edited_logits).mean())
