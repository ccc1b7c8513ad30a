"""``neuronscope demo``: the whole story on the bundled shapes model, on a CPU, in a couple of minutes.

1. caption held-out images of coloured shapes with the bundled LLaVA (its own greedy captions, Pan et al.'s prompt);
2. locate the neurons of every colour and shape word (contribution scores at the positions that produced the word);
3. print each concept's top neurons with the tokens their value vectors promote;
4. draw heatmaps of every concept's top neurons over several of its images (one sheet per concept, maps in numeric
   order of k, the object outlined) and measure the share of each map's 95th-percentile mask on the object;
5. suppress each colour's top-k neurons during captioning (k = 10, 30, 100, 300): the colour's rate in the captions of
   images that have it, the other words' rates (specificity: each word's rate over the images that show that word),
   and the same for random neurons with the same number per layer;
6. edit one colour's top neurons' value vectors towards another colour (the signed closed-form shift
   ``w_i += sign(<w_i, u_old>) (u_new - u_old)``: a gated neuron that fires negatively needs the opposite push), then
   every colour's, against the same edit of random neurons; captions before / after;
7. write everything — a self-contained HTML report (linking every file written), PNGs, JSON and CSV — into one
   folder, named at the end.

Every rate is a fraction of captions: a word's rate is over the images whose scene shows that word.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from neuronscope.workflows.result import RunResult
from neuronscope.workflows.specs.vision import DemoOptions

#: λ of the demo's signed token shift (chosen among 0.2, 0.3, 0.5 and 1 on the demo's own 24 images: 1 also
#: rewrote the shape words after the colour; see MODEL_CARD.md)
EDIT_STRENGTH = 0.3
#: images per concept on its heatmap sheet
HEATMAP_IMAGES = 3


def _say(text: str) -> None:
    print(text, flush=True)


@dataclass
class _Demo:
    """What the steps share: the model, the images and what each scene shows, the located neurons."""

    run: Any
    model: Any
    processor: Any
    scenes: list[Any]
    images: list[Any]
    shows: dict[str, list[int]]  # word -> images whose scene shows it
    n_neurons: int
    n_random: int
    seed: int
    located: Any = None
    captions: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    def caption(self, interventions: list | None = None, rows: list[int] | None = None) -> list[str]:
        from neuronscope.bundled import CAPTION_PREFIX, CAPTION_PROMPT
        from neuronscope.measure.captions import caption_images

        images = self.images if rows is None else [self.images[i] for i in rows]
        return caption_images(self.model, self.processor, images, CAPTION_PROMPT, assistant_prefix=CAPTION_PREFIX,
                              interventions=interventions)

    def rates(self, texts: list[str]) -> dict[str, float]:
        """Every word's rate in the captions of the images that show it."""
        from neuronscope.measure.metrics import concept_rate

        return {word: concept_rate([texts[i] for i in rows], word) for word, rows in self.shows.items() if rows}


def run_demo(out_dir: str | Path = "neuronscope-demo", *, quick: bool = False, n_images: int | None = None,
             suppress_concept: str | None = None, n_neurons: int = 10, n_random: int = 3, seed: int = 0,
             overwrite: bool = False) -> Path:
    """Run the demo and return the folder holding its report.

    Args:
        out_dir: the output folder (an earlier demo folder there is replaced; another run's folder only with
            ``overwrite``; any other non-empty folder is refused).
        quick: fewer images and random draws (CI's short version).
        n_images: held-out images to caption (default 24, quick 8).
        suppress_concept: the colour whose neurons are suppressed and edited in detail (default "red"); every
            colour's edit is also measured, in the metrics' "edit, every colour" table.
        n_neurons: how many of the concept's top neurons to edit, and the smallest set suppressed (default 10; the
            suppression table also uses 30, 100 and 300).
        n_random: random neuron sets for the baseline (default 3, quick 1).
        seed: seed of the held-out images and random draws.
        overwrite: replace another neuronscope run's folder in ``out_dir``.
    """
    _check_out(Path(out_dir), overwrite)
    started = time.time()
    demo = _start(out_dir, quick, n_images or (8 if quick else 24), n_neurons, 1 if quick else n_random, seed)
    _locate(demo)
    ks = sorted({n_neurons, 300} if quick else {n_neurons, 30, 100, 300})
    concept = suppress_concept or "red"
    removal = _suppression(demo, ks, concept)
    _edit(demo, concept, removal, ks)
    _every_colour(demo)
    _say("[7/7] writing the report")
    from neuronscope.report import build_report

    demo.metrics["seconds"] = round(time.time() - started, 1)
    demo.run.write_json("metrics.json", demo.metrics)
    report = build_report(demo.run.path, link_files=True)
    _say(f"done in {demo.metrics['seconds']} s. Open {report} (a self-contained HTML report); "
         f"PNGs, JSON and CSV are in {demo.run.path}/")
    return demo.run.path


def _check_out(out_dir: Path, overwrite: bool) -> None:
    """Refuse, before any work, a folder that holds another run's results (an earlier demo's is replaced)."""
    from neuronscope.errors import RunFolderError

    config = out_dir / "config.json"
    if overwrite or not config.is_file():
        return  # RunDir refuses folders that are not neuronscope's
    try:
        title = str(json.loads(config.read_text(encoding="utf-8")).get("title", ""))
    except (OSError, ValueError):
        title = ""
    if not title.startswith("neuronscope demo"):
        raise RunFolderError(f"{out_dir} holds another neuronscope run, not a demo: choose another --out, or pass "
                             "--overwrite to replace it")


def demo(options: DemoOptions, *, loaded: Any = None) -> RunResult:
    """``neuronscope demo``."""
    path = run_demo(options.out, quick=options.quick, overwrite=options.overwrite)
    return RunResult("demo", str(path), {}, [f"demo results in {path}"])


def _start(out_dir: str | Path, quick: bool, n_images: int, n_neurons: int, n_random: int, seed: int) -> _Demo:
    from neuronscope.bundled import (
        CAPTION_PREFIX,
        CAPTION_PROMPT,
        COLOURS,
        SHAPES,
        load_shapes_vlm,
        render_scene,
        sample_scenes,
    )
    from neuronscope.runs import RunDir

    torch.manual_seed(seed)
    run = RunDir(out_dir, overwrite=True)
    run.write_config({"title": "neuronscope demo: multimodal neurons of the bundled shapes model",
                      "n_images": n_images, "n_neurons": n_neurons, "n_random": n_random, "seed": seed,
                      "quick": quick, "prompt": CAPTION_PROMPT, "assistant_prefix": CAPTION_PREFIX})
    run.write_meta()
    _say("[1/7] loading the bundled shapes model (LLaVA architecture, trained by scripts in this repository)")
    model, processor = load_shapes_vlm()
    scenes = sample_scenes(n_images, seed=seed, split="test")
    images = [render_scene(scene) for scene in scenes]
    (run.path / "images").mkdir(exist_ok=True)
    for i, image in enumerate(images):
        image.resize((128, 128)).save(run.path / "images" / f"image_{i:02d}.png")
    words_in = [{obj.colour for obj in scene.objects} | {obj.shape for obj in scene.objects} for scene in scenes]
    shows = {word: [i for i, words in enumerate(words_in) if word in words] for word in (*COLOURS, *SHAPES)}
    return _Demo(run, model, processor, scenes, images, shows, n_neurons, n_random, seed)


def _locate(demo: _Demo) -> None:
    from neuronscope.bundled import COLOURS, SHAPES
    from neuronscope.explain import top_tokens
    from neuronscope.workflows.multimodal.pipeline import find_multimodal_neurons

    _say(f"[2/7] captioning {len(demo.images)} held-out images and locating the neurons of each colour and shape word")
    concepts = {word: [word] for word in (*COLOURS, *SHAPES)}
    demo.located = find_multimodal_neurons(demo.model, demo.processor, demo.images, concepts=concepts, top_k=1000,
                                           run_dir=demo.run.path / "locate", overwrite=True, heatmaps=1,
                                           heatmap_neurons=2, heatmap_absolute=True, max_new_tokens=12)
    demo.captions = [record["caption"] for record in demo.located.captions]
    for i in range(min(4, len(demo.captions))):
        _say(f"      image {i}: {demo.captions[i]}")
    _say("[3/7] top neurons per concept, with the tokens their value vectors promote")
    rows, table = [], {}
    for concept in demo.located.concepts:
        neurons = demo.located.concept_neurons(concept, 3)
        explained = top_tokens(demo.model, neurons, demo.processor, k=5)
        shown = []
        for (layer, index), tokens in zip(neurons.tolist(), explained.tokens, strict=True):
            table[f"{layer}:{index}"] = [t.strip() for t in tokens]
            rows.append({"concept": concept, "layer": layer, "neuron": index,
                         "top tokens": " ".join(t.strip() for t in tokens)})
            shown.append(f"L{layer}.{index} -> {' '.join(t.strip() for t in tokens)}")
        _say(f"      {concept:>8}: " + " | ".join(shown))
    demo.run.write_csv("neurons.csv", rows, ["concept", "layer", "neuron", "top tokens"])
    demo.run.write_json("top_tokens.json", table)
    _heatmaps(demo)


def _heatmaps(demo: _Demo) -> None:
    from neuronscope.workflows.demo_heatmaps import LOCALISATION_KEY, draw_heatmap_sheets

    _say("[4/7] heatmaps of every concept's top neurons over its images, and how much of each mask is on the object")
    table = draw_heatmap_sheets(demo.run, demo.model, demo.processor, demo.scenes, demo.images, demo.located,
                                images_per_concept=HEATMAP_IMAGES)
    demo.metrics[LOCALISATION_KEY] = table
    for concept, row in table.items():
        _say(f"      {concept:>8}: top-100 mask {row.get('top 100', float('nan')):.0%} on the object "
             f"(object area {row['object area']:.0%}, {row['images']} images)")
    singles = len(list((demo.run.path / "locate" / "heatmaps").glob("*.png")))
    _say(f"      one sheet per concept in {demo.run.path / 'heatmaps'}; the pipeline's {singles} single maps in "
         f"{demo.run.path / 'locate' / 'heatmaps'} (all linked from the report)")


def _suppression(demo: _Demo, ks: list[int], concept: str) -> list[Any]:
    from neuronscope.bundled import CAPTION_PREFIX, CAPTION_PROMPT, COLOURS, SHAPES
    from neuronscope.measure.captions import concept_removal, removal_records
    from neuronscope.models import get_adapter

    _say(f"[5/7] suppressing each colour's top {', '.join(map(str, ks))} neurons while captioning (activation x 0 at "
         f"every generated step), against {demo.n_random} random set(s) with the same number of neurons per layer")
    colours = {c: demo.shows[c] for c in COLOURS if demo.shows[c] and c in demo.located.concepts}
    removal = concept_removal(
        demo.model, demo.processor, demo.images, colours,
        {c: demo.located.concept_neurons(c, max(ks)) for c in colours}, ks, prompt=CAPTION_PROMPT,
        assistant_prefix=CAPTION_PREFIX, d_ff=get_adapter(demo.model).d_ff, words=[*COLOURS, *SHAPES],
        n_random=demo.n_random, seed=demo.seed, word_images={w: rows for w, rows in demo.shows.items() if rows})
    records = removal_records(removal)
    demo.run.write_csv("tables/suppression.csv", records, list(records[0]))
    _say("      colour  images  before  " + "  ".join(f"top-{k:<3d}" for k in ks) + f"  random-{ks[-1]}")
    for colour in colours:
        mine = [row for row in removal if row.concept == colour]
        _say(f"      {colour:>6}  {mine[0].images:6d}  {mine[0].before:6.0%}  "
             + "  ".join(f"{row.after_located:7.0%}" for row in mine) + f"  {mine[-1].after_random:9.0%}")
    demo.metrics["suppression, every colour"] = records
    return [row for row in removal if row.concept == concept]


def _edit(demo: _Demo, concept: str, suppressed_rows: list[Any], ks: list[int]) -> None:
    from neuronscope.bundled import COLOURS
    from neuronscope.edit.weights import ValueVectorEdit
    from neuronscope.inputs.targets import word_token
    from neuronscope.measure.baselines import random_neurons_like
    from neuronscope.models import get_adapter
    from neuronscope.trace import suppress

    replacement = next(c for c in COLOURS if c not in (concept, "white"))
    with_concept = demo.shows[concept]
    neurons = demo.located.concept_neurons(concept, demo.n_neurons)
    suppressed = demo.caption(suppress(demo.located.concept_neurons(concept, ks[-1]), positions="last"))
    _say(f"[6/7] editing the value vectors of the top {demo.n_neurons} neurons of '{concept}' ({len(with_concept)} "
         f"images have something {concept}) towards '{replacement}', against the same edit of random neurons")
    source, target = word_token(demo.processor, concept), word_token(demo.processor, replacement)
    edit = ValueVectorEdit.token_shift(demo.model, neurons, source, target, strength=EDIT_STRENGTH, signs="source",
                                       reason=f"replace '{concept}' by '{replacement}' (demo)")
    with edit.applied(demo.model):
        edited = demo.caption()
    edit.save(demo.run.path / "edit")
    random_edited = []
    for draw in random_neurons_like(neurons, get_adapter(demo.model).d_ff, n_draws=demo.n_random, seed=demo.seed,
                                    exclude_given=True):
        with ValueVectorEdit.token_shift(demo.model, draw, source, target, strength=EDIT_STRENGTH,
                                         signs="source").applied(demo.model):
            random_edited.append(demo.caption())
    base, after, after_suppress = demo.rates(demo.captions), demo.rates(edited), demo.rates(suppressed)
    random_after = _mean_rates([demo.rates(texts) for texts in random_edited])
    unrelated = [w for w in base if w not in (concept, replacement)]
    others = [w for w in base if w != concept]
    moved = _moved(after, base, unrelated)
    _say(f"      edit (w_i += {EDIT_STRENGTH} sign_i (u_{replacement} - u_{concept}) on those neurons): '{concept}' "
         f"{base[concept]:.0%} -> {after[concept]:.0%} (the same edit of random neurons: {random_after[concept]:.0%}); "
         f"the other words' rates (each over the images that show it) moved by {moved:.1%} on average")
    from neuronscope.measure.metrics import concept_rate

    demo.metrics.update({
        "concept": concept, "neurons": len(neurons), "images": len(demo.images),
        f"images with {concept}": len(with_concept),
        f"'{concept}' rate in their captions, before": round(base[concept], 3),
        **{f"suppress top {row.k}: rate after (located neurons)": round(row.after_located, 3)
           for row in suppressed_rows},
        **{f"suppress {row.k}: rate after (random neurons, mean of {demo.n_random})": round(row.after_random, 3)
           for row in suppressed_rows},
        f"edit to '{replacement}': rate after (located neurons)": round(after[concept], 3),
        f"edit to '{replacement}': rate after (random neurons, mean of {demo.n_random})": round(random_after[concept], 3),
        f"edit: '{replacement}' said for those images (located neurons)":
            round(concept_rate([edited[i] for i in with_concept], replacement), 3),
        "edit: other words, mean absolute change in rate (each over the images that show it)": round(moved, 3),
        f"suppress top {ks[-1]}: other words, mean absolute change in rate (each over the images that show it)":
            round(_moved(after_suppress, base, others), 3),
        "word rates (each over the images that show the word)": {
            word: {"images": len(demo.shows[word]), "before": round(base[word], 3),
                   "suppressed": round(after_suppress[word], 3), "edited": round(after[word], 3)} for word in others},
    })
    demo.run.write_json("captions.json", [
        {"id": i, "image": f"images/image_{i:02d}.png", "before": demo.captions[i], "after": edited[i],
         f"suppressed (top {ks[-1]})": suppressed[i], "after random edit": random_edited[0][i]}
        for i in range(len(demo.images))])
    for i in with_concept[:3]:
        _say(f"      image {i}: '{demo.captions[i]}'  ->  edited: '{edited[i]}'")
    demo.run.write_text("summary.txt", (
        f"The bundled shapes model captioned {len(demo.images)} held-out images. Contribution scores located the "
        f"neurons behind each colour and shape word. Shifting the value vectors of the top {len(neurons)} neurons of "
        f"'{concept}' towards '{replacement}' took '{concept}' in the captions of images with {concept} things from "
        f"{base[concept]:.0%} to {after[concept]:.0%} (the same edit of random neurons: {random_after[concept]:.0%}), "
        f"while the other words' rates (each over the images that show that word) moved by {moved:.1%} on average. "
        "Zeroing the activations of its top "
        + ", ".join(f"{row.k} neurons took it to {row.after_located:.0%}" for row in suppressed_rows)
        + f" (random {ks[-1]}: {suppressed_rows[-1].after_random:.0%}). Every colour's figures are in "
        "tables/suppression.csv and metrics.json; MODEL_CARD.md explains why zeroing needs more neurons than editing.\n"))


def _every_colour(demo: _Demo) -> None:
    """The same edit for every colour (towards the next one), located neurons vs one random set."""
    from neuronscope.bundled import COLOURS
    from neuronscope.edit.weights import ValueVectorEdit
    from neuronscope.inputs.targets import word_token
    from neuronscope.measure.baselines import random_neurons_like
    from neuronscope.measure.metrics import concept_rate
    from neuronscope.models import get_adapter

    every = {}
    for colour in COLOURS:
        rows = demo.shows[colour]
        if not rows or colour not in demo.located.concepts:
            continue
        new = COLOURS[(COLOURS.index(colour) + 1) % len(COLOURS)]
        chosen = demo.located.concept_neurons(colour, demo.n_neurons)
        draw = random_neurons_like(chosen, get_adapter(demo.model).d_ff, n_draws=1, seed=demo.seed,
                                   exclude_given=True)[0]
        row = {"images": len(rows), "before": concept_rate([demo.captions[i] for i in rows], colour)}
        for name, which in (("located", chosen), ("random", draw)):
            shift = ValueVectorEdit.token_shift(demo.model, which, word_token(demo.processor, colour),
                                                word_token(demo.processor, new), strength=EDIT_STRENGTH, signs="source")
            with shift.applied(demo.model):
                row[f"after edit ({name} neurons)"] = concept_rate(demo.caption(rows=rows), colour)
        every[f"{colour} -> {new}"] = {key: round(value, 3) for key, value in row.items()}
    demo.metrics["edit, every colour: rate of the colour in its images' captions"] = every
    _say("      every colour, the same edit: " + "; ".join(
        f"{pair} {row['before']:.0%}->{row['after edit (located neurons)']:.0%} "
        f"(random {row['after edit (random neurons)']:.0%})" for pair, row in every.items()))


def _mean_rates(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: sum(run[key] for run in runs) / len(runs) for key in runs[0]}


def _moved(after: dict[str, float], before: dict[str, float], words: list[str]) -> float:
    return sum(abs(after[w] - before[w]) for w in words) / max(1, len(words))
