"""The optimiser, the schedule and the three training stages of the bundled model.

1. :func:`vision_stage`: the CLIP tower alone learns per-patch shape and colour labels through a throwaway linear
   head (standing in for the pretrained CLIP that a real LLaVA starts from);
2. :func:`text_stage`: the Llama alone on the text tasks;
3. :func:`joint_stage`: the projector and the Llama (and the vision tower with ``freeze_vision=False``) on image
   and text batches in every step, with the optional patch-word loss at the image tokens.

Each stage appends its logged losses and a held-out check to ``history``.

Example:
    >>> lr_at = schedule(TrainConfig(), steps=1000)  # doctest: +SKIP
    >>> lr_at(0), lr_at(100)  # doctest: +SKIP
    (1e-05, 0.001)
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from neuronscope.bundled import knowledge, world
from neuronscope.bundled.training.batches import (
    PatchWords,
    answer_loss,
    image_batch,
    model_inputs,
    next_token_loss,
    patch_labels,
    patch_word_loss,
    text_batch,
)
from neuronscope.bundled.training.config import TrainConfig

Losses = dict[str, torch.Tensor]


@dataclass
class Run:
    """What the stages share: the recipe, the model and processor, the example stream and the log."""

    config: TrainConfig
    model: Any
    processor: Any
    rng: random.Random
    facts: list[knowledge.Fact]
    log_every: int = 50
    start: float = field(default_factory=time.time)
    history: list[dict[str, Any]] = field(default_factory=list)

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        print(json.dumps(record), flush=True)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.config.device) for k, v in batch.items()}


def schedule(config: TrainConfig, steps: int) -> Callable[[int], float]:
    """Learning rate at each step: linear warm-up over ``config.warmup`` steps, then cosine decay to 0."""

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return config.lr * (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, steps - config.warmup)
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))

    return lr_at


def optimizer(params: list[tuple[str, torch.nn.Parameter]], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (betas 0.9/0.98), weight decay on matrices only."""
    decay = [p for _, p in params if p.ndim >= 2]
    no_decay = [p for _, p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )


class ActivationPenalty:
    """Mean |activation| of the language model's FFN neurons (inputs of every ``down_proj``) over the calls made
    while it is ``active``: an L1 pressure towards few active neurons per token (``--activation-l1``).

    Tried for the shipped model and left off: with ReLU and this penalty, zeroing a colour's located neurons
    changed its captions *less* (the model moved the work to attention); see MODEL_CARD.md."""

    def __init__(self, language_model: torch.nn.Module):
        self.active = False
        self._terms: list[torch.Tensor] = []
        self._handles = [layer.mlp.down_proj.register_forward_pre_hook(self._record)
                         for layer in language_model.layers]  # fmt: skip

    def _record(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if self.active:
            self._terms.append(args[0].abs().mean())

    def take(self) -> torch.Tensor:
        """The mean of the terms recorded since the last call (0 if none)."""
        terms, self._terms = self._terms, []
        return torch.stack(terms).mean() if terms else torch.zeros(())

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def run_steps(run: Run, name: str, steps: int, params: list[tuple[str, torch.nn.Parameter]],
              loss_fn: Callable[[], Losses], opt: torch.optim.Optimizer | None = None) -> None:  # fmt: skip
    """``steps`` optimiser steps (``opt``, default a fresh :func:`optimizer` of ``params``) on the sum of
    ``loss_fn()``'s losses (gradients clipped to norm 1), logged every ``run.log_every`` steps and at the last."""
    opt = optimizer(params, run.config) if opt is None else opt
    lr_at = schedule(run.config, steps)
    tensors = [p for _, p in params]
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        losses = loss_fn()
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(tensors, 1.0)
        opt.step()
        if step % run.log_every == 0 or step == steps - 1:
            run.log({"stage": name, "step": step, **{k: round(v.item(), 4) for k, v in losses.items()},
                     "seconds": round(time.time() - run.start, 1)})  # fmt: skip


def vision_stage(run: Run) -> None:
    """Stage 1: the vision tower and a throwaway linear head on per-patch shape and colour labels; then the
    held-out per-patch shape accuracy on object patches (64 test scenes)."""
    config, processor, device = run.config, run.processor, run.config.device
    vision = run.model.model.vision_tower
    head = torch.nn.Linear(config.vision_hidden, len(world.SHAPES) + len(world.COLOURS) + 2).to(device)
    n_shape = len(world.SHAPES) + 1

    def features(scenes: list[world.Scene]) -> torch.Tensor:
        pixels = processor.image_processor([world.render_scene(sc) for sc in scenes], return_tensors="pt")
        return vision(pixels["pixel_values"].to(device), output_hidden_states=True).hidden_states[-1][:, 1:]

    def losses() -> Losses:
        scenes = [world.sample_scene(run.rng) for _ in range(config.vision_pretrain_batch)]
        labels = [patch_labels(sc) for sc in scenes]
        shape_labels = torch.stack([lab[0] for lab in labels]).to(device)
        colour_labels = torch.stack([lab[1] for lab in labels]).to(device)
        logits = head(features(scenes))
        shape_logits, colour_logits = logits[..., :n_shape], logits[..., n_shape:]
        cross_entropy = torch.nn.functional.cross_entropy
        return {"patch_shape_loss": cross_entropy(shape_logits.flatten(0, 1), shape_labels.flatten()),
                "patch_colour_loss": cross_entropy(colour_logits.flatten(0, 1), colour_labels.flatten())}  # fmt: skip

    if config.vision_pretrain_steps <= 0:
        return
    run_steps(run, "vision", config.vision_pretrain_steps,
              list(vision.named_parameters()) + list(head.named_parameters()), losses)  # fmt: skip
    with torch.no_grad():
        scenes = world.sample_scenes(64, seed=config.seed, split="test")
        predicted = head(features(scenes))[..., :n_shape].argmax(-1).cpu()
        truth = torch.stack([patch_labels(sc)[0] for sc in scenes])
        on_object = truth > 0
        accuracy = (predicted[on_object] == truth[on_object]).float().mean().item()
    run.log({"stage": "vision", "held_out_patch_shape_accuracy": round(accuracy, 4)})


def text_stage(run: Run, penalty: ActivationPenalty) -> None:
    """Stage 2: the language model alone on the text tasks; then the held-out MCQA accuracy."""
    from neuronscope.bundled.training.evaluate import next_token_answers

    config, model = run.config, run.model
    if config.text_pretrain_steps <= 0:
        return
    params = list(model.model.language_model.named_parameters()) + list(model.lm_head.named_parameters())

    def losses() -> Losses:
        texts = text_batch(run.processor.tokenizer, run.rng, config.text_pretrain_batch, run.facts, config.text_mix)
        return with_penalty(config, penalty, {"text_loss": answer_loss(model, run.to_device(texts))})

    run_steps(run, "text", config.text_pretrain_steps, params, losses)
    model.eval()
    penalty.active = False
    records = knowledge.mcqa_dataset("test", n_variants=3, seed=config.seed)
    predicted = next_token_answers(model, run.processor.tokenizer, [s for r in records for s in r.sentences])
    letters = [label for r in records for label in r.obj_label]
    accuracy = sum(p == t for p, t in zip(predicted, letters, strict=False)) / len(letters)
    run.log({"stage": "text", "held_out_mcqa_accuracy": round(accuracy, 4)})
    model.train()
    penalty.active = config.activation_l1 > 0


def joint_stage(run: Run, penalty: ActivationPenalty) -> None:
    """Stage 3: every trainable part (the vision tower only with ``freeze_vision=False``) on an image batch and a
    text batch in every step, plus ``patch_word_loss`` x :func:`~.batches.patch_word_loss` if that weight is > 0."""
    config, model = run.config, run.model
    vision = model.model.vision_tower
    if config.freeze_vision:
        vision.requires_grad_(False)
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    words = PatchWords.of(run.processor.tokenizer) if config.patch_word_loss > 0 else None

    def losses() -> Losses:
        images = run.to_device(image_batch(run.processor, run.rng, config.image_batch, config.caption_fraction,
                                           with_patch_labels=words is not None))  # fmt: skip
        texts = text_batch(run.processor.tokenizer, run.rng, config.text_batch, run.facts, config.text_mix)
        logits = model(**model_inputs(images)).logits
        out = {"image_loss": next_token_loss(logits, images["labels"]),
               "text_loss": answer_loss(model, run.to_device(texts))}  # fmt: skip
        if words is not None:
            out["patch_word_loss"] = config.patch_word_loss * patch_word_loss(logits, images, words)
        return with_penalty(config, penalty, out)

    run_steps(run, "joint", config.steps, params, losses)
    vision.requires_grad_(True)


def with_penalty(config: TrainConfig, penalty: ActivationPenalty, losses: Losses) -> Losses:
    """``losses`` plus the weighted activation penalty when it is active."""
    if penalty.active:
        losses["activation_l1"] = config.activation_l1 * penalty.take()
    return losses
