"""Train and score candidate recipes of the bundled shapes model (how the shipped recipe was chosen).

Each candidate is trained by ``neuronscope.bundled.train`` and then scored on held-out data (``train.evaluate``)
and on its neurons: the top-k contribution neurons of each colour are suppressed while captioning and the colour's
rate in its images' captions is compared with random neurons (``experiments.captions.concept_removal``).

    python scripts/bundled_sweep.py --out /tmp/sweep --device cuda --name relu_l1 --hidden-act relu \\
        --activation-l1 0.05 --text-steps 3000 --text-mix 0.15 0.35 0.15 0.15 0.2

writes ``/tmp/sweep/relu_l1/`` (weights) and ``/tmp/sweep/relu_l1.json`` (config, held-out scores, removal table).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def score_neurons(model: Any, processor: Any, n_images: int, ks: Sequence[int], n_random: int = 1) -> list[dict]:
    """The suppression table of a bundled-world model: each colour's and shape's top-k contribution neurons (located
    on ``n_images`` held-out captions) zeroed while captioning, vs ``n_random`` random same-layer sets."""
    from neuronscope.bundled import (
        CAPTION_PREFIX,
        CAPTION_PROMPT,
        COLOURS,
        SHAPES,
        render_scene,
        sample_scenes,
    )
    from neuronscope.measure.captions import concept_removal, removal_records
    from neuronscope.models import get_adapter
    from neuronscope.workflows.multimodal import find_multimodal_neurons

    scenes = sample_scenes(n_images, seed=0, split="test")
    images = [render_scene(scene) for scene in scenes]
    located = find_multimodal_neurons(model, processor, images, concepts=[*COLOURS, *SHAPES], top_k=1000,
                                      progress=False, heatmaps=0, max_new_tokens=12, batch_size=16)
    shows = {c: [i for i, s in enumerate(scenes) if c in {o.colour for o in s.objects}] for c in COLOURS}
    shows.update({c: [i for i, s in enumerate(scenes) if c in {o.shape for o in s.objects}] for c in SHAPES})
    neurons = {c: located.concept_neurons(c, max(ks)) for c in shows if c in located.concepts}
    shows = {c: v for c, v in shows.items() if c in neurons and v}
    rows = concept_removal(model, processor, images, shows, neurons, ks, prompt=CAPTION_PROMPT,
                           assistant_prefix=CAPTION_PREFIX, d_ff=get_adapter(model).d_ff,
                           words=[*COLOURS, *SHAPES], n_random=n_random, seed=0)  # fmt: skip
    return removal_records(rows)


def main() -> None:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from neuronscope.bundled.train import config_from, config_parser, evaluate, train

    parser = config_parser("Train and score one candidate recipe of the bundled model.")
    parser.set_defaults(device="cuda")
    parser.add_argument("--out", required=True, help="parent folder: weights go to OUT/NAME, scores to OUT/NAME.json")
    parser.add_argument("--name", required=True)
    parser.add_argument("--images", type=int, default=48, help="held-out images for the neuron scores (0: skip)")
    args = parser.parse_args()
    config = config_from(parser, args)
    out = Path(args.out)
    model_dir = out / args.name
    started = time.time()
    summary = train(config, model_dir, log_every=500)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    summary["held_out"] = evaluate(model, processor)
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"name": args.name, "held_out": summary["held_out"]}), flush=True)
    if args.images > 0:
        summary["removal"] = score_neurons(model.to(args.device), processor, args.images, (10, 30, 100))
    summary["total_seconds"] = round(time.time() - started, 1)
    (model_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
