"""Does a per-patch reading sit on the object? Counts against ground-truth object coverage of the vision grid.

Two readings are measured here, both pure tensor math (the masks come from a synthetic world, e.g.
:func:`neuronscope.bundled.world.patch_coverage`):

- the logit lens over image tokens (:class:`LensLocalisation`): per stage, the fraction of **object patches**
  (covered >= ``on`` by an object) whose top token is that object's word (its colour), against the fraction of
  **background patches** (covered by no object) whose top token is the word of an object of the scene; also
  whether the right word ranks first among the candidate words, and its mean rank;
- important patches (:func:`top_patches_on_object`): the share of the ``n`` best-scored patches that lie on the
  asked object.

Example:
    >>> counts = LensLocalisation(stages=["embeddings", "layer 0"])
    >>> top1 = torch.tensor([[5, 9, 9], [5, 5, 9]])             # [stages, patches]
    >>> ranks = torch.tensor([[[0, 3], [2, 0], [2, 0]], [[0, 1], [0, 4], [1, 0]]])  # [stages, patches, words]
    >>> coverage = torch.tensor([[1.0, 0.0, 0.0]])              # [objects, patches]
    >>> counts.add(top1, ranks, coverage, torch.tensor([0]), torch.tensor([5, 9]))
    >>> [row["object_top1_right"] for row in counts.rows()]
    [1.0, 1.0]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from neuronscope.errors import InputError

COUNTS = ("object_patches", "object_top1_right", "object_best_among_words", "object_rank_sum",
          "background_patches", "background_top1_scene_word", "background_top1_any_word", "background_rank_sum",
          "background_rank_count")


@dataclass
class LensLocalisation:
    """Counts summed over images, per stage; :meth:`rows` turns them into fractions.

    Attributes:
        stages: stage names (as :class:`~neuronscope.vision.logit_lens.LogitLens` ``stages``).
        on: a patch is an object's when the object covers at least this fraction of it (default 0.5).
        counts: name -> ``[stages]`` float64 sums (see :data:`COUNTS`).
        images: images added.
    """

    stages: list[str]
    on: float = 0.5
    counts: dict[str, torch.Tensor] = field(default_factory=dict)
    images: int = 0

    def __post_init__(self) -> None:
        for name in COUNTS:
            self.counts.setdefault(name, torch.zeros(len(self.stages), dtype=torch.float64))

    def add(self, top1: torch.Tensor, ranks: torch.Tensor, coverage: torch.Tensor, object_words: torch.Tensor,
            word_ids: torch.Tensor) -> None:
        """Add one image.

        Args:
            top1: ``[stages, P]`` top token per patch.
            ranks: ``[stages, P, m]`` ranks of the ``m`` candidate words (e.g. the colour words).
            coverage: ``[objects, P]`` fraction of each patch each object covers.
            object_words: ``[objects]`` index (into the ``m`` words) of each object's word.
            word_ids: ``[m]`` token ids of the candidate words.
        """
        n_stages, n_patches = top1.shape
        if ranks.shape[:2] != top1.shape or coverage.shape[1] != n_patches or n_stages != len(self.stages):
            raise InputError(f"shapes do not match: top1 {tuple(top1.shape)}, ranks {tuple(ranks.shape)}, coverage "
                             f"{tuple(coverage.shape)}, {len(self.stages)} stages")
        word_ids = word_ids.to(top1.device)
        c = self.counts
        for obj, word in enumerate(object_words.tolist()):
            on_object = coverage[obj] >= self.on  # [P]
            c["object_patches"] += float(on_object.sum())
            c["object_top1_right"] += (top1[:, on_object] == word_ids[word]).sum(1).double()
            best = ranks[:, on_object].argmin(-1)  # [stages, n_on]; ties: the lower word index
            c["object_best_among_words"] += (best == word).sum(1).double()
            c["object_rank_sum"] += ranks[:, on_object, word].sum(1).double()
        background = coverage.max(0).values == 0
        scene_ids = word_ids[object_words]
        c["background_patches"] += float(background.sum())
        c["background_top1_scene_word"] += torch.isin(top1[:, background], scene_ids).sum(1).double()
        c["background_top1_any_word"] += torch.isin(top1[:, background], word_ids).sum(1).double()
        c["background_rank_sum"] += ranks[:, background][:, :, object_words].sum((1, 2)).double()
        c["background_rank_count"] += float(background.sum()) * len(object_words)
        self.images += 1

    def rows(self) -> list[dict[str, Any]]:
        """One row per stage: the fractions (NaN without patches) and mean ranks."""
        c = self.counts

        def ratio(top: torch.Tensor, bottom: torch.Tensor) -> list[float]:
            return [float(t / b) if b > 0 else float("nan") for t, b in zip(top, bottom, strict=True)]

        columns = {
            "object_top1_right": ratio(c["object_top1_right"], c["object_patches"]),
            "background_top1_scene_word": ratio(c["background_top1_scene_word"], c["background_patches"]),
            "background_top1_any_word": ratio(c["background_top1_any_word"], c["background_patches"]),
            "object_best_among_words": ratio(c["object_best_among_words"], c["object_patches"]),
            "object_mean_rank": ratio(c["object_rank_sum"], c["object_patches"]),
            "background_mean_rank": ratio(c["background_rank_sum"], c["background_rank_count"]),
        }
        return [{"stage": stage, **{name: values[s] for name, values in columns.items()},
                 "object_patches": int(c["object_patches"][s]), "background_patches": int(c["background_patches"][s])}
                for s, stage in enumerate(self.stages)]


def top_patches_on_object(scores: torch.Tensor, coverage: torch.Tensor, n: int = 1, on: float = 0.5) -> float:
    """Share of the ``n`` best-scored patches (``scores [P]``) that the object covers at least ``on`` of
    (``coverage [P]``); ties go to the lower patch index.

    Example:
        >>> top_patches_on_object(torch.tensor([0.1, 0.9, 0.5]), torch.tensor([0.0, 1.0, 0.2]), n=2)
        0.5
    """
    if scores.shape != coverage.shape:
        raise InputError(f"scores {tuple(scores.shape)} and coverage {tuple(coverage.shape)} differ: one per patch")
    n = min(int(n), scores.numel())
    best = torch.sort(scores.float(), descending=True, stable=True).indices[:n]
    return float((coverage[best] >= on).float().mean())


__all__ = ["COUNTS", "LensLocalisation", "top_patches_on_object"]
