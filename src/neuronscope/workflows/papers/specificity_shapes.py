"""The specificity recipe on the bundled shapes model: each colour's and shape's concept neurons, plain vs specific.

1. caption held-out images (the bundled LLaVA, Pan et al.'s prompt) in two disjoint halves: **dev** and **eval**;
2. on the dev images, locate every word's neurons by contribution (its (image, word) pairs' top-1000 scores);
   plain = the word's top-``k`` by summed score (the demo's selection); specific = the contrast against every other
   word's pairs (:mod:`neuronscope.aggregate.specific`) at each strength tried;
3. zero a word's set at every generated step while captioning: the word's own rate over the images that show it,
   and each other word's rate over the images that show that word, against ``n_random`` random same-layer sets;
4. choose the strength on the dev images (the rule of the facts recipe: keep >= 80 % of the plain own-rate drop,
   then the smallest median change of the other words' rates), report plain and chosen on the eval images.

Figures: "own" = median over words of the relative change of the word's rate ``(after − before) / before`` in the
captions of the images that show it; "others" = median over every (word, other word) pair of the relative change
of the other word's rate over the images that show that other word.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from neuronscope.aggregate.specific import SpecificSelection, select_specific
from neuronscope.measure.baselines import random_neurons_like
from neuronscope.measure.metrics import concept_rate
from neuronscope.measure.specificity import SpecificityReport, pooled
from neuronscope.trace import suppress
from neuronscope.workflows.papers.common import Stopwatch, finish_run, model_name, open_run, write_table
from neuronscope.workflows.papers.specificity import GOAL, choose, figures, label


class _Captions:
    """Images, which words each shows, and captions under interventions."""

    def __init__(self, loaded: Any, images: list[Any], shows: dict[str, list[int]]) -> None:
        self.loaded, self.images, self.shows = loaded, images, shows
        self.base = self.caption([])

    def caption(self, interventions: list[Any]) -> list[str]:
        from neuronscope.bundled import CAPTION_PREFIX, CAPTION_PROMPT
        from neuronscope.measure.captions import caption_images

        return caption_images(self.loaded.model, self.loaded.processor, self.images, CAPTION_PROMPT,
                              assistant_prefix=CAPTION_PREFIX, interventions=interventions)

    def rates(self, texts: list[str]) -> dict[str, float]:
        return {word: concept_rate([texts[i] for i in rows], word) for word, rows in self.shows.items() if rows}

    def changes(self, word: str, neurons: torch.Tensor) -> tuple[list[float], list[float]]:
        """The relative change of the word's own rate and of every other word's rate, with ``neurons`` zeroed."""
        before, after = self.rates(self.base), self.rates(self.caption(suppress(neurons, positions="last")))
        relative = {w: (after[w] - before[w]) / before[w] for w in after if before[w] > 0}
        return [relative[word]] if word in relative else [], [v for w, v in relative.items() if w != word]


def _images(n: int, seed: int) -> tuple[list[Any], list[dict[str, list[int]]]]:
    from neuronscope.bundled import COLOURS, SHAPES, render_scene, sample_scenes

    scenes = sample_scenes(n, seed=seed, split="test")
    words = [{o.colour for o in scene.objects} | {o.shape for o in scene.objects} for scene in scenes]
    return [render_scene(scene) for scene in scenes], [{w: [i for i, ws in enumerate(words) if w in ws]
                                                        for w in (*COLOURS, *SHAPES)}]


def _split(images: list[Any], shows: dict[str, list[int]], part: int) -> tuple[list[Any], dict[str, list[int]]]:
    """The even (``part`` 0) or odd (1) images and what they show, renumbered."""
    picked = list(range(part, len(images), 2))
    index = {old: new for new, old in enumerate(picked)}
    return [images[i] for i in picked], {w: [index[i] for i in rows if i in index] for w, rows in shows.items()}


def measure_words(captions: _Captions, sets: dict[str, torch.Tensor], *, n_random: int, seed: int,
                  d_ff: int) -> Any:
    """Each word's set zeroed while captioning: own and other words' relative rate changes, random sets too."""
    reports = []
    generator = torch.Generator().manual_seed(seed)
    for word, neurons in sets.items():
        own, others = captions.changes(word, neurons)
        values = {"target": own, "all others": others, "random target": [], "random all others": []}
        for draw in random_neurons_like(neurons, d_ff, n_draws=n_random, generator=generator, exclude_given=True):
            random_own, random_others = captions.changes(word, draw)
            values["random target"] += random_own
            values["random all others"] += random_others
        reports.append(SpecificityReport("x0 at every generated step", len(neurons), n_random, seed)._set(values))
    return pooled(reports)


def run_concept_specificity(out_dir: str | Path, *, model: Any = None, limit: int | None = None, seed: int = 0,
                            top_k: int = 300, n_random: int = 3, strengths: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
                            n_images: int = 24) -> dict[str, Any]:
    """The shapes part of the specificity recipe (module docstring); returns the metrics."""
    from neuronscope.models.adapter import get_adapter
    from neuronscope.workflows.multimodal.pipeline import find_multimodal_neurons
    from neuronscope.workflows.papers.qrnca import shapes_model

    watch = Stopwatch()
    loaded = model or shapes_model()
    n_images = 2 * limit if limit is not None else n_images
    run = open_run(out_dir, {"experiment": "specificity_shapes", "model": model_name(loaded), "seed": seed,
                             "n_images": n_images, "top_k": top_k, "n_random": n_random, "strengths": list(strengths),
                             "intervention": "x0 at every generated step", "scores": "contribution, top-1000 per pair"})
    images, (shows,) = _images(n_images, seed)
    parts = [_split(images, shows, part) for part in (0, 1)]
    with watch("locate"):
        located = find_multimodal_neurons(loaded.model, loaded.processor, parts[0][0],
                                          concepts={w: [w] for w in shows}, top_k=1000, heatmaps=0,
                                          max_new_tokens=12)
    words = [w for w in located.concepts if parts[0][1][w] and parts[1][1][w]]
    dense = {w: located.pair_top_k(located.pair_rows(w)).to_dense().double() for w in words}
    k = min(top_k, located.n_layers * located.d_ff)

    def sets(selection: SpecificSelection) -> dict[str, torch.Tensor]:
        if selection.rule == "plain":
            return {w: located.concept_neurons(w, k) for w in words}
        return {w: select_specific(dense[w], torch.cat([dense[o] for o in words if o != w]), selection,
                                   top_k=k)[0] for w in words}

    d_ff = get_adapter(loaded.model).d_ff
    tried = [SpecificSelection("contrast", float(s)) for s in strengths]
    with watch("dev"):
        dev = _Captions(loaded, *parts[0])
        dev_plain = figures(measure_words(dev, sets(SpecificSelection("plain")), n_random=0, seed=seed, d_ff=d_ff))
        dev_tried = {label(s): figures(measure_words(dev, sets(s), n_random=0, seed=seed, d_ff=d_ff)) for s in tried}
    chosen = next(s for s in tried if label(s) == choose(dev_plain, dev_tried))
    with watch("eval"):
        held = _Captions(loaded, *parts[1])
        result = {"chosen": label(chosen), **{kind: figures(measure_words(held, sets(s), n_random=n_random, seed=seed,
                                                                           d_ff=d_ff))
                                              for kind, s in (("plain", SpecificSelection("plain")),
                                                              ("specific", chosen))}}
    write_table(run, "tables/tradeoff.csv", [{"images": "dev", "selection": name, **row}
                                             for name, row in {"plain": dev_plain, **dev_tried}.items()])
    metrics = {"title": f"Specific concept neurons of the bundled shapes model ({model_name(loaded)})",
               "words": words, "images": {"dev": len(parts[0][0]), "eval": len(parts[1][0])}, "goal": GOAL,
               "table": {f"contribution / {kind}": _row(result[kind]) for kind in ("plain", "specific")},
               "result": result, "wall_time": watch.as_dict()}
    return finish_run(run, metrics, f"{len(words)} words; top-{k} contribution neurons per word zeroed while "
                                    f"captioning {len(parts[1][0])} held-out images; plain vs specific "
                                    f"({label(chosen)}, chosen on {len(parts[0][0])} other images).")


def _row(row: dict[str, Any]) -> dict[str, Any]:
    return {"own rate (median)": row["own"], "other words (median)": row["all_others"],
            "random own": row["random_own"], "random other words": row["random_all_others"]}
