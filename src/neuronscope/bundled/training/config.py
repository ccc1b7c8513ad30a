"""The training recipe of the bundled model (:class:`TrainConfig`) and its command-line options.

Example:
    >>> parser = config_parser()
    >>> config_from(parser, parser.parse_args(["--seed", "3"])).seed
    3
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """Sizes, schedule and seed of a training run (the defaults made the shipped model)."""

    seed: int = 1
    steps: int = 1000  # stage 3 (joint)
    image_batch: int = 24
    text_batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    hidden: int = 128
    layers: int = 4
    intermediate: int = 512
    heads: int = 4
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_intermediate: int = 512
    caption_fraction: float = 0.6  # of image examples; the rest are VQA
    vision_pretrain_steps: int = 1000  # stage 1: vision tower alone on per-patch shape/colour labels
    vision_pretrain_batch: int = 64
    text_pretrain_steps: int = 3000  # stage 2: language model alone on the text tasks
    text_pretrain_batch: int = 64
    text_mix: tuple[float, ...] = (0.1, 0.3, 0.3, 0.1, 0.2)  # cloze, MCQA, option match, sums[, question]
    hidden_act: str = "silu"  # the Llama FFN's activation ("silu" as in Llama, or "relu")
    activation_l1: float = 0.0  # weight of mean |FFN neuron activation| in the language model's loss
    freeze_vision: bool = True  # stage 3 keeps the vision tower fixed (as LLaVA keeps its CLIP)
    patch_word_loss: float = 0.0  # stage 3: weight of the patch-word loss at the image tokens (0: none)
    init_from: str = ""  # a saved model folder to start from instead of fresh weights ("" = from scratch)
    threads: int = 2
    device: str = "cpu"


def config_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The command-line options of a :class:`TrainConfig` (defaults = the shipped model's); see :func:`config_from`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps, help="stage 3 (joint) steps")
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--vision-steps", type=int, default=TrainConfig.vision_pretrain_steps)
    parser.add_argument("--text-steps", type=int, default=TrainConfig.text_pretrain_steps)
    parser.add_argument("--text-mix", type=float, nargs="+", default=list(TrainConfig.text_mix),
                        help="shares of the text tasks: CLOZE MCQA MATCH SUMS [QUESTION]")
    parser.add_argument("--hidden-act", default=TrainConfig.hidden_act, help='FFN activation: "silu" or "relu"')
    parser.add_argument("--activation-l1", type=float, default=TrainConfig.activation_l1,
                        help="weight of the L1 penalty on FFN activations (0: none)")
    parser.add_argument("--train-vision", dest="freeze_vision", action="store_false",
                        help="also train the vision tower in stage 3 (default: fixed, as LLaVA keeps its CLIP)")
    parser.add_argument("--text-batch", type=int, default=TrainConfig.text_pretrain_batch, help="stage 2 batch size")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--patch-word-loss", type=float, default=TrainConfig.patch_word_loss,
                        help="stage 3: weight of the loss that makes each object patch's image token predict its "
                             "colour and shape words (0: none)")
    parser.add_argument("--init-from", default=TrainConfig.init_from,
                        help="start from this saved model folder instead of fresh weights (with --vision-steps 0 "
                             "--text-steps 0: a further stage 3 of that model)")
    parser.add_argument("--device", default=TrainConfig.device, help='"cpu" (default) or "cuda"')
    return parser


def config_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of options parsed by :func:`config_parser` (a usage error for a bad --text-mix)."""
    if len(args.text_mix) not in (4, 5):
        parser.error("--text-mix takes 4 or 5 shares: CLOZE MCQA MATCH SUMS [QUESTION]")
    return TrainConfig(
        steps=args.steps,
        threads=args.threads,
        seed=args.seed,
        device=args.device,
        vision_pretrain_steps=args.vision_steps,
        text_pretrain_steps=args.text_steps,
        text_mix=tuple(args.text_mix),
        hidden_act=args.hidden_act,
        activation_l1=args.activation_l1,
        freeze_vision=args.freeze_vision,
        text_pretrain_batch=args.text_batch,
        lr=args.lr,
        patch_word_loss=args.patch_word_loss,
        init_from=args.init_from,
    )
