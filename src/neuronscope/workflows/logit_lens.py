"""``recipe logit-lens``: the logit lens over image tokens, per patch and layer, as grids over the image.

For each image (a folder or captions file, or held-out scenes of the bundled shapes world): the image and the
prompt go through the model once; the residual stream at every image-token position is read through the final
norm and unembedding at each stage (the visual embeddings after the projector, then every layer's output:
:func:`neuronscope.vision.logit_lens.image_logit_lens`). Kept per (stage, patch): the top-``k`` tokens and the
ranks of the chosen ``--words``.

Files: ``lens/<n>.json`` (per stage, the top token of every grid cell; the report draws these as HTML grids),
``lens/<n>.<stage>.png`` (the tokens written on the enlarged image) for the first ``--drawn`` images,
``tables/lens_top_tokens.csv`` (the commonest top tokens per stage) and ``tables/lens_word_ranks.csv`` (each word's
mean rank per stage).

With ``--bundled-scenes N`` the scenes come with their object masks
(:func:`neuronscope.bundled.world.patch_coverage`), the words default to the six colours, and
``tables/lens_localisation.csv`` says per stage how often an object patch's top token is that object's colour,
against background patches whose top token is a colour of the scene
(:class:`neuronscope.measure.patch_localisation.LensLocalisation`).

Example:
    >>> run("recipe logit-lens", bundled_scenes=50, out="runs/lens")  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import torch

from neuronscope.errors import InputError, NothingProcessedError
from neuronscope.runs.folder import RunDir

DRAWN_STAGES = 5


@dataclass
class LensItem:
    """One image: its record, and (bundled scenes) each object's patch coverage and word index."""

    record: Any
    coverage: torch.Tensor | None = None  # [objects, cells] row-major over the grid
    object_words: torch.Tensor | None = None  # [objects] index into the words


def _bundled_items(n: int, seed: int) -> tuple[list[LensItem], list[str]]:
    from neuronscope.bundled import COLOURS, render_scene, sample_scenes
    from neuronscope.bundled.world import patch_coverage
    from neuronscope.inputs.images import ImageRecord

    items = []
    for number, scene in enumerate(sample_scenes(n, seed=seed, split="test")):
        coverage = torch.from_numpy(patch_coverage(scene)).flatten(1)
        words = torch.tensor([COLOURS.index(obj.colour) for obj in scene.objects])
        items.append(LensItem(ImageRecord(f"scene-{number}", image=render_scene(scene)), coverage, words))
    return items, list(COLOURS)


def drawn_stages(n_stages: int, wanted: int = DRAWN_STAGES) -> list[int]:
    """Indices of at most ``wanted`` stages, evenly spread, always the first and the last.

    Example:
        >>> drawn_stages(5), drawn_stages(33)
        ([0, 1, 2, 3, 4], [0, 8, 16, 24, 32])
    """
    if n_stages <= wanted:
        return list(range(n_stages))
    return sorted({round(i * (n_stages - 1) / (wanted - 1)) for i in range(wanted)})


def _word_ids(tokenizer: Any, words: list[str], leading_space: bool) -> torch.Tensor:
    from neuronscope.inputs.targets import word_token

    return torch.tensor([word_token(tokenizer, word, leading_space) for word in words], dtype=torch.long)


def _cell_order(layout: Any) -> torch.Tensor:
    """Indices into the layout's tokens of the first tile's cells, row-major."""
    return layout.token_index(layout.tiles[0].positions)


def _write_image(run: RunDir, number: int, image: Any, layout: Any, lens: Any, tokenizer: Any,
                 word_ids: torch.Tensor, drawn: bool) -> None:
    from neuronscope.vision.token_grid import token_grid_image

    cells = _cell_order(layout)
    tile = layout.tiles[0]
    stages = []
    for s, stage in enumerate(lens.stages):
        top = lens.top_ids[s, :, 0]
        labels = [tokenizer.decode([int(t)]) for t in top]
        hits = torch.isin(top, word_ids).tolist()
        stages.append({"stage": stage, "top": [labels[i] for i in cells.tolist()],
                       "highlight": [bool(hits[i]) for i in cells.tolist()]})
        if drawn and s in drawn_stages(len(lens.stages)):
            picture = token_grid_image(image, layout, labels, highlight=hits, title=f"{stage}: top token per patch")
            run.write_png(f"lens/{number}.{stage.replace(' ', '_')}.png", picture)
    run.write_json(f"lens/{number}.json", {"grid": [tile.rows, tile.cols], "stages": stages})


def _summaries(run: RunDir, tensors: list[dict[str, torch.Tensor]], stages: list[str], words: list[str],
               tokenizer: Any) -> list[dict[str, Any]]:
    """Commonest top tokens per stage and mean word ranks per stage, as tables; returns the rank rows."""
    from neuronscope.workflows.common import write_table

    top_rows, rank_rows = [], []
    for s, stage in enumerate(stages):
        counts: Counter[int] = Counter()
        for found in tensors:
            counts.update(found["top_ids"][s, :, 0].tolist())
        total = sum(counts.values())
        for token, count in counts.most_common(10):
            top_rows.append({"stage": stage, "token": tokenizer.decode([token]), "patches": count,
                             "fraction": round(count / total, 4)})
        if words:
            ranks = torch.cat([found["ranks"][s].float() for found in tensors])  # [patches, words]
            rank_rows.append({"stage": stage, **{f"mean_rank_{w}": round(float(ranks[:, j].mean()), 2)
                                                 for j, w in enumerate(words)}})
    write_table(run, "tables/lens_top_tokens.csv", top_rows)
    if rank_rows:
        write_table(run, "tables/lens_word_ranks.csv", rank_rows)
    return rank_rows


def _localisation(items: list[LensItem], done: dict[int, dict[str, torch.Tensor]], stages: list[str],
                  word_ids: torch.Tensor) -> list[dict[str, Any]]:
    from neuronscope.measure.patch_localisation import LensLocalisation

    counts = LensLocalisation(stages)
    for index, found in sorted(done.items()):
        item = items[index]
        cells = found["cells"]
        counts.add(found["top_ids"][:, cells, 0], found["ranks"][:, cells], item.coverage, item.object_words,
                   word_ids)
    return counts.rows()


def logit_lens(options: Any, *, loaded: Any = None) -> Any:
    """``recipe logit-lens``: see the module docstring."""
    from neuronscope.inputs.batch import encode_images, to_model
    from neuronscope.inputs.images import read_images
    from neuronscope.models.image_layout import image_layout
    from neuronscope.runs.loop import Example, Skip, run_loop
    from neuronscope.vision.logit_lens import image_logit_lens
    from neuronscope.workflows.common import finish_run, load, write_table
    from neuronscope.workflows.options import parse_layers, split_words
    from neuronscope.workflows.result import RunResult

    stages = parse_layers(options.stages, "--stages")
    if options.bundled_scenes:
        items, default_words = _bundled_items(options.bundled_scenes, options.seed)
    else:
        dataset = read_images(options.images, options.image_root)
        items, default_words = [LensItem(record) for record in dataset.records], []
    items = items[:options.max_images] if options.max_images else items
    words = split_words(options.words) or default_words
    RunDir.check(options.out, resume=options.resume, overwrite=options.overwrite)
    if options.bundled_scenes and not options.model:
        from neuronscope.bundled import SHAPES_VLM_PATH

        options = replace(options, model=str(SHAPES_VLM_PATH))
    loaded = load(options, loaded)
    model, processor = loaded.model, loaded.processor
    tokenizer = getattr(processor, "tokenizer", processor)
    word_ids = _word_ids(tokenizer, words, options.leading_space)
    run = RunDir(options.out, resume=options.resume, overwrite=options.overwrite)
    run.write_config({"command": "recipe logit-lens", **options.recorded(), "words": words,
                      "items": [item.record.id for item in items]})
    run.write_meta({"runtime": options.runtime()})

    def process(chunk: list[tuple[int, LensItem]]) -> list[Any]:
        out: list[Any] = []
        for number, item in chunk:
            try:
                image = item.record.load()
            except InputError as error:
                out.append(Skip(str(error), {"id": item.record.id, "where": item.record.where}))
                continue
            batch = encode_images(processor, [image], options.prompt, assistant_prefix=options.assistant_prefix or None)
            layout = image_layout(model, batch.inputs, 0, processor=processor, original_sizes=[image.size])
            if not layout.has_spatial_map:
                out.append(Skip(f"no image grid: {layout.reason}", {"id": item.record.id}))
                continue
            lens = image_logit_lens(model, to_model(batch, model), layout.positions, k=options.k,
                                    token_ids=word_ids, stages=stages)
            _write_image(run, number, image, layout, lens, tokenizer, word_ids, number < options.drawn)
            out.append(Example({"top_ids": lens.top_ids, "ranks": lens.ranks, "cells": _cell_order(layout)},
                               {"id": item.record.id, "stages": lens.stages}))
        return out

    run_loop(run, items, process, batch_size=1, label="images")
    done, rows, skipped = {}, [], []
    for entry in sorted(run.ledger_entries(), key=lambda e: int(e["index"])):
        tensors, record = run.read_example(entry["key"])
        if record.get("skipped"):
            skipped.append({"source": "images", "record": record.get("id"), "reason": record["skipped"]})
            continue
        done[int(entry["index"])] = tensors
        rows.append(record)
    if not done:
        raise NothingProcessedError(f"no image could be read through the lens ({len(skipped)} skipped); the "
                                    f"reasons are in {run.path / 'skipped.json'}")
    run.write_skipped(skipped)
    stage_names = rows[0]["stages"]
    rank_rows = _summaries(run, list(done.values()), stage_names, words, tokenizer)
    metrics: dict[str, Any] = {"images_done": len(done), "images_skipped": len(skipped), "words": words,
                               "stages": stage_names,
                               "mean_word_rank": {row["stage"]: {k: v for k, v in row.items() if k != "stage"}
                                                  for row in rank_rows}}
    lines = [f"logit lens over the image tokens of {len(done)} images ({len(skipped)} skipped), "
             f"{len(stage_names)} stages; results in {options.out}"]
    if options.bundled_scenes:
        local = _localisation(items, done, stage_names, word_ids)
        write_table(run, "tables/lens_localisation.csv", local)
        metrics["localisation"] = {row["stage"]: {k: v for k, v in row.items() if k != "stage"} for row in local}
        best = max(local, key=lambda row: row["object_top1_right"])
        lines.append(f"object patches whose top token is the object's colour: {best['object_top1_right']:.3f} at "
                     f"{best['stage']} (background patches showing a scene colour: "
                     f"{best['background_top1_scene_word']:.3f})")
    finish_run(run, metrics, "\n".join(lines), title="neuronscope · logit lens over image tokens")
    return RunResult("recipe logit-lens", str(options.out), metrics, lines)


__all__ = ["LensItem", "drawn_stages", "logit_lens"]
