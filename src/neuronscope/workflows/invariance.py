"""The invariance and sensitivity experiments of Pan et al. (2024) on found multimodal neurons.

- **Region invariance** (:func:`region_invariance`): shuffle the image tokens' features among their grid
  positions (:func:`neuronscope.vision.shuffle.shuffled_image_tokens`), re-score the same caption targets on the
  same caption (teacher-forced: the generated caption is fed back, so the targets and their positions stay put),
  and compare the top-k neuron sets with and without the shuffle. High overlap = the neurons respond to the
  image's content, not to where the content sits.
- **Cross-image invariance** (:func:`cross_image_invariance`): the overlap of a concept's top-k sets across the
  images whose captions mention it.
- **Semantic sensitivity** (:func:`semantic_sensitivity`): does a neuron's list of top tokens (its value vector
  read through the unembedding) contain the concept or one of its synonyms.

Overlaps of two sets A, B: ``overlap = |A ∩ B| / min(|A|, |B|)`` (1 when the smaller set is inside the other; for
equal sizes the fraction of shared neurons) and ``jaccard = |A ∩ B| / |A ∪ B|``.

Example:
    >>> found = find_multimodal_neurons(model, processor, images, concepts=["dog"])  # doctest: +SKIP
    >>> region_invariance(model, processor, found, images, k=100).as_dict()  # doctest: +SKIP
    >>> cross_image_invariance(found, "dog", k=100).mean_jaccard  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from neuronscope.aggregate.neurons import neurons_to_flat
from neuronscope.attribute.contribution import contribution
from neuronscope.errors import InputError
from neuronscope.explain.top_tokens import top_tokens
from neuronscope.inputs.batch import DEFAULT_CAPTION_PREFIX, DEFAULT_CAPTION_PROMPT, extend_batch, to_model
from neuronscope.inputs.images import image_records
from neuronscope.inputs.targets import TargetSet, word_token
from neuronscope.models.adapter import get_adapter
from neuronscope.models.image_grid import image_token_id
from neuronscope.models.image_layout import image_layout
from neuronscope.vision.shuffle import shuffled_image_tokens
from neuronscope.workflows.multimodal.results import MultimodalNeurons
from neuronscope.workflows.multimodal.scoring import encode_captioning

# ---------------------------------------------------------------------------------------------------- set overlap


def _flat(neurons: torch.Tensor, d_ff: int | None) -> set[int]:
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    if neurons.dim() == 2 and neurons.shape[1] == 2:
        if d_ff is None:
            return {(int(layer), int(index)) for layer, index in neurons.tolist()}  # type: ignore[misc]
        return set(neurons_to_flat(neurons, d_ff).tolist())
    return set(neurons.flatten().tolist())


def set_overlap(a: torch.Tensor, b: torch.Tensor, d_ff: int | None = None) -> dict[str, float]:
    """Overlap of two neuron sets (``[n, 2]`` (layer, index) rows, or flat indices).

    Returns:
        ``{"intersection", "overlap", "jaccard"}`` (see the module docstring; both 0 when a set is empty).

    Example:
        >>> set_overlap(torch.tensor([[0, 1], [0, 2]]), torch.tensor([[0, 2], [1, 0]]))
        {'intersection': 1, 'overlap': 0.5, 'jaccard': 0.3333333333333333}
    """
    first, second = _flat(a, d_ff), _flat(b, d_ff)
    shared = len(first & second)
    smaller = min(len(first), len(second))
    union = len(first | second)
    return {"intersection": shared, "overlap": shared / smaller if smaller else 0.0,
            "jaccard": shared / union if union else 0.0}


def pairwise_overlaps(sets: Sequence[torch.Tensor], d_ff: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(overlap [n, n], jaccard [n, n])`` of every pair of sets (diagonal: 1 for non-empty sets)."""
    n = len(sets)
    overlap, jaccard = torch.zeros(n, n), torch.zeros(n, n)
    for i in range(n):
        for j in range(i, n):
            found = set_overlap(sets[i], sets[j], d_ff)
            overlap[i, j] = overlap[j, i] = found["overlap"]
            jaccard[i, j] = jaccard[j, i] = found["jaccard"]
    return overlap, jaccard


def _off_diagonal_mean(matrix: torch.Tensor) -> float:
    n = matrix.shape[0]
    if n < 2:
        return float("nan")
    return float((matrix.sum() - matrix.diagonal().sum()) / (n * (n - 1)))


# ---------------------------------------------------------------------------------------------------- cross-image


@dataclass
class CrossImageInvariance:
    """Overlap of one concept's top-k sets across its images.

    Attributes:
        concept: the concept; ``k``: neurons per set; ``images``: the image indices (one set per image: the
            image's first pair of that concept).
        overlap, jaccard: ``[n, n]`` pairwise matrices; ``mean_overlap``, ``mean_jaccard``: off-diagonal means
            (NaN with fewer than two images).
    """

    concept: str
    k: int
    images: list[int]
    overlap: torch.Tensor
    jaccard: torch.Tensor
    mean_overlap: float
    mean_jaccard: float

    def as_dict(self) -> dict[str, Any]:
        return {"concept": self.concept, "k": self.k, "images": len(self.images), "mean_overlap": self.mean_overlap,
                "mean_jaccard": self.mean_jaccard}

    def summary(self) -> str:
        return (f"'{self.concept}' over {len(self.images)} images: top-{self.k} sets overlap {self.mean_overlap:.3f}, "
                f"jaccard {self.mean_jaccard:.3f}")


def cross_image_invariance(result: MultimodalNeurons, concept: str, k: int | None = None) -> CrossImageInvariance:
    """How much a concept's top-``k`` neurons agree across the images that mention it.

    Example:
        >>> cross_image_invariance(found, "dog", k=100).mean_jaccard  # doctest: +SKIP
    """
    rows = result.pair_rows(concept)
    if not rows:
        raise InputError(f"concept {concept!r} has no pairs; known concepts: {', '.join(result.concepts)}")
    k = result.values.shape[1] if k is None else min(int(k), result.values.shape[1])
    first_row: dict[int, int] = {}
    for row in rows:
        first_row.setdefault(result.pairs[row]["index"], row)
    sets = [result.flat_indices[row, :k] for row in first_row.values()]
    overlap, jaccard = pairwise_overlaps(sets)
    return CrossImageInvariance(concept, k, list(first_row), overlap, jaccard, _off_diagonal_mean(overlap),
                                _off_diagonal_mean(jaccard))


# ---------------------------------------------------------------------------------------------------- region


@dataclass
class RegionInvariance:
    """Region-invariance records: per (image, target, seed) the overlap of the top-k sets before / after the
    shuffle. ``records``: dicts ``{"index", "concept", "seed", "k", "intersection", "overlap", "jaccard"}``;
    ``skipped``: images that could not be shuffled, with the reason."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        found = self.as_dict()
        return (f"region invariance over {found['pairs']} (image, target, seed) records: overlap "
                f"{found['overlap']:.3f}, jaccard {found['jaccard']:.3f}; {len(self.skipped)} images skipped")

    def as_dict(self) -> dict[str, Any]:
        """Mean overlap / Jaccard over all records and per concept."""
        def mean(values: list[float]) -> float:
            return sum(values) / len(values) if values else float("nan")

        per_concept: dict[str, dict[str, float]] = {}
        for concept in sorted({r["concept"] for r in self.records}):
            chosen = [r for r in self.records if r["concept"] == concept]
            per_concept[concept] = {"pairs": len(chosen), "overlap": mean([r["overlap"] for r in chosen]),
                                    "jaccard": mean([r["jaccard"] for r in chosen])}
        return {"pairs": len(self.records), "overlap": mean([r["overlap"] for r in self.records]),
                "jaccard": mean([r["jaccard"] for r in self.records]), "per_concept": per_concept,
                "skipped": self.skipped}


@torch.no_grad()
def region_invariance(
    model: nn.Module,
    processor: Any,
    result: MultimodalNeurons,
    images: Any,
    *,
    k: int = 1000,
    seeds: Sequence[int] = (0,),
    scope: str = "tile",
    concepts: Sequence[str] | None = None,
    max_images: int | None = None,
) -> RegionInvariance:
    """Shuffle each image's tokens and compare the top-``k`` neurons of its caption targets before and after.

    Both sides are scored the same way: one forward of the prompt + the generated caption (teacher-forced), the
    contribution score at each target's producing position, with (``seed``) and without the shuffle.

    Args:
        model, processor: the model and processor ``result`` was made with.
        result: from :func:`~neuronscope.workflows.multimodal.find_multimodal_neurons`.
        images: the same images, in the same order.
        k: neurons per set (default 1000; clipped to all neurons).
        seeds: shuffle seeds (one comparison per seed).
        scope: ``"tile"`` or ``"image"`` (see :func:`~neuronscope.vision.shuffle.shuffle_plan`).
        concepts: only these concepts (default all).
        max_images: stop after this many images.

    Example:
        >>> region_invariance(model, processor, found, images, k=100, seeds=[0, 1]).summary()["jaccard"]  # doctest: +SKIP
    """
    adapter = get_adapter(model)
    sources, _ = image_records(images)
    prompt = result.meta.get("prompt", DEFAULT_CAPTION_PROMPT)
    prefix = result.meta.get("assistant_prefix", DEFAULT_CAPTION_PREFIX)
    site = result.meta.get("site", "neuron")
    final_norm = bool(result.meta.get("final_norm", False))
    k = min(int(k), adapter.n_layers * adapter.d_ff)
    out = RegionInvariance()
    done = 0
    for caption in result.captions:
        targets = [t for t in caption.get("targets", []) if concepts is None or t["concept"] in concepts]
        if caption.get("skipped") or not targets:
            continue
        if max_images is not None and done >= max_images:
            break
        index = caption["index"]
        if index >= len(sources):
            raise InputError(f"the result has image {index} but only {len(sources)} images were given: pass the "
                             "images the result was made from, in the same order")
        image: Image.Image = sources[index].load()
        batch = encode_captioning(processor, [image], prompt, prefix)
        layout = image_layout(model, batch.inputs, 0, processor=processor, original_sizes=[image.size])
        if not layout.has_spatial_map:
            out.skipped.append({"index": index, "reason": layout.reason})
            continue
        if image_token_id(model.config) in caption["generated_ids"]:  # only untrained models say it
            out.skipped.append({"index": index, "reason": "the caption holds the image placeholder token, so it "
                                "cannot be fed back as text"})
            continue
        forced = to_model(extend_batch(batch, [caption["generated_ids"]]), model)
        target_set = TargetSet(
            torch.tensor([[t["token_id"] for t in targets]]),
            torch.tensor([[batch.seq_len - 1 + t["step"] for t in targets]]),
            torch.ones(1, len(targets), dtype=torch.bool))
        plain = contribution(model, forced, target_set, site=site, final_norm=final_norm).values[0]
        before = [_top_flat(plain[j], k) for j in range(len(targets))]
        for seed in seeds:
            with shuffled_image_tokens(model, layout, seed=int(seed), scope=scope):
                shuffled = contribution(model, forced, target_set, site=site, final_norm=final_norm).values[0]
            for j, target in enumerate(targets):
                found = set_overlap(before[j], _top_flat(shuffled[j], k))
                out.records.append({"index": index, "concept": target["concept"], "seed": int(seed), "k": k, **found})
        done += 1
    return out


def _top_flat(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the top-``k`` of ``[layers, d_ff]`` (ties by ascending index)."""
    flat = scores.flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    return order[:k]


# ---------------------------------------------------------------------------------------------------- semantics


def _normalise_token(text: str) -> str:
    return text.replace("▁", " ").replace("Ġ", " ").strip().lower()


@dataclass
class SemanticSensitivity:
    """Whether each neuron's top tokens contain the concept or a synonym.

    Attributes:
        concept, words: the concept and the words that count for it.
        neurons: ``[n, 2]``; ``tokens``: each neuron's top tokens; ``hits``: ``[n]`` bool.
        rate: fraction of neurons with a hit.
    """

    concept: str
    words: list[str]
    neurons: torch.Tensor
    tokens: list[list[str]]
    hits: torch.Tensor
    rate: float

    def as_dict(self) -> dict[str, Any]:
        return {"concept": self.concept, "words": self.words, "neurons": len(self.neurons), "rate": self.rate}

    def summary(self) -> str:
        return f"'{self.concept}': {self.rate:.0%} of {len(self.neurons)} neurons promote it among their top tokens"


def token_matches(token: str, words: Sequence[str], first_pieces: Sequence[str] = ()) -> bool:
    """A top token matches when, lower-cased and without its space marker, it equals a word or a word's first
    sub-token (so words the tokenizer splits, "giraffe" -> " gir", still count).

    Example:
        >>> token_matches(" Dog", ["dog"]), token_matches("▁cat", ["dog"])
        (True, False)
    """
    text = _normalise_token(token)
    if not text:
        return False
    return text in {w.strip().lower() for w in words} or text in {_normalise_token(p) for p in first_pieces if p}


def semantic_sensitivity(
    model: nn.Module,
    processor: Any,
    neurons: torch.Tensor,
    concept: str,
    synonyms: Sequence[str] = (),
    *,
    k: int = 10,
) -> SemanticSensitivity:
    """Do the neurons' top-``k`` tokens (``W_U w_i``) contain the concept or a synonym?

    Args:
        neurons: ``[n, 2]`` (layer, index), e.g. ``result.concept_neurons("dog", 20)``.
        concept: the concept word; ``synonyms``: other words that count.
        k: top tokens per neuron (default 10).

    Example:
        >>> semantic_sensitivity(model, processor, found.concept_neurons("dog", 20), "dog", ["puppy"]).rate  # doctest: +SKIP
    """
    neurons = torch.as_tensor(neurons, dtype=torch.long).reshape(-1, 2)
    words = [concept, *synonyms]
    tokenizer = getattr(processor, "tokenizer", processor)
    pieces = []
    for word in words:
        for leading_space in (True, False):
            try:
                pieces.append(tokenizer.decode([word_token(tokenizer, word, leading_space, first_piece=True)]))
            except InputError:
                continue
    # a one-character first piece of a longer word would match far too much
    pieces = [p for p in pieces if len(_normalise_token(p)) > 1 or any(len(w.strip()) == 1 for w in words)]
    explained = top_tokens(model, neurons, tokenizer, k=k)
    hits = torch.tensor([any(token_matches(t, words, pieces) for t in row) for row in explained.tokens],
                        dtype=torch.bool)
    rate = float(hits.float().mean()) if len(hits) else float("nan")
    return SemanticSensitivity(concept, words, neurons, explained.tokens, hits, rate)


def invariance(options: Any, *, loaded: Any = None) -> Any:
    """``recipe invariance``: region and cross-image invariance and semantic sensitivity of a finished multimodal
    run's concepts, into ``--out`` (``metrics.json``, ``tables/{region,cross_image,sensitivity}.csv``, report)."""
    from neuronscope.inputs.images import read_images
    from neuronscope.report import build_report
    from neuronscope.runs.folder import RunDir
    from neuronscope.workflows.common import load, write_table
    from neuronscope.workflows.options import split_words
    from neuronscope.workflows.result import RunResult
    from neuronscope.workflows.specs.vision import parse_synonyms

    if not (Path(options.run) / "pairs.safetensors").is_file() and (Path(options.run) / ".neuronscope-run").exists():
        raise InputError(f"--run {options.run}: not a finished 'recipe multimodal' run (it has no pairs); run "
                         f"'neuronscope recipe multimodal --images ... --out {options.run}' first, or give that run")
    found = MultimodalNeurons.load(options.run)
    dataset = read_images(options.images, options.image_root)
    RunDir.check(options.out, overwrite=options.overwrite)
    loaded = load(options, loaded)
    concepts = split_words(options.concepts) or found.concepts
    seeds = [int(seed) for seed in options.seeds.split(",") if seed.strip()]
    region = region_invariance(loaded.model, loaded.processor, found, dataset, k=options.k, seeds=seeds,
                               scope=options.scope, concepts=concepts, max_images=options.max_images)
    cross = [cross_image_invariance(found, concept, options.k).as_dict() for concept in concepts]
    synonyms = parse_synonyms(options.synonyms)
    sensitivity = [semantic_sensitivity(loaded.model, loaded.processor,
                                        found.concept_neurons(concept, options.sensitivity_neurons), concept,
                                        synonyms.get(concept, ()), k=options.sensitivity_k).as_dict()
                   for concept in concepts]
    run = RunDir(options.out, overwrite=options.overwrite)
    run.write_config({"command": "recipe invariance", **options.recorded()})
    run.write_meta({"runtime": options.runtime()})
    write_table(run, "tables/region.csv", region.records)
    write_table(run, "tables/cross_image.csv", cross)
    write_table(run, "tables/sensitivity.csv", [{**row, "words": " ".join(row["words"])} for row in sensitivity])
    metrics = {"region": region.as_dict(), "cross_image": {row["concept"]: row for row in cross},
               "sensitivity": {row["concept"]: row for row in sensitivity}}
    run.write_json("metrics.json", metrics)
    build_report(run.path)
    summary = metrics["region"]
    return RunResult("recipe invariance", str(options.out), metrics, [
        f"region invariance over {summary['pairs']} (image, concept, seed) records: overlap {summary['overlap']:.3f}, "
        f"jaccard {summary['jaccard']:.3f}; {len(concepts)} concepts; results in {options.out}"])
