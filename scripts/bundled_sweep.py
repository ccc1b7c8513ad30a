"""Train and score candidate recipes of the bundled shapes model (how the shipped recipe was chosen).

Each candidate is trained by ``neuronscope.bundled.train`` and then scored on held-out data (``train.evaluate``)
and on its neurons: the top-k contribution neurons of each colour are suppressed while captioning and the colour's
rate in its images' captions is compared with random neurons (``experiments.captions.concept_removal``).

    python scripts/bundled_sweep.py --out /tmp/sweep --device cuda --name relu_l1 --hidden-act relu \\
        --activation-l1 0.05 --text-steps 3000 --text-mix 0.15 0.35 0.15 0.15 0.2

writes ``/tmp/sweep/relu_l1/`` (weights) and ``/tmp/sweep/relu_l1.json`` (config, held-out scores, removal table).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def score_neurons(model_dir: Path, n_images: int, ks: tuple[int, ...], device: str) -> list[dict]:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from neuronscope.bundled import (
        CAPTION_PREFIX,
        CAPTION_PROMPT,
        COLOURS,
        SHAPES,
        render_scene,
        sample_scenes,
    )
    from neuronscope.experiments.captions import concept_removal, removal_records
    from neuronscope.models import get_adapter
    from neuronscope.pipelines.multimodal import find_multimodal_neurons

    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval().to(device)
    processor = AutoProcessor.from_pretrained(model_dir)
    scenes = sample_scenes(n_images, seed=0, split="test")
    images = [render_scene(scene) for scene in scenes]
    located = find_multimodal_neurons(model, processor, images, concepts=[*COLOURS, *SHAPES], top_k=1000,
                                      progress=False, heatmaps=0, max_new_tokens=12, batch_size=16)
    shows = {c: [i for i, s in enumerate(scenes) if c in {o.colour for o in s.objects}] for c in COLOURS}
    shows.update({c: [i for i, s in enumerate(scenes) if c in {o.shape for o in s.objects}] for c in SHAPES})
    neurons = {c: located.concept_neurons(c, max(ks)) for c in shows if c in located.concepts}
    shows = {c: v for c, v in shows.items() if c in neurons and v}
    rows = concept_removal(model, processor, images, shows, neurons, ks, prompt=CAPTION_PROMPT,
                           assistant_prefix=CAPTION_PREFIX, d_ff=get_adapter(model).d_ff, n_random=1)
    return removal_records(rows)


def main() -> None:
    from neuronscope.bundled.train import TrainConfig, evaluate, train

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--vision-steps", type=int, default=TrainConfig.vision_pretrain_steps)
    parser.add_argument("--text-steps", type=int, default=TrainConfig.text_pretrain_steps)
    parser.add_argument("--text-mix", type=float, nargs="+", default=list(TrainConfig.text_mix))
    parser.add_argument("--hidden-act", default=TrainConfig.hidden_act)
    parser.add_argument("--activation-l1", type=float, default=TrainConfig.activation_l1)
    parser.add_argument("--train-vision", dest="freeze_vision", action="store_false")
    parser.add_argument("--text-batch", type=int, default=TrainConfig.text_pretrain_batch)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=48)
    args = parser.parse_args()
    config = TrainConfig(seed=args.seed, steps=args.steps, vision_pretrain_steps=args.vision_steps,
                         text_pretrain_steps=args.text_steps, text_mix=tuple(args.text_mix),
                         hidden_act=args.hidden_act, activation_l1=args.activation_l1, freeze_vision=args.freeze_vision,
                         text_pretrain_batch=args.text_batch, lr=args.lr, threads=args.threads,
                         device=args.device)  # fmt: skip
    out = Path(args.out)
    model_dir = out / args.name
    started = time.time()
    summary = train(config, model_dir, log_every=500)
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    summary["held_out"] = evaluate(model, AutoProcessor.from_pretrained(model_dir))
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"name": args.name, "held_out": summary["held_out"]}), flush=True)
    if args.images > 0:
        summary["removal"] = score_neurons(model_dir, args.images, (10, 30, 100), args.device)
    summary["total_seconds"] = round(time.time() - started, 1)
    (model_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
