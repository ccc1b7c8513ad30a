"""Multimodal neurons of Pan et al. (2024), end to end: captions -> target nouns -> contribution scores ->
top-k per (image, noun) -> neurons per concept -> heatmaps over the image.

Batches of images go through the one run loop (:func:`~neuronscope.runs.loop.run_loop`: resumable per image,
sharded across processes, out-of-memory back-off); each batch is captioned and scored by
:func:`~.scoring.caption_and_score`. A missing or unreadable image is reported with its path, recorded as
skipped in the ledger and counted; a run in which no image could be captioned fails (nothing to report).

Results folder (``run_dir``): ``examples/<index>.{json,safetensors}`` per image (caption, generated ids, targets;
top-k values and flat indices ``layer * d_ff + index`` per target; on a mixture-of-experts model the flat neuron ids
of its :class:`~neuronscope.models.moe.NeuronLayout`, which ``config.json`` holds); ``captions.json``; ``pairs.safetensors`` +
``pairs.json``; ``concepts.json`` and ``neurons.csv`` (per concept, the top neurons with sum, frequency and top
tokens); ``concepts.safetensors``; ``metrics.json`` (counts, skipped images); ``skipped.json``; ``plots/*.png``;
``heatmaps/*.png``; ``report.html``.

Example:
    >>> found = find_multimodal_neurons(model, processor, ["a.jpg", "b.jpg"], concepts=["dog", "cat"],
    ...                                 run_dir="runs/dogs")  # doctest: +SKIP
    >>> found.concept_neurons("dog", 10)  # [10, 2] (layer, index) rows; [10, 3] (layer, expert, index) for MoE  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NoReturn

import torch
from torch import nn

from neuronscope.errors import InputError, NothingProcessedError
from neuronscope.inputs.batch import DEFAULT_CAPTION_PREFIX, DEFAULT_CAPTION_PROMPT
from neuronscope.inputs.images import ImageRecord, image_records
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.runs.batching import is_out_of_memory
from neuronscope.runs.folder import RunDir
from neuronscope.runs.loop import Example, Skip, run_loop
from neuronscope.trace.decode import release_kept_decoding
from neuronscope.workflows.multimodal.moe_scoring import moe_config, score_grid
from neuronscope.workflows.multimodal.nouns import ConceptSpec, Tagger, resolve_tagger
from neuronscope.workflows.multimodal.results import RANK_BY, MultimodalNeurons, write_results
from neuronscope.workflows.multimodal.scoring import caption_and_score
from neuronscope.workflows.options import split_words
from neuronscope.workflows.result import RunResult
from neuronscope.workflows.specs.vision import MultimodalOptions


def find_multimodal_neurons(
    model: nn.Module,
    processor: Any,
    images: Any,
    *,
    prompt: str = DEFAULT_CAPTION_PROMPT,
    assistant_prefix: str | None = DEFAULT_CAPTION_PREFIX,
    concepts: ConceptSpec | None = None,
    tagger: Tagger | str | None = None,
    top_k: int = 10_000,
    site: str = "neuron",
    final_norm: bool = False,
    batch_size: int = 8,
    max_new_tokens: int = 20,
    run_dir: str | os.PathLike[str] | RunDir | None = None,
    resume: bool = False,
    overwrite: bool = False,
    report_neurons: int = 100,
    rank_by: str = "sum",
    heatmaps: int = 1,
    heatmap_neurons: int = 3,
    heatmap_concepts: int = 10,
    heatmap_absolute: bool = False,
    compile: bool = False,
    meta: dict[str, Any] | None = None,
) -> MultimodalNeurons:
    """Find multimodal neurons (Pan et al. 2024) for a set of images; see the module docstring for the steps.

    Args:
        model, processor: a vision-language model and its processor (with a chat template). A
            mixture-of-experts VLM (Qwen3-VL-MoE) is scored over its expert neurons (:mod:`.moe_scoring`):
            neurons are ``(layer, expert, index)`` rows, heatmaps show ``g_e · a_{e,i}`` (0 where not routed).
        images: PIL images, image paths, ``ImageRecord``s or an ``ImageDataset`` (:mod:`neuronscope.inputs.images`).
        prompt: the user turn (default ``"Describe the image in few words."``).
        assistant_prefix: how the answer starts (default ``"An image of"``); None for none.
        concepts: words to look for (``["dog", "cat"]`` or ``{"dog": ["dog", "puppy"]}``). Default None: the
            nouns of each caption, through ``tagger``.
        tagger: a part-of-speech tagger (callable), a spaCy pipeline name, or None for spaCy's
            ``en_core_web_sm`` if installed (an error says how to install it otherwise).
        top_k: neurons kept per (image, target); default 10,000 (the authors' number).
        site: ``"neuron"`` (default: the FFN output projection's input) or ``"act"`` (the authors' hook; dense
            models only).
        final_norm: scale scores by the final norm frozen at the target position (default False: raw logits).
        batch_size: images per ``generate`` call (default 8; halved on out-of-memory).
        max_new_tokens: caption length limit (default 20).
        run_dir: a results folder (path or :class:`RunDir`); None keeps everything in memory.
        resume: continue an interrupted run in ``run_dir`` (images in its ledger are not computed again).
        overwrite: replace an earlier run in ``run_dir``.
        report_neurons: neurons per concept written to ``concepts.json`` / ``neurons.csv`` (default 100).
        rank_by: ``"sum"`` (default) or ``"frequency"``: how concept neurons are ranked in the files.
        heatmaps: images per concept to draw heatmaps for (default 1; 0 for none; needs ``run_dir``).
        heatmap_neurons: single top neurons drawn per heatmap image (default 3), besides the top-k means.
        heatmap_concepts: heatmaps for the concepts with the most pairs only (default 10).
        heatmap_absolute: draw ``|activation|`` (default False: signed, as the paper).
        compile: decode through the compiled text decoder (dense models; :mod:`neuronscope.trace.compiled_decoder`);
            the last batch, if smaller, is padded with copies of its last image (results dropped) so that it reuses
            the compiled decoding instead of compiling its own shape.
        meta: more of how the run was made, for ``run_dir``'s ``meta.json`` (the recipe's runtime options).

    Raises:
        NothingProcessedError: no image could be captioned (every one was missing or unreadable).

    Example:
        >>> found = find_multimodal_neurons(model, processor, images, concepts=["dog"], top_k=1000)  # doctest: +SKIP
    """
    if rank_by not in RANK_BY:
        raise InputError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
    if top_k < 1 or batch_size < 1 or max_new_tokens < 1:
        raise InputError("top_k, batch_size and max_new_tokens must be at least 1")
    adapter = get_adapter(model)
    expert_axis = moe_config(adapter, site)  # {} for a dense model, whose config stays as it is
    records, pre_skipped = image_records(images)
    resolved_tagger = resolve_tagger(concepts, tagger)
    n_layers, d_ff = score_grid(adapter)
    k = min(top_k, n_layers * d_ff)
    config = {
        "pipeline": "multimodal_neurons", "method": "contribution", "prompt": prompt,
        "assistant_prefix": assistant_prefix, "concepts": _jsonable_concepts(concepts),
        "targets": "concepts" if concepts is not None else "nouns", "top_k": k, "site": site,
        "final_norm": final_norm, "max_new_tokens": max_new_tokens, "n_images": len(records),
        "image_ids": [record.id for record in records], "model": adapter.describe(), **expert_axis,
    }
    run = run_dir if isinstance(run_dir, RunDir) or run_dir is None else RunDir(
        run_dir, resume=resume, overwrite=overwrite)
    if run is not None:
        run.write_config(config)
        run.write_meta(meta)

    process = _captioner(model, processor, _Padding(bool(compile)), prompt=prompt,
                         assistant_prefix=assistant_prefix, concepts=concepts, tagger=resolved_tagger, top_k=k,
                         site=site, final_norm=final_norm, max_new_tokens=max_new_tokens, compile=compile)
    try:  # each batch of a shape replays the decoding kept from the one before (no capture per batch)
        report = run_loop(run, records, process, batch_size=batch_size, label="images")
    finally:
        release_kept_decoding(model)
    outcomes = _all_outcomes(run, report, k)
    result = _assemble(outcomes, records, pre_skipped, adapter, config)
    if result.metrics["images_captioned"] == 0:
        _nothing_captioned(run, result)
    if run is not None:
        write_results(run, result, model, processor, report_neurons=report_neurons, rank_by=rank_by)
        if heatmaps > 0:
            from neuronscope.workflows.multimodal.heatmaps import draw_concept_heatmaps

            draw_concept_heatmaps(model, processor, result, records, run, images_per_concept=heatmaps,
                                  single_neurons=heatmap_neurons, prompt=prompt, assistant_prefix=assistant_prefix,
                                  rank_by=rank_by, max_concepts=heatmap_concepts, absolute=heatmap_absolute)
    return result


def _captioner(model: nn.Module, processor: Any, padding: _Padding,
               **options: Any) -> Callable[[list[tuple[int, ImageRecord]]], list[Example | Skip]]:
    """The run loop's batch function: open each image (a missing or unreadable one is a :class:`Skip`), caption
    and score the opened ones (``options``: :func:`caption_and_score`'s; the decoding kept for the next batch)."""

    def process(chunk: list[tuple[int, ImageRecord]]) -> list[Example | Skip]:
        outcomes: dict[int, Example | Skip] = {}
        opened = []
        for index, record in chunk:
            try:
                opened.append((index, record, record.load()))
            except InputError as error:  # a missing or unreadable image: reported, recorded, counted
                outcomes[index] = Skip(str(error), {"id": record.id, "where": record.where})
        if opened:
            found, tops = padding.caption(
                [image for _, _, image in opened],
                lambda images: caption_and_score(model, processor, images, keep=True, **options)[2:])
            for (index, record, _), found_record, top in zip(opened, found, tops, strict=True):
                tensors = ({"values": top.values.float().contiguous(), "flat_indices": top.flat_indices.contiguous()}
                           if top.values.numel() else None)
                outcomes[index] = Example(tensors, {"id": record.id, "skipped": None, **found_record})
        return [outcomes[index] for index, _ in chunk]

    return process


class _Padding:
    """Compiled decoding: a batch smaller than the one before (the last) is padded to its size with copies of its
    last image, whose results are dropped, so that it replays the kept, compiled decoding instead of compiling a
    new shape (1-2 minutes on a 7B). Turned off for the rest of the run if a padded batch runs out of memory (the
    batch size is then being lowered)."""

    def __init__(self, on: bool):
        self.on, self.size = on, 0

    def caption(self, images: list[Any], call: Callable[[list[Any]], tuple[list, list]]) -> tuple[list, list]:
        """``call(images)`` → (records, tops), on ``images`` padded where they are fewer than the batch before;
        the padding rows' results dropped."""
        missing = self.size - len(images) if self.on else 0
        padded = images + [images[-1]] * missing if missing > 0 else images
        try:
            records, tops = call(padded)
        except Exception as error:
            if missing > 0 and is_out_of_memory(error):
                self.on = False
            raise
        self.size = len(padded)
        return records[:len(images)], tops[:len(images)]


def _nothing_captioned(run: RunDir | None, result: MultimodalNeurons) -> NoReturn:
    """Keep the skip reasons in the run folder (``metrics.json``, the skipped inputs), then refuse the run."""
    where = f"; the skip reasons are in {run.path / 'metrics.json'}" if run is not None else ""
    if run is not None:
        run.write_json("metrics.json", result.metrics)
        run.write_skipped(result.metrics["skipped_inputs"])
    raise NothingProcessedError(f"no image could be captioned ({result.metrics['images_skipped']} skipped; "
                                f"first: {_first_reason(result)}){where}")


def multimodal(options: MultimodalOptions, *, loaded: Any = None) -> RunResult:
    """``recipe multimodal``: :func:`find_multimodal_neurons` on an image folder or captions file, into ``--out``."""
    from neuronscope.inputs.images import read_images
    from neuronscope.report import build_report
    from neuronscope.workflows.common import load

    dataset = read_images(options.images, options.image_root)
    RunDir.check(options.out, resume=options.resume, overwrite=options.overwrite)
    loaded = load(options, loaded)
    concepts = split_words(options.concepts) or None
    found = find_multimodal_neurons(
        loaded.model, loaded.processor, dataset, prompt=options.prompt, assistant_prefix=options.assistant_prefix or None,
        concepts=concepts, top_k=options.top_k, site=options.site, final_norm=options.final_norm,
        batch_size=options.batch_size, max_new_tokens=options.max_new_tokens, run_dir=options.out,
        resume=options.resume, overwrite=options.overwrite, report_neurons=options.report_neurons,
        rank_by=options.rank_by, heatmaps=options.heatmaps, heatmap_neurons=options.heatmap_neurons,
        heatmap_concepts=options.heatmap_concepts, heatmap_absolute=options.heatmap_absolute,
        compile=options.compile, meta={"runtime": options.runtime()})
    run = RunDir.open(options.out)
    run.write_json("cli_config.json", {"command": "recipe multimodal", **options.recorded()})
    build_report(options.out)
    return RunResult("recipe multimodal", str(options.out), found.as_dict(),
                     [found.summary(), f"multimodal neurons written into {options.out} (report: "
                                       f"{options.out / 'report.html'})"])


def _all_outcomes(run: RunDir | None, report: Any, k: int) -> dict[int, dict[str, Any]]:
    """Every image's record and tensors: this call's, and (on resume) those read back from the ledger."""
    if run is None:
        return {index: _as_entry(outcome, k) for index, outcome in report.outcomes.items()}
    out = {}
    for entry in run.ledger_entries():
        tensors, record = run.read_example(entry["key"])
        out[int(entry["index"])] = {"record": record, "values": tensors.get("values", torch.zeros(0, k)),
                                    "flat_indices": tensors.get("flat_indices", torch.zeros(0, k, dtype=torch.long))}
    return out


def _as_entry(outcome: Example | Skip, k: int) -> dict[str, Any]:
    if isinstance(outcome, Skip):
        return {"record": {**outcome.record, "skipped": outcome.reason}, "values": torch.zeros(0, k),
                "flat_indices": torch.zeros(0, k, dtype=torch.long)}
    tensors = outcome.tensors or {}
    return {"record": outcome.record, "values": tensors.get("values", torch.zeros(0, k)),
            "flat_indices": tensors.get("flat_indices", torch.zeros(0, k, dtype=torch.long))}


def _assemble(outcomes: dict[int, dict[str, Any]], records: list[ImageRecord], pre_skipped: list[dict[str, str]],
              adapter: ModelAdapter, config: dict[str, Any]) -> MultimodalNeurons:
    k = int(config["top_k"])
    captions, pairs, values, flats = [], [], [], []
    skipped = list(pre_skipped)
    for index in sorted(outcomes):
        item = outcomes[index]
        record = {"index": index, **item["record"]}
        captions.append(record)
        if record.get("skipped"):
            skipped.append({"source": "images", "record": record["id"],
                            "image": record.get("where", record["id"]), "reason": record["skipped"]})
            continue
        for number, target in enumerate(record.get("targets", [])):
            pairs.append({"index": index, "id": record["id"], **target})
            values.append(item["values"][number])
            flats.append(item["flat_indices"][number])
    captioned = [c for c in captions if not c.get("skipped")]
    metrics = {
        "images_declared": len(records) + len(pre_skipped),
        "images_captioned": len(captioned),
        "images_skipped": len(skipped),
        "images_without_targets": sum(1 for c in captioned if not c.get("targets")),
        "pairs": len(pairs),
        "concepts": len({p["concept"] for p in pairs}),
        "skipped_inputs": skipped,
    }
    return MultimodalNeurons(captions, pairs, torch.stack(values) if values else torch.zeros(0, k),
                             torch.stack(flats) if flats else torch.zeros(0, k, dtype=torch.long), adapter.n_layers,
                             adapter.d_ff, meta=config, metrics=metrics,
                             layout=None if adapter.moe is None else adapter.moe.layout)


def _first_reason(result: MultimodalNeurons) -> str:
    skipped = result.metrics["skipped_inputs"]
    return f"{skipped[0].get('image', skipped[0].get('record'))}: {skipped[0]['reason']}" if skipped else "none"


def _jsonable_concepts(concepts: ConceptSpec | None) -> Any:
    if concepts is None or isinstance(concepts, str):
        return concepts
    if hasattr(concepts, "items"):
        return {str(name): list(words) if not isinstance(words, str) else [words]
                for name, words in concepts.items()}
    return list(concepts)
