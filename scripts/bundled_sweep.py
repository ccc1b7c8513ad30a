"""Train and score candidate recipes of the bundled shapes model (how the shipped recipe was chosen).

Each candidate is trained by ``neuronscope.bundled.train`` (or, with ``--score DIR``, a saved model is only scored)
and then scored, writing ``OUT/NAME.json`` after each step (so a candidate cut short still reports what it
finished):

1. held-out accuracies (``train.evaluate`` on ``--eval-images`` held-out scenes: caption exact match, VQA; MCQA on
   held-out wordings, facts, sums);
2. heatmap localisation (:func:`localisation`, on ``--loc-images`` held-out scenes of seed 11): for each colour and
   shape word the model names, its top-100 contribution neurons' mean |activation| over the image tokens of up to
   four of its images, cut at the 95th percentile; the figure is the share of the cut's pixels on the word's
   object (``absolute``: per concept and pooled over colours / shapes; ``signed``: the same with the signed
   activation; ``test_figure``: located on colours only, the two colours with most pairs, as the heatmap test of
   ``test_multimodal_bundled.py`` measures it, except that each image counts once);
3. with ``--images N > 0``, the suppression table (:func:`score_neurons`).

    python scripts/bundled_sweep.py --out /tmp/sweep --device cuda --name pw1 --patch-word-loss 1
    python scripts/bundled_sweep.py --out /tmp/sweep --device cuda --name shipped \\
        --score src/neuronscope/bundled/shapes_vlm
    python scripts/bundled_sweep.py --collect /tmp/sweep DEST

write ``/tmp/sweep/pw1/`` (weights) and ``/tmp/sweep/pw1.json``; ``--collect`` writes ``DEST/summary.json`` (every
candidate's figures, ranked, and the end of the log of any that wrote none) and packs each trained candidate's
model folder with its JSON and log as ``DEST/<name>.tar.gz`` (at most :data:`PACK`, the best first).
``scripts/bundled_sweep.sh`` runs whole rounds.
"""

from __future__ import annotations

import json
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

#: the goal of issue 18: localisation, captions and MCQA a candidate must reach
GOAL = {"localisation": 0.5, "caption_exact": 0.99, "mcqa": 0.7}
#: candidates packed by ``--collect`` (the device machine returns 8 files: summary.json, the round's log and these)
PACK = 6


def score_neurons(model: Any, processor: Any, n_images: int, ks: Sequence[int], n_random: int = 1,
                  per_word: bool = False) -> list[dict]:
    """The suppression table of a bundled-world model: each colour's and shape's top-k contribution neurons (located
    on ``n_images`` held-out captions) zeroed while captioning, vs ``n_random`` random same-layer sets. The other
    words' rates are over all images, or with ``per_word`` each over the images that show that word."""
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
                                      heatmaps=0, max_new_tokens=12, batch_size=16)
    shows = {c: [i for i, s in enumerate(scenes) if c in {o.colour for o in s.objects}] for c in COLOURS}
    shows.update({c: [i for i, s in enumerate(scenes) if c in {o.shape for o in s.objects}] for c in SHAPES})
    neurons = {c: located.concept_neurons(c, max(ks)) for c in shows if c in located.concepts}
    shows = {c: v for c, v in shows.items() if c in neurons and v}
    rows = concept_removal(model, processor, images, shows, neurons, ks, prompt=CAPTION_PROMPT,
                           assistant_prefix=CAPTION_PREFIX, d_ff=get_adapter(model).d_ff,
                           words=[*COLOURS, *SHAPES], n_random=n_random, seed=0,
                           word_images=shows if per_word else None)  # fmt: skip
    return removal_records(rows)


def localisation(model: Any, processor: Any, n_images: int = 48) -> dict[str, Any]:
    """Heatmap localisation of a bundled-world model on ``n_images`` held-out scenes (seed 11): ``test_figure``,
    ``absolute`` and ``signed`` as the module docstring says; fractions in [0, 1], ``area`` = the objects' share of
    the image (what a mask placed at random would reach)."""
    from neuronscope import bundled
    from neuronscope.workflows.multimodal.localisation import heatmap_localisation
    from neuronscope.workflows.multimodal.pipeline import find_multimodal_neurons

    scenes = bundled.sample_scenes(n_images, seed=11, split="test")
    images = [bundled.render_scene(scene) for scene in scenes]

    def find(concepts: list[str]) -> Any:
        return find_multimodal_neurons(model, processor, images, prompt=bundled.CAPTION_PROMPT,
                                       assistant_prefix=bundled.CAPTION_PREFIX, concepts=concepts, top_k=1000,
                                       batch_size=16, max_new_tokens=12, heatmaps=0)  # fmt: skip

    colours = find(list(bundled.COLOURS))
    first_two = heatmap_localisation(model, processor, scenes, images, colours, concepts=colours.concepts[:2])
    out: dict[str, Any] = {"images": n_images,
                           "test_figure": first_two.get("colours", {"on_object": 0.0, "area": 0.0, "images": 0})}
    every = find([*bundled.COLOURS, *bundled.SHAPES])
    out["absolute"] = heatmap_localisation(model, processor, scenes, images, every)
    out["signed"] = heatmap_localisation(model, processor, scenes, images, every, absolute=False)
    return out


def figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one candidate: caption exact match, MCQA, localisation (colours, shapes, the test's
    figure) and whether they reach :data:`GOAL`; None where the candidate did not get that far."""
    held = summary.get("held_out", {})
    where = summary.get("localisation", {})
    row = {"caption_exact": held.get("caption_exact"), "mcqa": held.get("mcqa"), "vqa": held.get("vqa"),
           "localisation_colours": where.get("absolute", {}).get("colours", {}).get("on_object"),
           "localisation_shapes": where.get("absolute", {}).get("shapes", {}).get("on_object"),
           "localisation_test_figure": where.get("test_figure", {}).get("on_object"),
           "object_area": {kind: where.get("absolute", {}).get(kind, {}).get("area")
                           for kind in ("colours", "shapes")}}  # fmt: skip
    located = [row[f"localisation_{kind}"] for kind in ("colours", "shapes", "test_figure")]
    row["meets_goal"] = (None not in located and min(located) >= GOAL["localisation"]
                         and (row["caption_exact"] or 0) >= GOAL["caption_exact"]
                         and (row["mcqa"] or 0) >= GOAL["mcqa"])
    row["train_seconds"], row["total_seconds"] = summary.get("train_seconds"), summary.get("total_seconds")
    return row


def _rank(row: dict[str, Any]) -> tuple:
    located = min(row[f"localisation_{kind}"] or 0.0 for kind in ("colours", "shapes"))
    return (row["meets_goal"], (row["caption_exact"] or 0) >= GOAL["caption_exact"],
            min(located, 0.8) + min(row["mcqa"] or 0, 0.8))  # fmt: skip


def collect(sweep: Path, dest: Path, pack: int = PACK) -> dict[str, Any]:
    """``dest/summary.json``: every candidate of ``sweep`` (a ``NAME.json`` or a ``NAME.log``) with its
    :func:`figures`, ranked best first, and the full scores; each of the ``pack`` best trained ones (a model folder
    ``sweep/NAME/``) as ``dest/NAME.tar.gz`` (``NAME/`` = the model, ``NAME.json``, ``NAME.log``)."""
    names = sorted({path.stem for path in sweep.glob("*.json")} | {path.stem for path in sweep.glob("*.log")})
    candidates: dict[str, Any] = {}
    for name in names:
        scores = sweep / f"{name}.json"
        summary = json.loads(scores.read_text()) if scores.is_file() else {}
        summary.pop("history", None)
        entry: dict[str, Any] = {"figures": figures(summary), "scores": summary}
        log = sweep / f"{name}.log"
        if "localisation" not in summary and log.is_file():  # cut short or failed: say where
            entry["log_tail"] = log.read_text(errors="replace").splitlines()[-15:]
        candidates[name] = entry
    ranked = sorted(candidates, key=lambda name: _rank(candidates[name]["figures"]), reverse=True)
    trained = [name for name in ranked if (sweep / name / "model.safetensors").is_file()]
    dest.mkdir(parents=True, exist_ok=True)
    for name in trained[:pack]:
        with tarfile.open(dest / f"{name}.tar.gz", "w:gz") as tar:
            tar.add(sweep / name, arcname=name)
            for suffix in (".json", ".log"):
                if (sweep / f"{name}{suffix}").is_file():
                    tar.add(sweep / f"{name}{suffix}", arcname=f"{name}{suffix}")
    table = {"goal": GOAL, "ranked": ranked, "packed": trained[:pack], "not_packed": trained[pack:],
             "figures": {name: candidates[name]["figures"] for name in ranked}, "candidates": candidates}  # fmt: skip
    (dest / "summary.json").write_text(json.dumps(table, indent=1) + "\n")
    return table


def main() -> None:
    from transformers import LlavaForConditionalGeneration

    from neuronscope.bundled.train import build_processor, config_from, config_parser, evaluate, train

    parser = config_parser("Train and score one candidate recipe of the bundled model.")
    parser.set_defaults(device="cuda")
    parser.add_argument("--out", required=True, help="parent folder: weights go to OUT/NAME, scores to OUT/NAME.json")
    parser.add_argument("--name", required=True)
    parser.add_argument("--score", default="", help="score this saved model folder instead of training one")
    parser.add_argument("--eval-images", type=int, default=200, help="held-out scenes for captions and VQA")
    parser.add_argument("--loc-images", type=int, default=48, help="held-out scenes for the heatmap localisation")
    parser.add_argument("--images", type=int, default=0, help="held-out images for the suppression table (0: skip)")
    args = parser.parse_args()
    config = config_from(parser, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.score:
        model_dir, summary = Path(args.score), {"scored": args.score}
    else:
        model_dir = out / args.name
        summary = train(config, model_dir, log_every=500)

    def write() -> None:
        summary["total_seconds"] = round(time.time() - started, 1)
        text = json.dumps(summary, indent=2) + "\n"
        (out / f"{args.name}.json").write_text(text)
        if not args.score:
            (model_dir / "training_summary.json").write_text(text)

    write()
    torch.set_num_threads(config.threads)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval().to(args.device)
    processor = build_processor()
    summary["held_out"] = evaluate(model, processor, n_images=args.eval_images)
    write()
    print(json.dumps({"name": args.name, "held_out": summary["held_out"]}), flush=True)
    summary["localisation"] = localisation(model, processor, args.loc_images)
    write()
    print(json.dumps({"name": args.name, **figures(summary)}), flush=True)
    if args.images > 0:
        summary["removal"] = score_neurons(model, processor, args.images, (100, 300))
        write()


if __name__ == "__main__":
    torch.set_num_threads(2)
    if len(sys.argv) == 4 and sys.argv[1] == "--collect":
        result = collect(Path(sys.argv[2]), Path(sys.argv[3]))
        print(json.dumps(result["figures"], indent=1))
    else:
        main()
