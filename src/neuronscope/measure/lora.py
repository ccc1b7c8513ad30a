"""LoRA fine-tuning with ``peft`` for the LoRA-mechanism and pruning experiments (Yu & Ananiadou 2024, "Interpreting
Arithmetic Mechanism in LLMs through Comparative Neuron Analysis").

:func:`train_lora` fine-tunes a **copy** of a model (the original is never touched) with low-rank adapters on the
given target modules, minimising the cross-entropy of each prompt's target token at its position (teacher forcing
of one token; full batch or minibatches, AdamW, seeded), optionally with interventions active all along — pruned
neurons zeroed at every position stay pruned while the adapters learn, whatever modules they sit on (the zeroing
acts on the input of the FFN's output projection, after any adapter on its input projections). The adapters are
then merged into the copy's weights (``merge_and_unload``): the result is a plain model of the same architecture,
so CNA, LPI and every intervention work on it as on the original.

``peft`` is an optional dependency (``pip install 'neuronscope[lora]'``); nothing else in neuronscope needs it.

Example:
    >>> tuned = train_lora(model, batch, targets, rank=8, steps=40)
    >>> tuned.model                       # merged copy; tuned.losses: one loss per step
    >>> comparative(model, batch, targets, model_b=tuned.model)     # CNA: base vs LoRA
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError, OptionError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.trace import Intervention, intervene

#: What the experiments adapt by default: peft's own default for the family (q_proj and v_proj for Llama-like
#: models), read from peft when ``target_modules`` is None.
DEFAULT_TARGETS = None


def require_peft() -> Any:
    """The ``peft`` module, or an error saying how to install it."""
    try:
        import peft
    except ImportError:  # pragma: no cover - depends on the environment
        raise OptionError("LoRA training needs the optional package 'peft': pip install 'neuronscope[lora]' "
                         "(or pip install peft)") from None
    return peft


@dataclass
class LoRATraining:
    """A merged LoRA-tuned copy and how it was made.

    Attributes:
        model: the copy with the adapters merged into its weights (plain modules, eval mode).
        losses: the training loss after each step (mean cross-entropy over the rows of that step).
        config: rank, alpha, modules, steps, learning rate, seed, trainable parameter count, wall and CPU time.
    """

    model: nn.Module
    losses: list[float] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def target_loss(logits: torch.Tensor, targets: TargetSet) -> torch.Tensor:
    """Pure math: mean cross-entropy of the valid targets, logits ``[B, T, V]`` at each target's position.

    Example:
        >>> logits = torch.zeros(1, 2, 4); logits[0, 1, 3] = 10.0
        >>> round(float(target_loss(logits, TargetSet(torch.tensor([[3]]), torch.tensor([[1]]),
        ...                                             torch.tensor([[True]]), [["x"]]))), 4)
        0.0001
    """
    rows, columns = targets.valid.nonzero(as_tuple=True)
    picked = logits[rows.to(logits.device), targets.positions[rows, columns].to(logits.device)].float()
    return nn.functional.cross_entropy(picked, targets.token_ids[rows, columns].to(logits.device))


def train_lora(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet,
    *,
    rank: int = 8,
    alpha: float | None = None,
    target_modules: Sequence[str] | None = DEFAULT_TARGETS,
    steps: int = 40,
    learning_rate: float = 1e-3,
    batch_size: int | None = None,
    interventions: Sequence[Intervention] = (),
    seed: int = 0,
) -> LoRATraining:
    """Fine-tune a copy of ``model`` with LoRA on ``batch`` / ``targets`` and merge the adapters.

    Args:
        model: the model (left unchanged).
        batch: left-padded training prompts.
        targets: the token each prompt should produce, at its position (e.g. the answer after ``"3+5="``).
        rank, alpha: LoRA rank and scaling ``alpha`` (default ``2 · rank``).
        target_modules: module names to adapt (default: peft's default for the model type, e.g. q_proj, v_proj).
        steps: optimiser steps (each over ``batch_size`` rows, cycling; default the whole batch every step).
        learning_rate: AdamW learning rate (no weight decay).
        interventions: active during training (e.g. :func:`neuronscope.measure.pruning.pruning_interventions`);
            built for ``model``, they act on the copy by module path.
        seed: seeds the adapters' initialisation and the row order.

    Returns:
        :class:`LoRATraining`.

    Example:
        >>> tuned = train_lora(model, batch, token_targets(batch, answers), steps=30, learning_rate=1e-3)
    """
    peft = require_peft()
    if rank < 1 or steps < 1 or learning_rate <= 0:
        raise NeuronscopeError(f"rank and steps must be at least 1 and the learning rate positive: got rank {rank}, "
                               f"steps {steps}, learning rate {learning_rate}")
    if not bool(targets.valid.any()):
        raise NeuronscopeError("no valid target to train on: give each prompt its answer token")
    start, start_cpu = time.perf_counter(), time.process_time()
    tuned = copy.deepcopy(model)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=0.0,
                             target_modules=list(target_modules) if target_modules else None, bias="none")
    with torch.random.fork_rng(devices=[]):  # seeded adapters, the caller's random state untouched
        torch.manual_seed(seed)
        try:
            wrapped = peft.get_peft_model(tuned, config)
        except ValueError as error:  # peft: no default target modules for this model type
            raise NeuronscopeError(f"peft could not place LoRA adapters: {error}; name target_modules") from None
    placed = sorted(wrapped.peft_config["default"].target_modules or [])
    wrapped.train()
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(seed))
    size = len(batch) if batch_size is None else min(batch_size, len(batch))
    losses = []
    with intervene(tuned, list(interventions)):
        for step in range(steps):
            rows = order[torch.arange(step * size, (step + 1) * size) % len(batch)]
            part = batch.select(rows)
            part_targets = TargetSet(targets.token_ids[rows], targets.positions[rows], targets.valid[rows],
                                     [list(targets.labels[int(r)]) for r in rows])
            loss = target_loss(wrapped(**part.inputs).logits, part_targets)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
    merged = wrapped.merge_and_unload().eval()
    for parameter in merged.parameters():
        parameter.requires_grad_(False)
    record = {"rank": rank, "alpha": config.lora_alpha, "target_modules": placed,
              "steps": steps, "learning_rate": learning_rate, "batch_size": size, "seed": seed,
              "trainable_parameters": sum(p.numel() for p in trainable), "peft": peft.__version__,
              "wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(time.process_time() - start_cpu, 1),
              "interventions": len(interventions)}
    return LoRATraining(merged, losses, record)


__all__ = ["DEFAULT_TARGETS", "LoRATraining", "require_peft", "target_loss", "train_lora"]
