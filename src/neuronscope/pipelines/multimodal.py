"""Multimodal neurons of Pan et al. (2024), end to end: captions -> target nouns -> contribution scores ->
top-k per (image, noun) -> neurons per concept -> heatmaps over the image.

What one call of :func:`find_multimodal_neurons` does, per batch of images:

1. **Caption**: the image and ``prompt`` go through the processor's chat template, the answer starts with
   ``assistant_prefix`` ("An image of"), and the model continues greedily (``max_new_tokens``).
2. **Capture during generation**: the neuron site is captured at the last position of every forward call of
   ``generate`` (``positions="last"``), i.e. at exactly the position whose logits produce each generated token:
   no re-forward of the caption is needed.
3. **Targets**: the nouns of the generated caption (a part-of-speech tagger) or the words of a concept list;
   each scored at the first sub-token of its first occurrence (:mod:`neuronscope.pipelines.nouns`).
4. **Scores**: ``s[l, i] = a[l, i] · <w_i, u_t>`` for all ``layers × d_ff`` neurons
   (:func:`neuronscope.attribute.contribution.contribution_scores`; optional frozen final-norm scaling); the
   top ``top_k`` per (image, target) are kept, sparse.
5. **Per concept** (across images): ``sum`` = the sum of a neuron's kept scores over the concept's pairs (a
   neuron outside a pair's top-k adds 0) and ``frequency`` = in how many of the concept's pairs it is in the
   top-k. Neurons are ranked by ``sum`` (default) or ``frequency`` (ties broken by the other).

Results folder (``run_dir``), resumable per image (``resume=True`` skips the images already in the ledger):

- ``examples/<index>.{json,safetensors}``: per image, the caption, generated ids and targets; top-k values and
  flat indices (``layer * d_ff + index``) per target;
- ``captions.json``; ``pairs.safetensors`` + ``pairs.json`` (all pairs' top-k); ``concepts.json`` and
  ``neurons.csv`` (per concept, the top neurons with sum, frequency and top tokens); ``concepts.safetensors``
  (dense sum / frequency per concept); ``metrics.json`` (counts, skipped images); ``skipped.json``;
  ``plots/*.png``; ``heatmaps/*.png``.

A missing or unreadable image is reported, recorded as skipped in the ledger and counted in ``metrics.json``.

Example:
    >>> result = find_multimodal_neurons(model, processor, ["a.jpg", "b.jpg"], concepts=["dog", "cat"],
    ...                                  run_dir="runs/dogs")  # doctest: +SKIP
    >>> result.concept_neurons("dog", 10)  # [10, 2] (layer, index) rows  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from neuronscope.aggregate.select import SparseTopK, flat_to_neurons, sparse_top_k
from neuronscope.attribute.contribution import CONTRIBUTION_SITES, scores_from_activations
from neuronscope.errors import InputError
from neuronscope.inputs import (
    DEFAULT_CAPTION_PREFIX,
    DEFAULT_CAPTION_PROMPT,
    Batch,
    encode_images,
    generate,
    to_model,
)
from neuronscope.inputs.images import ImageDataset, ImageRecord, load_image
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.models.image_layout import image_layout
from neuronscope.pipelines.nouns import ConceptSpec, Tagger, TargetWord, resolve_tagger, select_targets
from neuronscope.runs.folder import RunDir, example_key
from neuronscope.trace import capture
from neuronscope.vision.heatmap import (
    TOP_KS,
    image_heatmap,
    mask_above_percentile,
    mask_overlay,
    overlay,
)

RANK_BY = ("sum", "frequency")


# ---------------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ImageSource:
    """One input image: an id, and a PIL image or a path to load."""

    id: str
    image: Image.Image | None = None
    path: Path | None = None

    def load(self) -> Image.Image:
        if self.image is not None:
            return self.image.convert("RGB")
        return load_image(self.path)  # raises with a readable reason


def image_sources(images: Any) -> tuple[list[ImageSource], list[dict[str, str]]]:
    """Normalise the accepted image inputs to :class:`ImageSource`s.

    Accepts an :class:`~neuronscope.inputs.images.ImageDataset` (its already-skipped records are returned as
    the second value), or a sequence of PIL images, paths or :class:`~neuronscope.inputs.images.ImageRecord`.
    """
    skipped: list[dict[str, str]] = []
    if isinstance(images, ImageDataset):
        skipped = [skip.to_dict() for skip in images.skipped]
        items: Sequence[Any] = list(images.records)
    elif isinstance(images, (str, os.PathLike, Image.Image)):
        items = [images]
    else:
        items = list(images)
    sources = []
    for number, item in enumerate(items):
        if isinstance(item, Image.Image):
            sources.append(ImageSource(f"image-{number}", image=item))
        elif isinstance(item, ImageRecord):
            sources.append(ImageSource(item.id, path=Path(item.image_path)))
        elif isinstance(item, (str, os.PathLike)):
            sources.append(ImageSource(str(item), path=Path(item)))
        else:
            raise InputError(
                f"image {number} is a {type(item).__name__}: pass PIL images, image paths, ImageRecords or an "
                "ImageDataset (neuronscope.inputs.images)"
            )
    if not sources and not skipped:
        raise InputError("no images given: pass at least one image")
    return sources, skipped


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class MultimodalNeurons:
    """What :func:`find_multimodal_neurons` found.

    Attributes:
        captions: per input image (dataset order), ``{"index", "id", "caption", "generated_ids", "targets",
            "skipped"}`` (``skipped`` is the reason, or None).
        pairs: per (image, target), ``{"index", "id", "concept", "word", "step", "token_id", "token",
            "position"}``; ``position`` is in the left-padded captioning batch (``prompt_len - 1 + step``).
        values: ``[n_pairs, k]`` the kept (top-k) scores, best first; ``flat_indices``: ``[n_pairs, k]``
            ``layer * d_ff + index``.
        n_layers, d_ff: the score grid.
        meta: how the run was made.
        metrics: counts (images declared / captioned / skipped, pairs, concepts).
    """

    captions: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    values: torch.Tensor
    flat_indices: torch.Tensor
    n_layers: int
    d_ff: int
    meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def concepts(self) -> list[str]:
        """Concepts with at least one pair, sorted by number of pairs (descending), then name."""
        counts: dict[str, int] = {}
        for pair in self.pairs:
            counts[pair["concept"]] = counts.get(pair["concept"], 0) + 1
        return sorted(counts, key=lambda c: (-counts[c], c))

    def pair_rows(self, concept: str) -> list[int]:
        """Rows of :attr:`pairs` whose concept is ``concept``."""
        return [row for row, pair in enumerate(self.pairs) if pair["concept"] == concept]

    def pair_top_k(self, rows: Sequence[int] | None = None) -> SparseTopK:
        """The kept top-k of the given pair rows (default all) as a :class:`SparseTopK`."""
        rows = list(range(len(self.pairs))) if rows is None else list(rows)
        index = torch.as_tensor(rows, dtype=torch.long)
        return SparseTopK(self.values[index], self.flat_indices[index], self.n_layers, self.d_ff)

    def pair_neurons(self, row: int, k: int | None = None) -> torch.Tensor:
        """``[k, 2]`` (layer, index) of pair ``row``'s top-k (best first)."""
        flat = self.flat_indices[row] if k is None else self.flat_indices[row, :k]
        return flat_to_neurons(flat, self.d_ff)

    def concept_totals(self, concept: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum [layers, d_ff], frequency LongTensor [layers, d_ff])`` of a concept over its pairs."""
        rows = self.pair_rows(concept)
        if not rows:
            raise InputError(f"concept {concept!r} has no pairs; known concepts: {', '.join(self.concepts)}")
        top = self.pair_top_k(rows)
        return top.sum(), top.frequency()

    def concept_ranking(self, concept: str, rank_by: str = "sum") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The concept's neurons (those selected in at least one pair), best first.

        Returns:
            ``(neurons [m, 2], sums [m], frequencies [m])``.
        """
        if rank_by not in RANK_BY:
            raise InputError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
        total, frequency = self.concept_totals(concept)
        flat_total, flat_freq = total.flatten(), frequency.flatten()
        selected = (flat_freq > 0).nonzero(as_tuple=True)[0]
        primary = flat_total[selected] if rank_by == "sum" else flat_freq[selected].to(flat_total.dtype)
        secondary = flat_freq[selected].to(flat_total.dtype) if rank_by == "sum" else flat_total[selected]
        # Stable two-key sort: secondary first, then primary; ties keep ascending flat index.
        order = torch.argsort(secondary, descending=True, stable=True)
        order = order[torch.argsort(primary[order], descending=True, stable=True)]
        chosen = selected[order]
        return flat_to_neurons(chosen, self.d_ff), flat_total[chosen], flat_freq[chosen]

    def concept_neurons(self, concept: str, n: int | None = None, rank_by: str = "sum") -> torch.Tensor:
        """The concept's top-``n`` neurons ``[n, 2]`` (all selected ones when ``n`` is None)."""
        neurons = self.concept_ranking(concept, rank_by)[0]
        return neurons if n is None else neurons[:n]


# ---------------------------------------------------------------------------------------------------- scoring


def _stop_ids(model: nn.Module, processor: Any) -> set[int]:
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = {tokenizer.pad_token_id, tokenizer.eos_token_id}
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos is not None:
        ids.update(int(i) for i in generation_eos)
    return {int(i) for i in ids if i is not None}


def _cut(tokens: list[int], stop: set[int]) -> list[int]:
    for number, token in enumerate(tokens):
        if token in stop:
            return tokens[:number]
    return tokens


def pair_scores(
    adapter: ModelAdapter,
    activations: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    final_residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contribution scores of each (activation row, target token): ``[n, layers, d_ff]``.

    Args:
        adapter: the model's adapter.
        activations: ``[n, layers, d_ff]`` the neuron site at each target's producing position.
        token_ids: ``[n]`` the target tokens.
        final_residual: ``[n, d_model]`` the last layer's output at those positions; when given, scores are
            scaled by the final norm frozen there (``<w_i, g ⊙ u_t> / σ``, LayerNorm's centring included).
    """
    return scores_from_activations(adapter, activations, token_ids, list(range(adapter.n_layers)),
                                   final_residual=final_residual)


@dataclass
class _ImageResult:
    record: dict[str, Any]
    values: torch.Tensor  # [n_targets, k]
    flat_indices: torch.Tensor  # [n_targets, k]


@torch.no_grad()
def caption_and_score(
    model: nn.Module,
    processor: Any,
    images: Sequence[Image.Image],
    *,
    prompt: str = DEFAULT_CAPTION_PROMPT,
    assistant_prefix: str | None = DEFAULT_CAPTION_PREFIX,
    concepts: ConceptSpec | None = None,
    tagger: Tagger | None = None,
    top_k: int = 10_000,
    site: str = "neuron",
    final_norm: bool = False,
    max_new_tokens: int = 20,
) -> tuple[Batch, torch.Tensor, list[dict[str, Any]], list[SparseTopK]]:
    """One batch: generate captions while capturing ``site``, pick targets, score and keep the top-k.

    Returns:
        ``(batch, sequences, records, tops)``: the captioning batch, the generated sequences ``[B, T]``, per
        image a record (caption, generated ids, targets with their producing positions) and its
        :class:`SparseTopK` with ``values`` / ``flat_indices`` ``[n_targets, k]``.
    """
    if site not in CONTRIBUTION_SITES:
        raise InputError(f"the contribution score is defined at sites {CONTRIBUTION_SITES}, not {site!r}")
    adapter = get_adapter(model)
    batch = to_model(_encode(processor, images, prompt, assistant_prefix), model)
    layers = list(range(adapter.n_layers))
    sites = [site] + (["resid_post"] if final_norm else [])
    # kept where computed (a few MB: batch x steps x layers x d_ff), scored there, only the top-k leave the device
    with capture(model, sites=sites, layers=layers, positions="last") as acts:
        generation = generate(model, processor, batch, max_new_tokens=max_new_tokens)
    score_device = adapter.unembedding().device
    stacked = acts.stack(site, device=score_device).transpose(1, 2)  # [B, P, L, d_ff]
    residual = acts.get("resid_post", adapter.n_layers - 1).to(score_device) if final_norm else None  # [B, P, d]
    stop = _stop_ids(model, processor)
    tokens = generation.tokens.cpu()
    k = min(top_k, adapter.n_layers * adapter.d_ff)
    records, tops = [], []
    for row in range(len(images)):
        ids = _cut(tokens[row].tolist(), stop)
        ids = ids[: stacked.shape[1]]  # a token needs the forward call that produced it
        caption, targets = select_targets(processor, ids, concepts=concepts, tagger=tagger)
        record = {"caption": caption, "generated_ids": ids, "prompt_len": generation.prompt_len,
                  "targets": [_target_record(t, generation.prompt_len) for t in targets]}
        if targets:
            steps = torch.tensor([t.step for t in targets], device=score_device)
            scores = pair_scores(
                adapter, stacked[row, steps], torch.tensor([t.token_id for t in targets]),
                final_residual=None if residual is None else residual[row, steps],
            )
            top = sparse_top_k(scores, k)
            top = SparseTopK(top.values.float().cpu(), top.flat_indices.cpu(), top.n_layers, top.d_ff)
        else:
            top = SparseTopK(torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long), adapter.n_layers, adapter.d_ff)
        records.append(record)
        tops.append(top)
    return batch, generation.sequences.cpu(), records, tops


def _target_record(target: TargetWord, prompt_len: int) -> dict[str, Any]:
    return {**target.to_dict(), "position": prompt_len - 1 + target.step}


def _encode(processor: Any, images: Sequence[Image.Image], prompt: str, prefix: str | None) -> Batch:
    try:
        return encode_images(processor, images, prompt, assistant_prefix=prefix)
    except ValueError as error:
        if "chat template" in str(error).lower() or "chat_template" in str(error):
            raise InputError(
                "the processor has no chat template: set processor.chat_template (a Jinja template that puts the "
                "image placeholder in the user turn), or load a processor that ships one"
            ) from None
        raise


# ---------------------------------------------------------------------------------------------------- pipeline


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
    progress: bool = True,
    report_neurons: int = 100,
    rank_by: str = "sum",
    heatmaps: int = 1,
    heatmap_neurons: int = 3,
    heatmap_concepts: int = 10,
    heatmap_absolute: bool = False,
) -> MultimodalNeurons:
    """Find multimodal neurons (Pan et al. 2024) for a set of images; see the module docstring for the steps.

    Args:
        model, processor: a vision-language model and its processor (with a chat template).
        images: PIL images, image paths, ``ImageRecord``s or an ``ImageDataset`` (:mod:`neuronscope.inputs.images`).
        prompt: the user turn (default ``"Describe the image in few words."``).
        assistant_prefix: how the answer starts (default ``"An image of"``); None for none.
        concepts: words to look for (``["dog", "cat"]`` or ``{"dog": ["dog", "puppy"]}``). Default None: the
            nouns of each caption, through ``tagger``.
        tagger: a part-of-speech tagger (callable), a spaCy pipeline name, or None for spaCy's
            ``en_core_web_sm`` if installed (an error says how to install it otherwise).
        top_k: neurons kept per (image, target); default 10,000 (the authors' number).
        site: ``"neuron"`` (default: the FFN output projection's input) or ``"act"`` (the authors' hook).
        final_norm: scale scores by the final norm frozen at the target position (default False: raw logits).
        batch_size: images per ``generate`` call (default 8).
        max_new_tokens: caption length limit (default 20).
        run_dir: a results folder (path or :class:`RunDir`); None keeps everything in memory.
        resume: continue an interrupted run in ``run_dir`` (images in its ledger are not computed again).
        overwrite: replace an earlier run in ``run_dir``.
        progress: show a tqdm progress bar (default True).
        report_neurons: neurons per concept written to ``concepts.json`` / ``neurons.csv`` (default 100).
        rank_by: ``"sum"`` (default) or ``"frequency"``: how concept neurons are ranked in the files.
        heatmaps: images per concept to draw heatmaps for (default 1; 0 for none; needs ``run_dir``).
        heatmap_neurons: single top neurons drawn per heatmap image (default 3), besides the top-k means.
        heatmap_concepts: heatmaps for the concepts with the most pairs only (default 10).
        heatmap_absolute: draw ``|activation|`` (see :func:`neuron_heatmaps`; default False: signed, as the paper).

    Returns:
        :class:`MultimodalNeurons`.

    Example:
        >>> result = find_multimodal_neurons(model, processor, images, concepts=["dog"], top_k=1000)  # doctest: +SKIP
        >>> result.concept_neurons("dog", 10)  # doctest: +SKIP
    """
    if rank_by not in RANK_BY:
        raise InputError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
    if top_k < 1 or batch_size < 1 or max_new_tokens < 1:
        raise InputError("top_k, batch_size and max_new_tokens must be at least 1")
    adapter = get_adapter(model)
    sources, pre_skipped = image_sources(images)
    resolved_tagger = resolve_tagger(concepts, tagger)
    run = run_dir if isinstance(run_dir, RunDir) or run_dir is None else RunDir(
        run_dir, resume=resume, overwrite=overwrite)
    k = min(top_k, adapter.n_layers * adapter.d_ff)
    config = {
        "pipeline": "multimodal_neurons", "method": "contribution", "prompt": prompt,
        "assistant_prefix": assistant_prefix, "concepts": _jsonable_concepts(concepts),
        "targets": "concepts" if concepts is not None else "nouns", "top_k": k, "site": site,
        "final_norm": final_norm, "max_new_tokens": max_new_tokens, "n_images": len(sources),
        "image_ids": [source.id for source in sources], "model": adapter.describe(),
    }
    results: dict[int, _ImageResult] = {}
    if run is not None:
        run.write_config(config)
        run.write_meta()
        for entry in run.ledger_entries():
            tensors, record = run.read_example(entry["key"])
            results[int(entry["index"])] = _ImageResult(
                record, tensors.get("values", torch.zeros(0, k)),
                tensors.get("flat_indices", torch.zeros(0, k, dtype=torch.long)))
    pending = [index for index in range(len(sources)) if index not in results]
    bar = _progress(len(sources), len(sources) - len(pending), progress)
    try:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            loaded: list[tuple[int, Image.Image]] = []
            for index in chunk:
                try:
                    loaded.append((index, sources[index].load()))
                except Exception as error:  # unreadable image: report, record, skip
                    record = {"id": sources[index].id, "skipped": str(error) or type(error).__name__}
                    _store(run, results, index, record, None)
                    bar.write(f"skipped image {sources[index].id}: {record['skipped']}")
                    bar.update(1)
            if not loaded:
                continue
            _, _, records, tops = caption_and_score(
                model, processor, [image for _, image in loaded], prompt=prompt,
                assistant_prefix=assistant_prefix, concepts=concepts, tagger=resolved_tagger, top_k=k,
                site=site, final_norm=final_norm, max_new_tokens=max_new_tokens)
            for (index, _), record, top in zip(loaded, records, tops, strict=True):
                record = {"id": sources[index].id, "skipped": None, **record}
                _store(run, results, index, record, top)
                bar.update(1)
    finally:
        bar.close()
    result = _assemble(results, sources, pre_skipped, adapter, config)
    if run is not None:
        write_results(run, result, model, processor, report_neurons=report_neurons, rank_by=rank_by)
        if heatmaps > 0:
            draw_concept_heatmaps(model, processor, result, sources, run, images_per_concept=heatmaps,
                                  single_neurons=heatmap_neurons, prompt=prompt, assistant_prefix=assistant_prefix,
                                  rank_by=rank_by, max_concepts=heatmap_concepts, absolute=heatmap_absolute)
    return result


def _jsonable_concepts(concepts: ConceptSpec | None) -> Any:
    if concepts is None or isinstance(concepts, str):
        return concepts
    if hasattr(concepts, "items"):
        return {str(name): list(words) if not isinstance(words, str) else [words]
                for name, words in concepts.items()}
    return list(concepts)


class _NoBar:
    def update(self, n: int = 1) -> None: ...

    def write(self, text: str) -> None:
        print(text)

    def close(self) -> None: ...


def _progress(total: int, done: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="captioning + scoring", unit="image")


def _store(run: RunDir | None, results: dict[int, _ImageResult], index: int, record: dict[str, Any],
           top: SparseTopK | None) -> None:
    if top is None:
        values, flat = torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.long)
    else:
        values, flat = top.values.float().contiguous(), top.flat_indices.contiguous()
    results[index] = _ImageResult(record, values, flat)
    if run is not None:
        tensors = {"values": values, "flat_indices": flat} if values.numel() else None
        run.write_example(index, tensors, record, key=example_key(index))


def _assemble(results: dict[int, _ImageResult], sources: list[ImageSource], pre_skipped: list[dict[str, str]],
              adapter: ModelAdapter, config: dict[str, Any]) -> MultimodalNeurons:
    k = int(config["top_k"])
    captions, pairs, values, flats = [], [], [], []
    skipped = list(pre_skipped)
    for index in sorted(results):
        item = results[index]
        record = {"index": index, **item.record}
        captions.append(record)
        if record.get("skipped"):
            skipped.append({"source": "images", "record": record["id"], "image": record["id"],
                            "reason": record["skipped"]})
            continue
        for number, target in enumerate(record.get("targets", [])):
            pairs.append({"index": index, "id": record["id"], **target})
            values.append(item.values[number])
            flats.append(item.flat_indices[number])
    stacked_values = torch.stack(values) if values else torch.zeros(0, k)
    stacked_flat = torch.stack(flats) if flats else torch.zeros(0, k, dtype=torch.long)
    captioned = [c for c in captions if not c.get("skipped")]
    metrics = {
        "images_declared": len(sources) + len(pre_skipped),
        "images_captioned": len(captioned),
        "images_skipped": len(skipped),
        "images_without_targets": sum(1 for c in captioned if not c.get("targets")),
        "pairs": len(pairs),
        "concepts": len({p["concept"] for p in pairs}),
        "skipped_inputs": skipped,
    }
    return MultimodalNeurons(captions, pairs, stacked_values, stacked_flat, adapter.n_layers, adapter.d_ff,
                             meta=config, metrics=metrics)


# ---------------------------------------------------------------------------------------------------- files


def write_results(run: RunDir, result: MultimodalNeurons, model: nn.Module, processor: Any, *,
                  report_neurons: int = 100, rank_by: str = "sum") -> None:
    """Write captions, pairs, per-concept neurons (JSON + CSV with top tokens), metrics and plots into ``run``."""
    from neuronscope.explain.top_tokens import top_tokens
    from neuronscope.report.plots import layer_histogram_figure, score_histogram_figure

    run.write_json("captions.json", [
        {"id": c["id"], "caption": c.get("caption"), "concepts": [t["concept"] for t in c.get("targets", [])],
         "skipped": c.get("skipped")} for c in result.captions])
    run.write_tensors("pairs", {"values": result.values, "flat_indices": result.flat_indices},
                      {"n_layers": result.n_layers, "d_ff": result.d_ff})
    run.write_json("pairs.json", result.pairs)
    concepts_out, rows, dense, sets = [], [], {}, {}
    for number, concept in enumerate(result.concepts):
        neurons, sums, freqs = result.concept_ranking(concept, rank_by)
        neurons, sums, freqs = neurons[:report_neurons], sums[:report_neurons], freqs[:report_neurons]
        tokens = top_tokens(model, neurons, processor, k=10).tokens if len(neurons) else []
        n_pairs = len(result.pair_rows(concept))
        entries = [{"layer": int(layer), "neuron": int(index), "sum": float(s), "frequency": int(f),
                    "top_tokens": tokens[r]}
                   for r, ((layer, index), s, f) in enumerate(zip(neurons.tolist(), sums, freqs, strict=True))]
        concepts_out.append({"concept": concept, "pairs": n_pairs, "rank_by": rank_by, "neurons": entries})
        rows.extend({"concept": concept, "rank": r + 1, **{**e, "top_tokens": " ".join(map(repr, e["top_tokens"]))}}
                    for r, e in enumerate(entries))
        total, frequency = result.concept_totals(concept)
        dense[f"sum.{number}"], dense[f"frequency.{number}"] = total, frequency
        sets[concept] = neurons
    run.write_json("concepts.json", concepts_out)
    run.write_csv("neurons.csv", rows, ["concept", "rank", "layer", "neuron", "sum", "frequency", "top_tokens"])
    if dense:
        run.write_tensors("concepts", dense, {"concepts": result.concepts, "rank_by": rank_by})
    run.write_json("metrics.json", result.metrics)
    run.write_skipped(result.metrics["skipped_inputs"])
    if sets:
        shown = dict(list(sets.items())[:6])
        run.write_png("plots/concept_neurons_per_layer.png",
                      layer_histogram_figure(shown, result.n_layers, title=f"Top-{report_neurons} neurons per layer"))
    if result.values.numel():
        run.write_png("plots/pair_scores.png", score_histogram_figure(
            result.values, title="Kept scores of all (image, concept) pairs", xlabel="contribution"))


# ---------------------------------------------------------------------------------------------------- heatmaps


@dataclass
class HeatmapResult:
    """Heatmaps drawn for one image (or the reason none could be drawn).

    Attributes:
        drawn: whether the model's image tokens have a spatial map.
        reason: why nothing was drawn (empty when drawn).
        heat: name -> ``[height, width]`` heat on the original image (``NaN`` where no tile reaches).
        masks: name -> ``BoolTensor [height, width]`` above the percentile.
        files: paths written.
    """

    drawn: bool
    reason: str = ""
    heat: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


@torch.no_grad()
def image_token_activations(
    model: nn.Module,
    processor: Any,
    image: Image.Image,
    neurons: torch.Tensor,
    *,
    prompt: str = DEFAULT_CAPTION_PROMPT,
    assistant_prefix: str | None = DEFAULT_CAPTION_PREFIX,
    site: str = "neuron",
) -> tuple[Any, torch.Tensor]:
    """The layout of ``image``'s tokens and ``neurons``' activations there: ``[n_image_tokens, n]``.

    One forward of the captioning prompt, capturing ``site`` only at the image-token positions.
    """
    neurons = torch.as_tensor(neurons, dtype=torch.long).reshape(-1, 2)
    batch = _encode(processor, [image], prompt, assistant_prefix)
    layout = image_layout(model, batch.inputs, 0, processor=processor, original_sizes=[image.size])
    if not layout.has_spatial_map:
        return layout, torch.zeros(layout.n_image_tokens, len(neurons))
    layers = sorted({int(layer) for layer in neurons[:, 0].tolist()})
    with capture(model, sites=site, layers=layers, positions=layout.positions[None, :], to="cpu") as acts:
        model(**to_model(batch, model).inputs)
    columns = [acts.get(site, int(layer))[0, :, int(index)] for layer, index in neurons.tolist()]
    return layout, torch.stack(columns, dim=1).float()


def neuron_heatmaps(
    model: nn.Module,
    processor: Any,
    image: Image.Image,
    neurons: torch.Tensor,
    *,
    out: RunDir | None = None,
    name: str = "heatmap",
    single_neurons: int = 1,
    ks: Sequence[int] = TOP_KS,
    percentile: float = 95.0,
    prompt: str = DEFAULT_CAPTION_PROMPT,
    assistant_prefix: str | None = DEFAULT_CAPTION_PREFIX,
    site: str = "neuron",
    absolute: bool = False,
) -> HeatmapResult:
    """Heatmaps of ranked neurons over an image: the top ``single_neurons`` one by one, and the mean of the top-k
    for each ``k`` in ``ks`` (those not larger than the number of neurons).

    For each map: ``heatmaps/<name>.<what>.png`` (overlay) and ``heatmaps/<name>.<what>.mask.png`` (pixels above
    the ``percentile``-th percentile) in ``out``. Models whose image tokens have no spatial map (InstructBLIP,
    BLIP-2) draw nothing: the result says why (``drawn=False``), and ``heatmaps/<name>.txt`` records it.

    Args:
        neurons: ``[m, 2]`` (layer, index) ranked best first.
        absolute: draw ``|activation|`` instead of the signed activation (default False, as Pan et al.): gated
            FFNs' activations are signed, and a neuron may mark the object by a strongly negative value.

    Example:
        >>> maps = neuron_heatmaps(model, processor, image, result.concept_neurons("dog", 1000), out=run)  # doctest: +SKIP
    """
    neurons = torch.as_tensor(neurons, dtype=torch.long).reshape(-1, 2)
    if len(neurons) == 0:
        raise InputError("no neurons to draw: pass at least one (layer, index) row")
    layout, acts = image_token_activations(model, processor, image, neurons, prompt=prompt,
                                           assistant_prefix=assistant_prefix, site=site)
    acts = acts.abs() if absolute else acts
    if not layout.has_spatial_map:
        reason = f"no heatmap for model type {layout.family!r}: {layout.reason}"
        if out is not None:
            out.write_text(f"heatmaps/{name}.txt", reason + "\n")
        return HeatmapResult(False, reason)
    result = HeatmapResult(True)
    maps: dict[str, torch.Tensor] = {}
    for number in range(min(single_neurons, len(neurons))):
        layer, index = neurons[number].tolist()
        maps[f"top{number + 1}.L{layer}N{index}"] = acts[:, number]
    for k in ks:
        if 0 < k <= len(neurons):
            maps[f"mean_top{k}"] = acts[:, :k].mean(dim=1)
    for what, values in maps.items():
        heat = image_heatmap(values, layout, 0, image.size)
        mask = mask_above_percentile(heat, percentile)
        result.heat[what], result.masks[what] = heat, mask
        if out is not None:
            result.files.append(out.write_png(f"heatmaps/{name}.{what}.png", overlay(image, heat)))
            result.files.append(out.write_png(f"heatmaps/{name}.{what}.mask.png", mask_overlay(image, mask)))
    return result


def draw_concept_heatmaps(
    model: nn.Module,
    processor: Any,
    result: MultimodalNeurons,
    sources: Sequence[ImageSource],
    run: RunDir,
    *,
    images_per_concept: int = 1,
    single_neurons: int = 3,
    prompt: str = DEFAULT_CAPTION_PROMPT,
    assistant_prefix: str | None = DEFAULT_CAPTION_PREFIX,
    rank_by: str = "sum",
    max_neurons: int = max(TOP_KS),
    max_concepts: int | None = None,
    absolute: bool = False,
) -> dict[str, list[HeatmapResult]]:
    """For each concept (the ``max_concepts`` with the most pairs), heatmaps of its top neurons on its first
    ``images_per_concept`` images."""
    out: dict[str, list[HeatmapResult]] = {}
    site = str(result.meta.get("site", "neuron"))
    for concept in result.concepts[:max_concepts]:
        neurons = result.concept_neurons(concept, max_neurons, rank_by)
        indices = list(dict.fromkeys(result.pairs[row]["index"] for row in result.pair_rows(concept)))
        for index in indices[:images_per_concept]:
            try:
                image = sources[index].load()
            except Exception:  # it loaded during captioning; if it vanished since, skip the drawing
                continue
            name = f"{_safe(concept)}.image{index}"
            drawn = neuron_heatmaps(model, processor, image, neurons, out=run, name=name,
                                    single_neurons=single_neurons, prompt=prompt,
                                    assistant_prefix=assistant_prefix, site=site, absolute=absolute)
            out.setdefault(concept, []).append(drawn)
    return out


def _safe(text: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text.strip())
    return "concept-" + cleaned[:60]  # never starts with "-" (shell-safe), never empty


def load_results(path: str | os.PathLike[str]) -> MultimodalNeurons:
    """Read a finished run folder back into :class:`MultimodalNeurons`."""
    run = RunDir.open(path)
    tensors, meta = run.read_tensors("pairs")
    config = run.read_json("config.json")
    captions = []
    for entry in sorted(run.ledger_entries(), key=lambda e: int(e["index"])):
        captions.append({"index": int(entry["index"]), **run.read_example(entry["key"])[1]})
    metrics = run.read_json("metrics.json") if run.exists("metrics.json") else {}
    return MultimodalNeurons(captions, run.read_json("pairs.json"), tensors["values"], tensors["flat_indices"],
                             int(meta["n_layers"]), int(meta["d_ff"]), meta=config, metrics=metrics)
