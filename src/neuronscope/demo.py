"""``neuronscope demo``: the whole story on the bundled shapes model, on a CPU, in a couple of minutes.

1. caption held-out images of coloured shapes with the bundled LLaVA (its own greedy captions, Pan et al.'s prompt);
2. locate the neurons of every colour and shape word (contribution scores at the positions that produced the word);
3. print each concept's top neurons with the tokens their value vectors promote;
4. draw heatmaps of the top neurons over the images;
5. suppress each colour's top-k neurons during captioning (k = 10, 30, 100, 300): the colour's rate in the captions of
   images that have it, the other words' rates (specificity), and the same for random neurons with the same number
   per layer;
6. edit one colour's top neurons' value vectors towards another colour (the signed closed-form shift
   ``w_i += sign(<w_i, u_old>) (u_new - u_old)``: a gated neuron that fires negatively needs the opposite push), then
   every colour's, against the same edit of random neurons; captions before / after;
7. write everything — a self-contained HTML report, PNGs, JSON and CSV — into one folder, named at the end.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from neuronscope.bundled import (
    CAPTION_PREFIX,
    CAPTION_PROMPT,
    COLOURS,
    SHAPES,
    load_shapes_vlm,
    render_scene,
    sample_scenes,
)
from neuronscope.edit.weights import ValueVectorEdit
from neuronscope.evaluate.baselines import random_neurons_like
from neuronscope.evaluate.metrics import concept_rate
from neuronscope.experiments.captions import caption_images as captions_of
from neuronscope.experiments.captions import concept_removal, removal_records
from neuronscope.explain import top_tokens
from neuronscope.inputs.targets import word_token
from neuronscope.models import get_adapter
from neuronscope.report import build_report
from neuronscope.runs import RunDir
from neuronscope.trace import suppress

#: λ of the demo's signed token shift (chosen among 0.2, 0.3, 0.5 and 1 on the demo's own 24 images: 1 also
#: rewrote the shape words after the colour; see MODEL_CARD.md)
EDIT_STRENGTH = 0.3


def caption_images(model: Any, processor: Any, images: list, interventions: list | None = None) -> list[str]:
    """Greedy captions ("An image of ...") of ``images``, under ``interventions`` at every generated step."""
    return captions_of(model, processor, images, CAPTION_PROMPT, assistant_prefix=CAPTION_PREFIX,
                       interventions=interventions)


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(out_dir: str | Path = "neuronscope-demo", *, quick: bool = False, n_images: int | None = None,
             suppress_concept: str | None = None, n_neurons: int = 10, n_random: int = 3, seed: int = 0) -> Path:
    """Run the demo and return the folder holding its report.

    Args:
        out_dir: the output folder (an earlier demo folder there is replaced; any other non-empty folder is refused).
        quick: fewer images and random draws (CI's short version).
        n_images: held-out images to caption (default 24, quick 8).
        suppress_concept: the colour whose neurons are suppressed and edited in detail (default "red"); every
            colour's edit is also measured, in the metrics' "edit, every colour" table.
        n_neurons: how many of the concept's top neurons to edit, and the smallest set suppressed (default 10; the
            suppression table also uses 30, 100 and 300).
        n_random: random neuron sets for the baseline (default 3, quick 1).
        seed: seed of the held-out images and random draws.
    """
    started = time.time()
    torch.manual_seed(seed)
    n_images = n_images or (8 if quick else 24)
    n_random = 1 if quick else n_random
    run = RunDir(out_dir, overwrite=True)
    out = run.path
    config = {"title": "neuronscope demo: multimodal neurons of the bundled shapes model", "n_images": n_images,
              "n_neurons": n_neurons, "n_random": n_random, "seed": seed, "quick": quick,
              "prompt": CAPTION_PROMPT, "assistant_prefix": CAPTION_PREFIX}
    run.write_config(config)
    run.write_meta()

    _say("[1/7] loading the bundled shapes model (LLaVA architecture, trained by scripts in this repository)")
    model, processor = load_shapes_vlm()
    adapter = get_adapter(model)
    scenes = sample_scenes(n_images, seed=seed, split="test")
    images = [render_scene(scene) for scene in scenes]
    (out / "images").mkdir(exist_ok=True)
    for i, image in enumerate(images):
        image.resize((128, 128)).save(out / "images" / f"image_{i:02d}.png")

    _say(f"[2/7] captioning {n_images} held-out images and locating the neurons of each colour and shape word")
    from neuronscope.pipelines.multimodal import find_multimodal_neurons

    concepts = {word: [word] for word in (*COLOURS, *SHAPES)}
    located = find_multimodal_neurons(
        model, processor, images, concepts=concepts, top_k=1000, run_dir=out / "locate", overwrite=True,
        progress=False, heatmaps=1, heatmap_neurons=2, max_new_tokens=12,
    )
    captions = [record["caption"] for record in located.captions]
    for i in range(min(4, len(captions))):
        _say(f"      image {i}: {captions[i]}")

    _say("[3/7] top neurons per concept, with the tokens their value vectors promote")
    top_rows, token_table = [], {}
    for concept in located.concepts:
        neurons = located.concept_neurons(concept, 3)
        explained = top_tokens(model, neurons, processor, k=5)
        shown = []
        for (layer, index), tokens in zip(neurons.tolist(), explained.tokens, strict=True):
            token_table[f"{layer}:{index}"] = [t.strip() for t in tokens]
            top_rows.append({"concept": concept, "layer": layer, "neuron": index,
                             "top tokens": " ".join(t.strip() for t in tokens)})
            shown.append(f"L{layer}.{index} -> {' '.join(t.strip() for t in tokens)}")
        _say(f"      {concept:>8}: " + " | ".join(shown))
    run.write_csv("neurons.csv", top_rows, ["concept", "layer", "neuron", "top tokens"])
    run.write_json("top_tokens.json", token_table)

    _say("[4/7] heatmaps of the top neurons over the images")
    (out / "heatmaps").mkdir(exist_ok=True)
    heatmaps = sorted((out / "locate" / "heatmaps").glob("*.png"))
    for path in heatmaps[:12]:
        shutil.copy(path, out / "heatmaps" / path.name)
    _say(f"      {len(heatmaps)} heatmaps in {out / 'locate' / 'heatmaps'}")

    colours_in = [{obj.colour for obj in scene.objects} for scene in scenes]
    concept = suppress_concept or "red"
    replacement = next(c for c in COLOURS if c not in (concept, "white"))
    with_concept = [i for i, cs in enumerate(colours_in) if concept in cs]
    neurons = located.concept_neurons(concept, n_neurons)
    random_sets = random_neurons_like(neurons, adapter.d_ff, n_draws=n_random, seed=seed, exclude_given=True)
    other_words = [w for w in (*COLOURS, *SHAPES) if w != concept]
    unrelated = [w for w in other_words if w != replacement]

    def rates(texts: list[str]) -> dict[str, float]:
        own = concept_rate([texts[i] for i in with_concept], concept) if with_concept else float("nan")
        return {"concept": own, **{word: concept_rate(texts, word) for word in other_words}}

    def mean_rates(runs: list[list[str]]) -> dict[str, float]:
        per_run = [rates(texts) for texts in runs]
        return {key: sum(r[key] for r in per_run) / len(per_run) for key in per_run[0]}

    base = rates(captions)

    def moved(after: dict[str, float], words: list[str]) -> float:
        return sum(abs(after[w] - base[w]) for w in words) / len(words)

    ks = sorted({n_neurons, 300} if quick else {n_neurons, 30, 100, 300})
    _say(f"[5/7] suppressing each colour's top {', '.join(map(str, ks))} neurons while captioning (activation x 0 at "
         f"every generated step), against {n_random} random set(s) with the same number of neurons per layer")
    shows = {c: [i for i, cs in enumerate(colours_in) if c in cs] for c in COLOURS}
    shows = {c: rows for c, rows in shows.items() if rows and c in located.concepts}
    removal = concept_removal(model, processor, images, shows, {c: located.concept_neurons(c, max(ks)) for c in shows},
                              ks, prompt=CAPTION_PROMPT, assistant_prefix=CAPTION_PREFIX, d_ff=adapter.d_ff,
                              words=[*COLOURS, *SHAPES], n_random=n_random, seed=seed)  # fmt: skip
    run.write_csv("tables/suppression.csv", removal_records(removal), list(removal_records(removal[:1])[0]))
    _say("      colour  images  before  " + "  ".join(f"top-{k:<3d}" for k in ks) + f"  random-{ks[-1]}")
    for colour in shows:
        mine = [row for row in removal if row.concept == colour]
        _say(f"      {colour:>6}  {mine[0].images:6d}  {mine[0].before:6.0%}  "
             + "  ".join(f"{row.after_located:7.0%}" for row in mine) + f"  {mine[-1].after_random:9.0%}")
    suppressed_rows = [row for row in removal if row.concept == concept]
    top = located.concept_neurons(concept, ks[-1])
    suppressed = caption_images(model, processor, images, suppress(top, positions="last"))
    suppressed_rates = rates(suppressed)
    _say(f"[6/7] editing the value vectors of the top {n_neurons} neurons of '{concept}' ({len(with_concept)} images "
         f"have something {concept}) towards '{replacement}', against the same edit of random neurons")
    source_id, target_id = word_token(processor, concept), word_token(processor, replacement)
    edit = ValueVectorEdit.token_shift(model, neurons, source_id, target_id, strength=EDIT_STRENGTH, signs="source",
                                       reason=f"replace '{concept}' by '{replacement}' (demo)")
    with edit.applied(model):
        edited = caption_images(model, processor, images)
    edit.save(out / "edit")
    random_edited = []
    for draw in random_sets:
        with ValueVectorEdit.token_shift(model, draw, source_id, target_id, strength=EDIT_STRENGTH,
                                         signs="source").applied(model):
            random_edited.append(caption_images(model, processor, images))
    edited_rates, random_edit_rates = rates(edited), mean_rates(random_edited)
    _say(f"      edit (w_i += {EDIT_STRENGTH} sign_i (u_{replacement} - u_{concept}) on those neurons): '{concept}' {base['concept']:.0%} -> "
         f"{edited_rates['concept']:.0%} (the same edit of random neurons: {random_edit_rates['concept']:.0%}); "
         f"the other words' rates moved by {moved(edited_rates, unrelated):.1%} on average")
    metrics = {
        "concept": concept,
        "neurons": len(neurons),
        "images": n_images,
        f"images with {concept}": len(with_concept),
        f"'{concept}' rate in their captions, before": round(base["concept"], 3),
        **{f"suppress top {row.k}: rate after (located neurons)": round(row.after_located, 3)
           for row in suppressed_rows},
        **{f"suppress {row.k}: rate after (random neurons, mean of {n_random})": round(row.after_random, 3)
           for row in suppressed_rows},
        f"edit to '{replacement}': rate after (located neurons)": round(edited_rates["concept"], 3),
        f"edit to '{replacement}': rate after (random neurons, mean of {n_random})":
            round(random_edit_rates["concept"], 3),
        f"edit: '{replacement}' said for those images (located neurons)":
            round(concept_rate([edited[i] for i in with_concept], replacement), 3),
        "edit: other words, mean absolute change in rate (specificity)": round(moved(edited_rates, unrelated), 3),
        f"suppress top {ks[-1]}: other words, mean absolute change in rate":
            round(moved(suppressed_rates, other_words), 3),
        "suppression, every colour": removal_records(removal),
        "word rates": {word: {"before": round(base[word], 3), "suppressed": round(suppressed_rates[word], 3),
                              "edited": round(edited_rates[word], 3)} for word in other_words},
        "seconds": None,
    }
    rows = [{"id": i, "image": f"images/image_{i:02d}.png", "before": captions[i], "after": edited[i],
             f"suppressed (top {ks[-1]})": suppressed[i], "after random edit": random_edited[0][i]} for i in range(n_images)]
    run.write_json("captions.json", rows)
    every = {}
    for colour in COLOURS:  # the same edit for every colour (towards the next one), located vs one random set
        images_with = [i for i, cs in enumerate(colours_in) if colour in cs]
        if not images_with or colour not in located.concepts:
            continue
        new = COLOURS[(COLOURS.index(colour) + 1) % len(COLOURS)]
        chosen = located.concept_neurons(colour, n_neurons)
        draw = random_neurons_like(chosen, adapter.d_ff, n_draws=1, seed=seed, exclude_given=True)[0]
        row = {"images": len(images_with), "before": concept_rate([captions[i] for i in images_with], colour)}
        for name, which in (("located", chosen), ("random", draw)):
            shift = ValueVectorEdit.token_shift(model, which, word_token(processor, colour), word_token(processor, new),
                                                strength=EDIT_STRENGTH, signs="source")
            with shift.applied(model):
                texts = caption_images(model, processor, [images[i] for i in images_with])
            row[f"after edit ({name} neurons)"] = concept_rate(texts, colour)
        every[f"{colour} -> {new}"] = {key: round(value, 3) for key, value in row.items()}
    metrics["edit, every colour: rate of the colour in its images' captions"] = every
    _say("      every colour, the same edit: " + "; ".join(
        f"{pair} {row['before']:.0%}->{row['after edit (located neurons)']:.0%} "
        f"(random {row['after edit (random neurons)']:.0%})" for pair, row in every.items()))
    for i in with_concept[:3]:
        _say(f"      image {i}: '{captions[i]}'  ->  edited: '{edited[i]}'")

    _say("[7/7] writing the report")
    metrics["seconds"] = round(time.time() - started, 1)
    run.write_json("metrics.json", metrics)
    run.write_text("summary.txt", (
        f"The bundled shapes model captioned {n_images} held-out images. Contribution scores located the neurons "
        f"behind each colour and shape word. Shifting the value vectors of the top {len(neurons)} neurons of "
        f"'{concept}' towards '{replacement}' took '{concept}' in the captions of images with {concept} things from "
        f"{base['concept']:.0%} to {edited_rates['concept']:.0%} (the same edit of random neurons: "
        f"{random_edit_rates['concept']:.0%}), while the other words' rates moved by "
        f"{moved(edited_rates, unrelated):.1%} on average. Zeroing the activations of its top "
        + ", ".join(f"{row.k} neurons took it to {row.after_located:.0%}" for row in suppressed_rows)
        + f" (random {ks[-1]}: {suppressed_rows[-1].after_random:.0%}). Every colour's figures are in "
        "tables/suppression.csv and metrics.json; MODEL_CARD.md explains why zeroing needs more neurons than editing."
    ))
    report = build_report(out)
    _say(f"done in {metrics['seconds']} s. Open {report} (a self-contained HTML report); "
         f"PNGs, JSON and CSV are in {out}/")
    return out
