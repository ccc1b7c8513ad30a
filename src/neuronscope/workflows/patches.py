"""Important image patches for an answer (Yu & Ananiadou 2024, LLaVA VQA): which image tokens the model's top
attention heads draw the answer from.

For one image and a question (through the processor's chat template):

1. the answer token ``w`` = the model's own top-1 prediction at the last position (or a given token);
2. every attention head is scored by the log-probability increase (LPI) of its output at the last position
   (:func:`neuronscope.attribute.log_probability_increase.head_log_probability_increase`; final norm frozen);
3. for the top head(s), each image-token position ``s`` gets the LPI of that head's contribution from ``s``,
   ``A_h[t, s] · v_s W_O[slice_h]`` (:func:`~neuronscope.attribute.log_probability_increase.head_source_log_probability_increase`);
   with several heads, the per-head scores are min-max normalised and averaged;
4. the scores are min-max normalised over the image tokens, put on the model's vision grid and upsampled onto the
   image (overlay + mask above the 95th percentile);
5. comparison: the same head's attention probabilities from the last position to the image tokens (the "attention
   map"), and the Spearman rank correlation between the two maps.

Models whose image tokens have no spatial map (InstructBLIP, BLIP-2: learned queries) get the scores but no
drawing; the result says why.

Example:
    >>> found = important_patches(model, processor, image, "What colour is the circle?", out=run)  # doctest: +SKIP
    >>> found.heads, found.scores.argmax(), found.rank_correlation  # doctest: +SKIP
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

from neuronscope.attribute.heads import attention_probe, weighted_values
from neuronscope.attribute.log_probability_increase import (
    head_log_probability_increase,
    head_source_log_probability_increase,
)
from neuronscope.errors import InputError
from neuronscope.inputs.batch import Batch, encode_images, to_model
from neuronscope.inputs.images import ImageDataset, ImageRecord
from neuronscope.inputs.targets import TargetSet, prediction_targets, token_targets
from neuronscope.models.adapter import get_adapter
from neuronscope.models.attention import kv_head
from neuronscope.models.image_grid import ImageLayout
from neuronscope.models.image_layout import image_layout
from neuronscope.runs.folder import RunDir
from neuronscope.vision.heatmap import image_heatmap, mask_above_percentile, mask_overlay, overlay

# ---------------------------------------------------------------------------------------------------- pure math


def min_max(values: torch.Tensor) -> torch.Tensor:
    """Min-max normalise ``[S]`` to ``[0, 1]`` (zeros when all values are equal)."""
    values = values.float()
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if bool(high > low) else torch.zeros_like(values)


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean of their ranks), 0-based, as float64."""
    values = values.double().flatten()
    order = torch.argsort(values, stable=True)
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(values.numel(), dtype=torch.float64)
    # each group of equal values gets the mean of its ranks (one pass, also for maps of many thousand values)
    _, group = values.unique(return_inverse=True)
    sums = torch.zeros(int(group.max()) + 1, dtype=torch.float64).scatter_add_(0, group, ranks)
    return (sums / torch.bincount(group).double())[group]


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two ``[S]`` maps (NaN when either is constant).

    Example:
        >>> rank_correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0]))
        0.5
    """
    if a.numel() != b.numel() or a.numel() < 2:
        raise InputError(f"rank correlation needs two maps of the same size >= 2, got {a.numel()} and {b.numel()}")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = ra.norm() * rb.norm()
    return float("nan") if float(denominator) == 0.0 else round(float((ra * rb).sum() / denominator), 12)


# ---------------------------------------------------------------------------------------------------- model plumbing


@torch.no_grad()
def head_source_contributions(
    model: nn.Module, batch: Batch, layer: int, head: int, position: int | None = None, row: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One head's write into the residual stream split by source position, at query ``position`` of ``row``.

    ``c_s = A_h[t, s] · v_s[kv(h)] @ W_O[slice_h]``; ``Σ_s c_s`` is the head's output (before the output
    projection's bias and any post-attention norm).

    Returns:
        ``(contributions [T, d_model], attention [T])``: the per-source writes and the head's attention
        probabilities from ``position`` (default: the last position).

    Example:
        >>> contributions, attention = head_source_contributions(model, batch, 1, 0)  # doctest: +SKIP
        >>> contributions.sum(0)  # the head's output at the last position  # doctest: +SKIP
    """
    adapter = get_adapter(model)
    layer = adapter.check_layer(layer)
    adapter.head_slice(head)
    position = batch.seq_len - 1 if position is None else int(position)
    with attention_probe(model, [layer], adapter) as probe:
        model(**batch.inputs)
    weighted = weighted_values(probe.weights[layer], probe.values[layer], torch.tensor([[position]] * len(batch)),
                               torch.tensor([head]), torch.tensor([kv_head(adapter, head)]))[row, 0, 0]  # [T, d_h]
    rows = adapter.attn_output_weight(layer)[adapter.head_slice(head)]  # [d_head, d_model]
    contributions = weighted.to(rows.device, torch.promote_types(rows.dtype, torch.float32)) @ rows.to(
        torch.promote_types(rows.dtype, torch.float32))
    attention = probe.weights[layer][row, head, position].float().cpu()
    return contributions.cpu(), attention


# ---------------------------------------------------------------------------------------------------- pipeline


@dataclass
class PatchResult:
    """Important image patches for one answer.

    Attributes:
        answer_token: the scored token id; ``answer``: its text.
        heads: ``[k, 2]`` (layer, head) used, best first; ``head_scores``: their LPI ``[k]``.
        head_lpi: ``[layers, heads]`` LPI of every head.
        positions: ``[S]`` image-token positions (the layout's order).
        raw: ``[k, S]`` LPI of each used head's contribution from each image token.
        scores: ``[S]`` min-max normalised (mean over the used heads of their normalised maps).
        attention: ``[S]`` the used heads' mean attention from the last position to the image tokens.
        rank_correlation: Spearman correlation of ``scores`` and ``attention``.
        layout: the image's :class:`~neuronscope.models.image_grid.ImageLayout`.
        drawn: whether heatmaps could be drawn; ``reason``: why not.
        heat, attention_heat: ``[height, width]`` maps on the original image (None when not drawn).
        files: PNGs written.
    """

    answer_token: int
    answer: str
    heads: torch.Tensor
    head_scores: torch.Tensor
    head_lpi: torch.Tensor
    positions: torch.Tensor
    raw: torch.Tensor
    scores: torch.Tensor
    attention: torch.Tensor
    rank_correlation: float
    layout: ImageLayout
    drawn: bool = True
    reason: str = ""
    heat: torch.Tensor | None = None
    attention_heat: torch.Tensor | None = None
    files: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        found = self.as_dict()
        return (f"answer {self.answer!r} from heads {found['heads']}; top patch at position "
                f"{found['top_patch_position']}; rank correlation with the attention map {self.rank_correlation:.3f}")

    def as_dict(self) -> dict[str, Any]:
        """The figures, JSON-ready (no maps, no layout)."""
        return {"answer_token": self.answer_token, "answer": self.answer, "heads": self.heads.tolist(),
                "head_scores": self.head_scores.tolist(), "top_patch_position": int(self.positions[self.scores.argmax()]),
                "top_attention_position": int(self.positions[self.attention.argmax()]),
                "rank_correlation": self.rank_correlation, "drawn": self.drawn, "reason": self.reason}


@torch.no_grad()
def important_patches(
    model: nn.Module,
    processor: Any,
    image: Image.Image,
    question: str,
    *,
    answer_prefix: str | None = None,
    answer_token: int | None = None,
    top_heads: int = 1,
    heads: torch.Tensor | list[tuple[int, int]] | None = None,
    percentile: float = 95.0,
    out: RunDir | None = None,
    name: str = "patches",
) -> PatchResult:
    """Rank heads by LPI at the last position, score the image tokens through the top head(s), draw the map.

    Args:
        model, processor: a vision-language model and its processor (with a chat template).
        image: the image (PIL).
        question: the user's question (one user turn holding the image).
        answer_prefix: text that starts the answer, if any.
        answer_token: the token to explain; default the model's own top-1 prediction.
        top_heads: how many of the best heads to use (default 1, as in the paper).
        heads: ``[k, 2]`` (layer, head) to use instead of ranking (the ranking is still reported).
        percentile: mask threshold (default 95).
        out: a results folder; when given, writes ``heatmaps/<name>.{patches,attention}.png``, the masks and
            ``<name>.json``.
        name: file-name stem.

    Returns:
        :class:`PatchResult`.

    Example:
        >>> found = important_patches(model, processor, image, "What shape is red?", top_heads=1)  # doctest: +SKIP
    """
    if top_heads < 1:
        raise InputError(f"top_heads must be at least 1, got {top_heads}")
    adapter = get_adapter(model)
    batch = encode_images(processor, [image], question, assistant_prefix=answer_prefix)
    batch = to_model(batch, model)
    layout = image_layout(model, batch.inputs, 0, processor=processor, original_sizes=[image.size])
    targets: TargetSet = (prediction_targets(model, batch, processor) if answer_token is None
                          else token_targets(batch, int(answer_token), processor))
    head_lpi = head_log_probability_increase(model, batch, targets).values[0, 0]  # [L, H]
    if heads is None:
        order = head_lpi.flatten().argsort(descending=True, stable=True)[:top_heads]
        chosen = torch.stack([order // adapter.n_heads, order % adapter.n_heads], dim=1)
    else:
        chosen = torch.as_tensor(heads, dtype=torch.long).reshape(-1, 2)
    positions = layout.positions
    per_source = head_source_log_probability_increase(model, batch, targets, heads=chosen,
                                                      sources=positions).values[0, 0]  # [k, S]
    scores = min_max(torch.stack([min_max(row) for row in per_source]).mean(0))
    attention_rows = []
    for layer, head in chosen.tolist():
        attention_rows.append(head_source_contributions(model, batch, layer, head)[1][positions])
    attention = torch.stack(attention_rows).mean(0)
    token = int(targets.token_ids[0, 0])
    tokenizer = getattr(processor, "tokenizer", processor)
    result = PatchResult(
        token, tokenizer.decode([token]), chosen, head_lpi[chosen[:, 0], chosen[:, 1]], head_lpi, positions,
        per_source, scores, attention, rank_correlation(scores, attention), layout)
    if not layout.has_spatial_map:
        result.drawn, result.reason = False, f"no heatmap for model type {layout.family!r}: {layout.reason}"
    else:
        result.heat = image_heatmap(scores, layout, 0, image.size)
        result.attention_heat = image_heatmap(attention, layout, 0, image.size)
    if out is not None:
        _write(out, name, image, result, percentile)
    return result


def _write(out: RunDir, name: str, image: Image.Image, result: PatchResult, percentile: float) -> None:
    out.write_json(f"{name}.json", result.summary())
    if not result.drawn:
        out.write_text(f"heatmaps/{name}.txt", result.reason + "\n")
        return
    for what, heat in (("patches", result.heat), ("attention", result.attention_heat)):
        result.files.append(out.write_png(f"heatmaps/{name}.{what}.png", overlay(image, heat)))
        mask = mask_above_percentile(heat, percentile)
        result.files.append(out.write_png(f"heatmaps/{name}.{what}.mask.png", mask_overlay(image, mask)))


def find_important_patches(
    model: nn.Module,
    processor: Any,
    questions: ImageDataset | Sequence[tuple[Image.Image | str, str]],
    *,
    run_dir: str | os.PathLike[str] | RunDir,
    resume: bool = False,
    overwrite: bool = False,
    answer_prefix: str | None = None,
    top_heads: int = 1,
    percentile: float = 95.0,
) -> dict[str, Any]:
    """:func:`important_patches` for every (image, question) of a VQA set, into one results folder, through the
    one run loop (resumable per question, sharded across processes).

    Args:
        questions: a VQA :class:`~neuronscope.inputs.images.ImageDataset` (``read_vqa_jsonl``), or
            ``(image or path, question)`` pairs.
        run_dir: the results folder: per question ``heatmaps/q<index>.*.png`` and its ledger entry,
            ``patches.csv`` (answer, heads, top patch, rank correlation) and ``metrics.json``.
        Others: as :func:`important_patches`; ``resume`` / ``overwrite`` as in :class:`RunDir`.

    Returns:
        The metrics: questions declared / done / skipped (missing or unreadable images, no question), the mean
        rank correlation with the attention map.

    Raises:
        NothingProcessedError: no question could be answered (every image missing or every question empty).

    Example:
        >>> find_important_patches(model, processor, read_vqa_jsonl("vqa.jsonl"), run_dir="runs/patches")  # doctest: +SKIP
    """
    from neuronscope.errors import NothingProcessedError
    from neuronscope.runs.loop import Example, Skip, run_loop

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir, resume=resume, overwrite=overwrite)
    skipped, items = _question_items(questions)
    run.write_config({"pipeline": "important_patches", "answer_prefix": answer_prefix, "top_heads": top_heads,
                      "percentile": percentile, "questions": [[r.id, r.question] for r in items],
                      "model": get_adapter(model).describe()})
    run.write_meta()

    def process(chunk: list[tuple[int, ImageRecord]]) -> list[Example | Skip]:
        out: list[Example | Skip] = []
        for index, record in chunk:
            try:
                if not record.question:
                    raise InputError(f"{record.where}: the record has no question")
                image = record.load()
            except InputError as error:  # reported, recorded, counted: never silently dropped
                out.append(Skip(str(error), {"id": record.id, "where": record.where}))
                continue
            found = important_patches(model, processor, image, record.question, answer_prefix=answer_prefix,
                                      top_heads=top_heads, percentile=percentile, out=run, name=f"q{index}")
            out.append(Example({"scores": found.scores, "attention": found.attention, "raw": found.raw},
                               {"id": record.id, "question": record.question, "skipped": None, **found.as_dict()}))
        return out

    run_loop(run, items, process, batch_size=1, label="questions")
    rows, correlations = [], []
    for entry in sorted(run.ledger_entries(), key=lambda e: int(e["index"])):
        record = run.read_example(entry["key"])[1]
        if record.get("skipped"):
            skipped.append({"source": "questions", "record": record["id"], "image": record.get("where", ""),
                            "reason": record["skipped"]})
            continue
        rows.append({"index": entry["index"], "id": record["id"], "question": record["question"],
                     "answer": record["answer"], "heads": record["heads"],
                     "top_patch_position": record["top_patch_position"],
                     "rank_correlation": record["rank_correlation"]})
        if record["rank_correlation"] == record["rank_correlation"]:  # not NaN
            correlations.append(record["rank_correlation"])
    run.write_csv("patches.csv", rows, ["index", "id", "question", "answer", "heads", "top_patch_position",
                                        "rank_correlation"])
    declared = len(items) + (len(questions.skipped) if isinstance(questions, ImageDataset) else 0)
    metrics = {"questions_declared": declared, "questions_done": len(rows), "questions_skipped": len(skipped),
               "mean_rank_correlation": sum(correlations) / len(correlations) if correlations else None,
               "skipped_inputs": skipped}
    run.write_json("metrics.json", metrics)
    run.write_skipped(skipped)
    if not rows:
        raise NothingProcessedError(f"no question could be answered ({len(skipped)} skipped); the reasons are in "
                                    f"{run.path / 'metrics.json'}")
    return metrics


def _question_items(questions: Any) -> tuple[list[dict[str, Any]], list[ImageRecord]]:
    """The skipped inputs so far and one :class:`ImageRecord` (with its question) per item."""
    if isinstance(questions, ImageDataset):
        return [skip.to_dict() for skip in questions.skipped], list(questions.records)
    items = []
    for number, (image, question) in enumerate(questions):
        if isinstance(image, Image.Image):
            items.append(ImageRecord(f"image-{number}", question=question, image=image))
        else:
            items.append(ImageRecord(str(image), Path(image), question=question))
    return [], items


def patches(options: Any, *, loaded: Any = None) -> Any:
    """``recipe patches``: :func:`find_important_patches` on a VQA JSONL, into ``--out``."""
    from neuronscope.inputs.images import read_vqa_jsonl
    from neuronscope.report import build_report
    from neuronscope.workflows.common import load
    from neuronscope.workflows.result import RunResult

    dataset = read_vqa_jsonl(options.questions, options.image_root)
    RunDir.check(options.out, resume=options.resume, overwrite=options.overwrite)
    loaded = load(options, loaded)
    metrics = find_important_patches(loaded.model, loaded.processor, dataset, run_dir=options.out,
                                     resume=options.resume, overwrite=options.overwrite,
                                     answer_prefix=options.answer_prefix, top_heads=options.top_heads,
                                     percentile=options.percentile)
    build_report(options.out)
    return RunResult("recipe patches", str(options.out), metrics, [
        f"{metrics['questions_done']} of {metrics['questions_declared']} questions answered "
        f"({metrics['questions_skipped']} skipped); mean rank correlation with the attention map "
        f"{metrics['mean_rank_correlation']}; results in {options.out}"])


__all__ = ["PatchResult", "find_important_patches", "head_source_contributions", "patches",
           "important_patches", "min_max", "rank_correlation"]
