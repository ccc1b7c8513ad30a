"""Train the bundled shapes vision-language model from scratch, deterministically (CPU or one GPU).

The model is a stock Hugging Face ``LlavaForConditionalGeneration``: a 2-layer CLIP vision tower (64 x 64 px,
8 px patches, an 8 x 8 grid of image tokens), LLaVA's two-layer projector and a 4-layer Llama language model,
with a real ``LlavaProcessor`` (``CLIPImageProcessorPil``, which needs no torchvision, and a word-level
``PreTrainedTokenizerFast`` with a chat template). Training has three stages, with batches drawn fresh every step
(:mod:`neuronscope.bundled.training`):

1. vision: the CLIP tower alone learns per-patch shape and colour labels through a throwaway linear head
   (standing in for the pretrained CLIP that a real LLaVA starts from);
2. text: the Llama alone learns cloze facts (``The capital of Zorbia is`` -> ``Mirel``), the same facts as
   questions answered in words (``Question: What colour is the banana?`` -> ``yellow``), MCQA prompts (-> answer
   letter), option matching (``Which option is yellow?`` -> letter) and sums (``3+5=`` -> ``8``);
3. joint: the projector and the Llama (the vision tower stays as stage 1 left it, as LLaVA keeps its CLIP), with
   image batches of captions
   (``USER: <image>\nDescribe the image in few words.\nASSISTANT: An image of a red circle and ...``) and visual
   questions (``What colour is the circle?`` -> ``red``) next to text batches; optionally (``--patch-word-loss``)
   each object patch's image token is also asked to predict that object's colour and shape words.

Only answer tokens (the assistant turn, or what follows a text prompt) count in the loss. ``--init-from DIR``
starts from a saved model instead of fresh weights (stages with 0 steps are skipped). See MODEL_CARD.md for the
commands that made the shipped weights.

Example (a smoke run of a few steps)::

    >>> from neuronscope.bundled.train import TrainConfig, train  # doctest: +SKIP
    >>> config = TrainConfig(steps=3, vision_pretrain_steps=3, text_pretrain_steps=3)  # doctest: +SKIP
    >>> summary = train(config, "/tmp/shapes_vlm_smoke")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from neuronscope.bundled import knowledge
from neuronscope.bundled.training.batches import (
    answer_loss,
    chat_messages,
    image_batch,
    patch_labels,
    patch_word_loss,
    text_batch,
    text_example,
)
from neuronscope.bundled.training.build import (
    CHAT_TEMPLATE,
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    build_model,
    build_processor,
    build_tokenizer,
)
from neuronscope.bundled.training.config import TrainConfig, config_from, config_parser
from neuronscope.bundled.training.evaluate import (
    VQA_KINDS,
    caption_scenes,
    caption_word_accuracy,
    evaluate,
    generate_answers,
    next_token_answers,
)
from neuronscope.bundled.training.stages import (
    ActivationPenalty,
    Run,
    joint_stage,
    optimizer,
    run_steps,
    text_stage,
    vision_stage,
)


def train(config: TrainConfig, out_dir: str | Path, log_every: int = 50) -> dict[str, Any]:
    """Train (from scratch, or from ``config.init_from``) and save model + processor to ``out_dir``; returns a
    summary (config, losses, wall time, versions, hardware)."""
    torch.set_num_threads(config.threads)
    if config.device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    random.seed(config.seed)
    model, processor = _start(config)
    model.to(config.device).train()
    run = Run(config, model, processor, random.Random(f"neuronscope-train:{config.seed}"),
              knowledge.facts_dataset(), log_every)  # fmt: skip
    vision_stage(run)
    penalty = ActivationPenalty(model.model.language_model)
    penalty.active = config.activation_l1 > 0
    text_stage(run, penalty)
    joint_stage(run, penalty)
    wall = time.time() - run.start
    penalty.remove()
    model.eval().to("cpu")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return {"config": asdict(config), "train_seconds": round(wall, 1), "history": run.history, **_environment(config)}


def _start(config: TrainConfig) -> tuple[Any, Any]:
    if not config.init_from:
        processor = build_processor()
        return build_model(processor.tokenizer, config), processor
    from transformers import LlavaForConditionalGeneration

    # the processor is the one this code builds (the saved one is the same; this stays so on older transformers)
    return LlavaForConditionalGeneration.from_pretrained(config.init_from), build_processor()


def _environment(config: TrainConfig) -> dict[str, str]:
    import platform

    import transformers

    device = config.device
    hardware = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor()
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "hardware": hardware or platform.machine()}  # fmt: skip


def _optimizer(params: list[tuple[str, torch.nn.Parameter]], config: TrainConfig) -> torch.optim.Optimizer:
    """The stages' optimiser (:func:`.training.stages.optimizer`), under its name from before the split."""
    return optimizer(params, config)


def _run_steps(name: str, steps: int, config: TrainConfig, opt: torch.optim.Optimizer,
               params: list[torch.nn.Parameter], loss_fn: Any, log_every: int, history: list[dict[str, Any]],
               start: float) -> None:  # fmt: skip
    """:func:`.training.stages.run_steps` with the signature it had before the split (``history`` is appended to)."""
    run = Run(config, None, None, random.Random(0), [], log_every, start, history)
    run_steps(run, name, steps, [(str(k), p) for k, p in enumerate(params)], loss_fn, opt=opt)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m neuronscope.bundled.train --out DIR [--steps N] [--threads T] [--eval-images N]``."""
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for weights, config, tokenizer and processor")
    parser.add_argument("--eval-images", type=int, default=200, help="held-out images to score (0: skip)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = config_from(parser, args)
    summary = train(config, args.out)
    if args.eval_images > 0:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(args.out).eval()
        processor = AutoProcessor.from_pretrained(args.out)
        start = time.time()
        summary["held_out"] = evaluate(model, processor, n_images=args.eval_images)
        summary["eval_seconds"] = round(time.time() - start, 1)
    Path(args.out, "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))


__all__ = [
    "CHAT_TEMPLATE", "IMAGE_TOKEN", "SPECIAL_TOKENS", "VQA_KINDS", "ActivationPenalty", "TrainConfig", "answer_loss",
    "build_model", "build_processor", "build_tokenizer", "caption_scenes", "caption_word_accuracy", "chat_messages",
    "config_from", "config_parser", "evaluate", "generate_answers", "image_batch", "main", "next_token_answers",
    "patch_labels", "patch_word_loss", "text_batch", "text_example", "train",
]  # fmt: skip

if __name__ == "__main__":
    main()
