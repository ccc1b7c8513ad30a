"""Seeded shuffles of image-token features, for the region-invariance experiment (Pan et al. 2024).

The question: do the same neurons fire when the image patches are shuffled? The shuffle moves the image
features among the image-token positions of a row while every other input (text tokens, position ids,
M-RoPE grids, newline / CLS tokens) stays where it was.

How it is applied: :func:`shuffled_image_tokens` registers a forward pre-hook on the model's language model
(the adapter's decoder: :attr:`neuronscope.models.adapter.ModelAdapter.decoder`) that rewrites
its ``inputs_embeds`` argument, i.e. the sequence right after the processor's placeholders were replaced by
the projected image features (``get_image_features`` -> ``masked_scatter``). This works for every grid family
without knowing the projector's output layout (LLaVA-NeXT packs, unpads and adds newlines after the
projector; Qwen2-VL concatenates all images). The pure function :func:`shuffle_image_embeddings` does the same
to a tensor you hold.

Example::

    layout = image_layout(model, batch)
    with shuffled_image_tokens(model, layout, seed=0):
        shuffled_logits = model(**batch).logits
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from neuronscope.errors import InputError, UnsupportedModelError
from neuronscope.models.adapter import get_adapter
from neuronscope.models.image_grid import ImageLayout


def shuffle_plan(
    layout: ImageLayout, seed: int = 0, scope: str = "tile"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which position receives which position's features.

    Args:
        layout: the row's layout (must have a spatial map).
        seed: seed of the ``torch.Generator`` drawing the permutations.
        scope: ``"tile"`` shuffles cells within each tile (grids of different resolution stay apart);
            ``"image"`` shuffles all cells of one image together.

    Returns:
        ``(targets, sources)``, both ``LongTensor [n_cells]`` of sequence positions: after the shuffle,
        position ``targets[i]`` holds the features that were at ``sources[i]``. Newline and CLS positions are
        not moved.

    Example::

        targets, sources = shuffle_plan(layout, seed=3)
    """
    if not layout.has_spatial_map:
        raise InputError(f"nothing to shuffle spatially: {layout.reason}")
    if scope not in ("tile", "image"):
        raise InputError(f"scope must be 'tile' or 'image', got {scope!r}")
    generator = torch.Generator().manual_seed(int(seed))
    if scope == "tile":
        groups = [tile.positions for tile in layout.tiles]
    else:
        groups = [
            torch.cat([t.positions for t in layout.tiles_of(i)])
            for i in sorted({t.image_index for t in layout.tiles})
        ]
    targets, sources = [], []
    for cells in groups:
        permutation = torch.randperm(cells.numel(), generator=generator)
        targets.append(cells)
        sources.append(cells[permutation])
    return torch.cat(targets), torch.cat(sources)


def shuffle_image_embeddings(
    inputs_embeds: torch.Tensor, row: int, targets: torch.Tensor, sources: torch.Tensor
) -> torch.Tensor:
    """A copy of ``inputs_embeds [batch, seq, d]`` where ``row``'s ``targets`` take the vectors at ``sources``."""
    out = inputs_embeds.clone()
    targets = targets.to(inputs_embeds.device)
    sources = sources.to(inputs_embeds.device)
    out[row, targets] = inputs_embeds[row, sources]
    return out


@contextmanager
def shuffled_image_tokens(
    model: torch.nn.Module,
    layouts: ImageLayout | Sequence[ImageLayout],
    seed: int = 0,
    scope: str = "tile",
) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Within the block, every forward of ``model`` sees the image features of each layout's row shuffled.

    Args:
        model: the VLM (``*ForConditionalGeneration``).
        layouts: one layout per batch row to shuffle (rows without a layout are left alone).
        seed: permutation seed; row ``r`` uses ``seed + r`` so rows differ.
        scope: ``"tile"`` or ``"image"`` (see :func:`shuffle_plan`).

    Yields:
        ``{row: (targets, sources)}``, the plans applied.

    Only prefill forwards are changed (a forward whose sequence does not reach the image positions, such as
    a cached generation step, passes unchanged). The hook is removed on exit, also after an error.
    """
    layouts = [layouts] if isinstance(layouts, ImageLayout) else list(layouts)
    plans = {layout.row: shuffle_plan(layout, seed + layout.row, scope) for layout in layouts}
    language_model = get_adapter(model).decoder  # the decoder that receives the scattered image features

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise UnsupportedModelError(
                f"{type(language_model).__name__} was called without inputs_embeds; image tokens cannot be "
                "shuffled for this model"
            )
        for row, (targets, sources) in plans.items():
            if embeds.shape[1] > int(targets.max()):
                embeds = shuffle_image_embeddings(embeds, row, targets, sources)
        kwargs["inputs_embeds"] = embeds
        return args, kwargs

    handle = language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield plans
    finally:
        handle.remove()
