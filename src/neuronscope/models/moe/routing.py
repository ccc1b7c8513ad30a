"""Routing rules of each MoE family as functions of the router's logits, so that routing can be re-run with some
experts excluded (drop and re-route), restricted to a forced set (force a routing) or read as probabilities.

A rule is ``rule(router, logits [N, E], allowed [N, E] | None, dtype) -> (weights [N, k], experts [N, k])``. It reads
the family's settings from the stock router module (``top_k``, ``norm_topk_prob``, ``routed_scaling_factor``,
``n_group`` / ``topk_group``, ``e_score_correction_bias``) and, with ``allowed=None``, returns exactly what the
stock router returns (tested bit for bit for every family). With ``allowed``, experts outside it are never chosen;
the weights of the chosen experts follow the family's own rule from the *unchanged* scores (softmax over all
experts, then top-k renormalisation where the family renormalises; sigmoid scores; softmax over the chosen logits
for gpt-oss / Granite; the sparse mixer for PhiMoE runs with excluded logits at -inf).

``weights`` are what multiplies each expert's output (Llama-4: its input). ``dtype`` is the router input's dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from neuronscope.errors import InputError

Rule = Callable[[nn.Module, torch.Tensor, "torch.Tensor | None", torch.dtype], tuple[torch.Tensor, torch.Tensor]]


def _masked(scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    return scores if allowed is None else scores.masked_fill(~allowed.to(scores.device), float("-inf"))


def _softmax_topk(cast: bool) -> Rule:
    """Mixtral, Qwen2/3-MoE, OLMoE, Qwen3.5-MoE, Qwen3-VL-MoE: softmax over all experts, top-k, renormalise (if
    ``norm_topk_prob``, always for Mixtral)."""

    def rule(router, logits, allowed, dtype):
        probs = torch.nn.functional.softmax(logits, dim=-1, dtype=torch.float)
        top, experts = torch.topk(_masked(probs, allowed), router.top_k, dim=-1)
        if allowed is not None:
            top = probs.gather(-1, experts)
        if getattr(router, "norm_topk_prob", True):
            top = top / top.sum(dim=-1, keepdim=True)
        return (top.to(logits.dtype) if cast else top), experts

    return rule


def _topk_softmax(router, logits, allowed, dtype):
    """gpt-oss and Granite-MoE: top-k of the logits, softmax over the k chosen logits."""
    top, experts = torch.topk(_masked(logits, allowed), router.top_k, dim=-1)
    if allowed is not None:
        top = logits.gather(-1, experts)
    return torch.softmax(top, dim=-1, dtype=top.dtype).to(dtype), experts


def _group_mask(choice: torch.Tensor, n_group: int, topk_group: int, group_score: str) -> torch.Tensor:
    """``[N, E]`` True for the experts of the ``topk_group`` best groups (DeepSeek's group-limited routing)."""
    grouped = choice.view(-1, n_group, choice.shape[-1] // n_group)
    scores = grouped.max(dim=-1).values if group_score == "max" else grouped.topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(scores, k=topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(scores)
    group_mask.scatter_(1, group_idx, 1)
    return group_mask.unsqueeze(-1).expand(-1, n_group, choice.shape[-1] // n_group).reshape(choice.shape).bool()


def _restrict(choice: torch.Tensor, groups: torch.Tensor | None, allowed: torch.Tensor | None, fill: float,
              keep_groups: bool) -> torch.Tensor:
    """The choice scores restricted to the best groups (found on the unchanged scores) and to ``allowed``; a forced
    routing (``keep_groups=False``) is restricted to ``allowed`` only."""
    mask = groups
    if allowed is not None:
        allowed = allowed.to(choice.device)
        mask = allowed if (mask is None or not keep_groups) else mask & allowed
    return choice if mask is None else choice.masked_fill(~mask, fill)


def _softmax_group(router, logits, allowed, dtype, keep_groups=True):
    """DeepSeek-V2: softmax scores; ``greedy`` or ``group_limited_greedy`` (best groups by their max score);
    no renormalisation; times ``routed_scaling_factor``."""
    scores = logits.softmax(dim=-1, dtype=torch.float32)
    choice, groups = scores, None
    if router.topk_method == "group_limited_greedy":
        groups = _group_mask(scores, router.num_group, router.topk_group, "max")
        if allowed is None:
            choice = choice.masked_fill(~groups, 0.0)
    elif router.topk_method != "greedy":
        raise InputError(f"DeepSeek-V2 topk_method '{router.topk_method}' is not covered: add it in "
                         "src/neuronscope/models/moe/routing.py")
    if allowed is not None:
        choice = _restrict(scores, groups, allowed, -1.0, keep_groups)
    weights, experts = torch.topk(choice, k=router.top_k, dim=-1, sorted=False)
    if allowed is not None:
        weights = scores.gather(-1, experts)
    return weights * router.routed_scaling_factor, experts


def _sigmoid_group(router, logits, allowed, dtype, keep_groups=True):
    """DeepSeek-V3, GLM-4-MoE: sigmoid scores; choice = scores + e_score_correction_bias, best groups by the sum
    of their two best choices; weights = the chosen sigmoid scores, renormalised (``norm_topk_prob``), times
    ``routed_scaling_factor``."""
    scores = logits.sigmoid()
    choice = scores + router.e_score_correction_bias
    groups = _group_mask(choice, router.num_group, router.topk_group, "top2")
    choice = _restrict(choice, groups, allowed, float("-inf"), keep_groups)
    experts = torch.topk(choice, k=router.top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, experts)
    if router.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * router.routed_scaling_factor, experts


def _sparse_mixer(router, logits, allowed, dtype):
    """PhiMoE: transformers' own ``sparsemixer`` (eval mode) on the logits, excluded experts at -inf."""
    from transformers.models.phimoe.modeling_phimoe import sparsemixer

    weights, experts = sparsemixer(_masked(logits, allowed), jitter_eps=router.router_jitter_noise,
                                   training=False, top_k=router.top_k)
    return weights, experts


def _llama4(router, logits, allowed, dtype):
    """Llama-4: top-k of the logits; weight = sigmoid of the chosen logit (it scales the expert's input)."""
    top, experts = torch.topk(_masked(logits, allowed), router.top_k, dim=1)
    if allowed is not None:
        top = logits.gather(1, experts)
    return torch.sigmoid(top.float()).to(logits.dtype), experts


#: routing rule name -> function (the ``routing`` field of :class:`~neuronscope.models.moe.spec.MoEFamily`).
RULES: dict[str, Rule] = {
    "softmax_topk": _softmax_topk(cast=True),
    "softmax_topk_float": _softmax_topk(cast=False),
    "topk_softmax": _topk_softmax,
    "softmax_group": _softmax_group,
    "sigmoid_group": _sigmoid_group,
    "sparse_mixer": _sparse_mixer,
    "llama4": _llama4,
}

#: how each rule scores every expert (the "router probability" of router statistics).
SCORES = {"softmax_topk": "softmax", "softmax_topk_float": "softmax", "topk_softmax": "softmax",
          "softmax_group": "softmax", "sigmoid_group": "sigmoid", "sparse_mixer": "softmax", "llama4": "sigmoid"}


GROUPED = ("softmax_group", "sigmoid_group")


def route(rule: str, router: nn.Module, logits: torch.Tensor, allowed: torch.Tensor | None = None,
          dtype: torch.dtype | None = None, keep_groups: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Run routing rule ``rule`` on ``logits [N, E]``; see the module docstring. Raises :class:`InputError` when
    ``allowed`` leaves a token fewer experts than it needs.

    ``keep_groups`` (DeepSeek / GLM group-limited routing): with ``allowed``, the choice stays within the groups
    the unchanged scores select (a dropped expert is replaced by the next one in those groups, the token's other
    experts stay); False for a forced routing, which may name experts of any group.

    Example:
        >>> weights, experts = route("softmax_topk", block.gate, logits, allowed=~one_hot(dropped, E).bool())
    """
    dtype = logits.dtype if dtype is None else dtype
    if rule in GROUPED:
        weights, experts = RULES[rule](router, logits, allowed, dtype, keep_groups)
    else:
        weights, experts = RULES[rule](router, logits, allowed, dtype)
    if allowed is not None:
        ok = allowed.to(experts.device).gather(-1, experts)
        if not bool(ok.all()):
            raise InputError("re-routing left a token fewer allowed experts than the router picks (top-k, or in "
                             "its best groups): drop fewer experts or force a routing instead")
    return weights, experts


def expert_scores(rule: str, logits: torch.Tensor) -> torch.Tensor:
    """Per-expert router scores ``[N, E]`` in float32: softmax of the logits, or sigmoid for sigmoid routers."""
    logits = logits.float()
    return logits.sigmoid() if SCORES[rule] == "sigmoid" else logits.softmax(-1)
