"""Optimised edit of value vectors (DESIGN §3.1 (b)): learn ``Δ_i`` for chosen neurons with Adam.

Loss = target term + ``kl_weight`` · KL(original ‖ edited) of next-token distributions on unrelated prompts +
``norm_weight`` · Σ‖Δ_i‖². The target term is ``−log p(t)`` to promote a token (replace an answer, correct a
hallucinated object) or ``−log(1 − p(t))`` to demote one (remove a sensitive word). Training runs with a forward hook
that adds ``Σ_i a_i Δ_i`` to the FFN output — exactly what ``w_i += Δ_i`` does — so no weight changes until the
result, a :class:`~neuronscope.edit.weights.ValueVectorEdit`, is applied. Early stop when the goal is met on every
edit prompt (promote: target is top-1; demote: target probability below ``demote_below``) or the loss stops
improving for ``patience`` steps.

Example:
    >>> edit = optimise_edit(model, neurons, batch, word_targets(tok, batch, "Rome"), unrelated=other_batch)
    >>> with edit.applied(model): ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from neuronscope.edit.weights import ValueVectorEdit, _check_neurons
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models.adapter import get_adapter

GOALS = ("promote", "demote")


@dataclass
class OptimiseLog:
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    stopped: str = ""


def _target_log_probs(logits: torch.Tensor, targets: TargetSet) -> torch.Tensor:
    """``[batch, n]`` log-probabilities of the targets at their positions."""
    rows = torch.arange(logits.shape[0], device=logits.device)[:, None].expand_as(targets.positions)
    picked = logits[rows, targets.positions.to(logits.device)].float().log_softmax(-1)  # [B, n, V]
    return picked.gather(-1, targets.token_ids.to(logits.device)[..., None])[..., 0]


def _add_delta_hooks(adapter, neurons: torch.Tensor, deltas: torch.Tensor) -> list:
    """Hooks adding ``Σ_i a_i Δ_i`` to each layer's FFN output: the effect of ``w_i += Δ_i``."""
    handles = []
    for layer in neurons[:, 0].unique().tolist():
        rows = (neurons[:, 0] == layer).nonzero(as_tuple=True)[0]
        index = neurons[rows, 1]

        def add_write(module: nn.Module, args: tuple, output: torch.Tensor, rows=rows, index=index) -> torch.Tensor:
            acts = args[0][..., index.to(args[0].device)]  # [B, T, n_layer]
            return output + (acts.float() @ deltas[rows.to(deltas.device)].to(acts.device)).to(output.dtype)

        handles.append(adapter.module(layer, adapter.family.down).register_forward_hook(add_write))
    return handles


def optimise_edit(
    model: nn.Module,
    neurons: torch.Tensor,
    batch: Batch,
    targets: TargetSet,
    *,
    goal: str = "promote",
    unrelated: Batch | None = None,
    kl_weight: float = 1.0,
    norm_weight: float = 1e-3,
    lr: float = 1e-2,
    steps: int = 200,
    patience: int = 20,
    demote_below: float = 0.01,
    reason: str = "",
) -> ValueVectorEdit:
    """Learn value-vector deltas for ``neurons [n, 2]`` (``[n, 3]`` (layer, expert, index) of an MoE model) so that ``targets`` are promoted / demoted on ``batch``.

    Args:
        model: the model (weights are not changed).
        neurons: the neurons whose value vectors may move.
        batch, targets: the edit prompts and their target tokens at their positions.
        goal: ``"promote"`` or ``"demote"``.
        unrelated: prompts whose next-token distributions (all real positions) should stay (KL term).
        kl_weight, norm_weight, lr, steps, patience: optimisation settings (all finite, steps ≥ 1).
        demote_below: the demote goal is met when every target's probability is below this.

    Returns:
        A :class:`ValueVectorEdit` with ``method="optimised"`` and its settings and loss history in ``params``.
    """
    if goal not in GOALS:
        raise NeuronscopeError(f"unknown goal '{goal}': use one of {', '.join(GOALS)}")
    for name, value in (("kl_weight", kl_weight), ("norm_weight", norm_weight), ("lr", lr)):
        if not math.isfinite(value) or value < 0:
            raise NeuronscopeError(f"{name} must be a finite, non-negative number, got {value}")
    if steps < 1:
        raise NeuronscopeError("steps must be at least 1")
    adapter = get_adapter(model)
    neurons = _check_neurons(adapter, neurons)
    first_param = next(model.parameters())
    deltas = torch.zeros(len(neurons), adapter.d_model, device=first_param.device, dtype=torch.float32,
                         requires_grad=True)
    trainable = [param for param in model.parameters() if param.requires_grad]
    for param in trainable:
        param.requires_grad_(False)
    reference = None
    if unrelated is not None:
        with torch.no_grad():
            reference = model(**unrelated.inputs).logits.float().log_softmax(-1)
    if neurons.shape[1] == 3:  # (layer, expert, index) rows of an MoE model
        from neuronscope.edit.experts import expert_delta_hooks

        handles = expert_delta_hooks(adapter, neurons, deltas)
    else:
        handles = _add_delta_hooks(adapter, neurons, deltas)
    try:
        optimiser = torch.optim.Adam([deltas], lr=lr)
        log = OptimiseLog()
        best, since_best = float("inf"), 0
        valid = targets.valid.to(first_param.device)
        for step in range(steps):
            optimiser.zero_grad()
            loss = _loss(model, batch, targets, valid, goal, deltas, norm_weight, unrelated, reference, kl_weight)
            loss.backward()
            optimiser.step()
            log.losses.append(float(loss.detach()))
            log.steps = step + 1
            if _goal_met(model, batch, targets, valid, goal, demote_below):
                log.stopped = "goal met"
                break
            if log.losses[-1] < best - 1e-6:
                best, since_best = log.losses[-1], 0
            else:
                since_best += 1
                if since_best >= patience:
                    log.stopped = "no improvement"
                    break
        else:
            log.stopped = "max steps"
    finally:
        for handle in handles:
            handle.remove()
        for param in trainable:
            param.requires_grad_(True)
    params = {"goal": goal, "kl_weight": kl_weight, "norm_weight": norm_weight, "lr": lr, "steps": log.steps,
              "stopped": log.stopped, "final_loss": log.losses[-1] if log.losses else None,
              "targets": targets.describe()}
    return ValueVectorEdit.from_deltas(model, neurons, deltas.detach(), "optimised", params, reason)


def _loss(model: nn.Module, batch: Batch, targets: TargetSet, valid: torch.Tensor, goal: str, deltas: torch.Tensor,
          norm_weight: float, unrelated: Batch | None, reference: torch.Tensor | None,
          kl_weight: float) -> torch.Tensor:
    """Target NLL (promote) or -log(1 - p) (demote), plus the deltas' norm penalty and the KL on ``unrelated``."""
    log_probs = _target_log_probs(model(**batch.inputs).logits, targets)
    if goal == "promote":
        target_loss = -(log_probs * valid).sum() / valid.sum()
    else:
        target_loss = -(torch.log1p(-log_probs.exp().clamp(max=1 - 1e-6)) * valid).sum() / valid.sum()
    loss = target_loss + norm_weight * deltas.pow(2).sum()
    if reference is not None and kl_weight > 0:
        edited = model(**unrelated.inputs).logits.float().log_softmax(-1)
        mask = unrelated.inputs["attention_mask"].to(edited.device).float()
        kl = (reference.exp() * (reference - edited)).sum(-1)
        loss = loss + kl_weight * (kl * mask).sum() / mask.sum()
    return loss


@torch.no_grad()
def _goal_met(model: nn.Module, batch: Batch, targets: TargetSet, valid: torch.Tensor, goal: str,
              demote_below: float) -> bool:
    """After a step: is every target top-1 (promote), or below ``demote_below`` (demote)?"""
    logits = model(**batch.inputs).logits
    rows = torch.arange(logits.shape[0], device=logits.device)[:, None].expand_as(targets.positions)
    at_targets = logits[rows, targets.positions.to(logits.device)].float()
    if goal == "promote":
        return bool(((at_targets.argmax(-1) == targets.token_ids.to(logits.device)) | ~valid).all())
    probs = _target_log_probs(logits, targets).exp()
    return bool(((probs < demote_below) | ~valid).all())
