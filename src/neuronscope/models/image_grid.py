"""Where the image sits in a VLM's input: the typed result (:class:`ImageLayout`, :class:`Tile`) and the
small helpers the per-family layout readers share.

Positions are absolute indices into the (left-padded) sequence of one batch row, i.e. the indices a hook on
the language model sees. Boxes are in pixels of the ORIGINAL image, ``(left, top, right, bottom)``; a box may
reach outside the image (pad-to-square) or cover only part of it (center crop).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from neuronscope.errors import InputError

Box = tuple[float, float, float, float]
"""``(left, top, right, bottom)`` in pixels of the original image."""


@dataclass(frozen=True)
class Tile:
    """One spatial grid of image tokens.

    Attributes:
        rows, cols: grid shape; cell ``(r, c)`` covers the ``r``-th band from the top and ``c``-th from the left.
        positions: ``LongTensor [rows * cols]`` sequence positions of the cells, row-major.
        image_index: which image of the row this tile belongs to (0 = the row's first image).
        kind: ``"image"`` (single grid), ``"base"`` / ``"highres"`` (LLaVA-NeXT), ``"tile"`` / ``"global"``
            (Idefics3).
        box: region of the original image the grid covers, or ``None`` when the original size is unknown.
        tile_row, tile_col: for Idefics3 crops, the crop's place in the image's crop grid (else ``None``).
    """

    rows: int
    cols: int
    positions: torch.Tensor
    image_index: int = 0
    kind: str = "image"
    box: Box | None = None
    tile_row: int | None = None
    tile_col: int | None = None

    def position_grid(self) -> torch.Tensor:
        """``LongTensor [rows, cols]`` of sequence positions."""
        return self.positions.view(self.rows, self.cols)


@dataclass
class ImageLayout:
    """Where the image tokens of one batch row are and how they map onto the image.

    Attributes:
        family: ``config.model_type``.
        row: the batch row described.
        positions: ``LongTensor [n_image_tokens]`` every image-token position of the row, ascending. Per-token
            values passed to the heatmap functions are indexed in this order.
        tiles: the spatial grids (empty when ``has_spatial_map`` is False).
        newline_positions: LLaVA-NeXT row-end tokens: image tokens that belong to no cell.
        extra_positions: other image tokens that belong to no cell (the CLS token under
            ``vision_feature_select_strategy="full"``).
        has_spatial_map: False for learned-query families (InstructBLIP, BLIP-2); ``reason`` says why.
        reason: empty when there is a spatial map.
        image_sizes: original ``(width, height)`` per image of the row, ``None`` where unknown.
    """

    family: str
    row: int
    positions: torch.Tensor
    tiles: list[Tile] = field(default_factory=list)
    newline_positions: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    extra_positions: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    has_spatial_map: bool = True
    reason: str = ""
    image_sizes: list[tuple[int, int] | None] = field(default_factory=list)

    @property
    def n_image_tokens(self) -> int:
        return int(self.positions.numel())

    @property
    def n_images(self) -> int:
        return len(self.image_sizes)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """Original ``(width, height)`` of the row's first image, where known."""
        return self.image_sizes[0] if self.image_sizes else None

    def token_index(self, positions: torch.Tensor) -> torch.Tensor:
        """Indices into :attr:`positions` of the given sequence positions (all must be image tokens)."""
        positions = torch.as_tensor(positions, dtype=torch.long)
        if positions.numel() == 0:
            return torch.empty(0, dtype=torch.long)
        index = torch.searchsorted(self.positions, positions)
        found = index < self.n_image_tokens
        if not found.all() or not torch.equal(self.positions[index], positions):
            raise InputError("some positions are not image tokens of this row; take them from the layout")
        return index

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (positions as lists), for a results folder's metadata."""
        return {
            "family": self.family,
            "row": self.row,
            "positions": self.positions.tolist(),
            "newline_positions": self.newline_positions.tolist(),
            "extra_positions": self.extra_positions.tolist(),
            "has_spatial_map": self.has_spatial_map,
            "reason": self.reason,
            "image_sizes": [list(size) if size is not None else None for size in self.image_sizes],
            "tiles": [
                {
                    "rows": tile.rows,
                    "cols": tile.cols,
                    "positions": tile.positions.tolist(),
                    "image_index": tile.image_index,
                    "kind": tile.kind,
                    "box": list(tile.box) if tile.box is not None else None,
                    "tile_row": tile.tile_row,
                    "tile_col": tile.tile_col,
                }
                for tile in self.tiles
            ],
        }

    def tiles_of(self, image_index: int) -> list[Tile]:
        """The tiles of one image of the row, in sequence order."""
        return [t for t in self.tiles if t.image_index == image_index]


@dataclass
class LayoutRequest:
    """What a family's layout reader gets: the config, the processor output, the row and optional extras.

    ``original_sizes`` are ``(width, height)`` per image of the row, given by the caller where the batch does
    not carry them; ``processor`` is the processor (or just its image processor) that made the batch.
    """

    config: Any
    batch: Mapping[str, Any]
    row: int
    processor: Any = None
    original_sizes: Sequence[tuple[int, int]] | None = None

    def tensor(self, key: str) -> torch.Tensor | None:
        value = self.batch.get(key)
        if value is None:
            return None
        # Layouts live on the CPU: indexing a device tensor with CPU positions works everywhere.
        return value.detach().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(value)

    @property
    def input_ids(self) -> torch.Tensor:
        ids = self.tensor("input_ids")
        if ids is None:
            raise InputError("the batch has no input_ids; pass the processor's output (it holds input_ids)")
        if ids.dim() == 1:
            ids = ids[None]
        if not 0 <= self.row < ids.shape[0]:
            raise InputError(f"row {self.row} is outside the batch of {ids.shape[0]} rows")
        return ids

    def image_mask(self, image_token_id: int) -> torch.Tensor:
        """``BoolTensor [batch, seq]``: image tokens that the attention mask keeps."""
        ids = self.input_ids
        mask = ids == image_token_id
        attention = self.tensor("attention_mask")
        if attention is not None:
            mask &= attention.view(ids.shape).bool()
        return mask

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer, or ``None``."""
        return getattr(self.processor, "tokenizer", None)

    def original_size(self, image_index: int) -> tuple[int, int] | None:
        if self.original_sizes is None or image_index >= len(self.original_sizes):
            return None
        width, height = self.original_sizes[image_index]
        return int(width), int(height)

    def processor_setting(self, name: str, default: Any = None) -> Any:
        """An image-processor attribute (e.g. ``do_pad``), looking through a full processor if given."""
        processor = getattr(self.processor, "image_processor", self.processor)
        if processor is None:
            return default
        value = getattr(processor, name, None)
        return default if value is None else value


def image_token_id(config: Any) -> int:
    """The id of the image placeholder token, probed under its historical names."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise InputError(
        f"config of model type {config.model_type!r} names no image token id (image_token_id / "
        "image_token_index); set it on the config to the id the processor inserts"
    )


def runs(positions: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of consecutive positions as ``(start, stop)`` half-open ranges.

    Example: ``runs(torch.tensor([3, 4, 5, 9, 10]))`` -> ``[(3, 6), (9, 11)]``.
    """
    if positions.numel() == 0:
        return []
    values = positions.tolist()
    out: list[tuple[int, int]] = []
    start = prev = values[0]
    for value in values[1:]:
        if value != prev + 1:
            out.append((start, prev + 1))
            start = value
        prev = value
    out.append((start, prev + 1))
    return out


def images_of_row(tokens_per_image: Sequence[int], mask: torch.Tensor, row: int) -> range:
    """Which images (indices into the batch-wide image list) fill ``row``.

    Processors list images in the order they appear, row after row; the image tokens of earlier rows say
    how many images those rows consumed.
    """
    counts = mask.sum(dim=1).tolist()
    before, here = sum(counts[:row]), counts[row]
    consumed = first = 0
    while consumed < before and first < len(tokens_per_image):
        consumed += tokens_per_image[first]
        first += 1
    last, total = first, 0
    while total < here and last < len(tokens_per_image):
        total += tokens_per_image[last]
        last += 1
    if consumed != before or total != here:
        raise InputError(
            f"row {row} has {here} image tokens but the images of the batch need "
            f"{list(tokens_per_image)} tokens each; the input_ids and the image tensors come from different "
            "processor calls (or were truncated): process text and images together"
        )
    return range(first, last)


def full_box(size: tuple[int, int] | None) -> Box | None:
    """The box of a grid that covers the whole (possibly squashed) image."""
    if size is None:
        return None
    return (0.0, 0.0, float(size[0]), float(size[1]))


def sub_box(box: Box | None, row: int, col: int, rows: int, cols: int) -> Box | None:
    """Cell ``(row, col)`` of a ``rows x cols`` uniform split of ``box``."""
    if box is None:
        return None
    left, top, right, bottom = box
    width, height = (right - left) / cols, (bottom - top) / rows
    return (left + col * width, top + row * height, left + (col + 1) * width, top + (row + 1) * height)


def image_blocks(request: LayoutRequest, tokens_per_image: Sequence[int]) -> tuple[torch.Tensor, list[int],
                                                                                  list[torch.Tensor]]:
    """``(positions, images, blocks)`` of one row: all image-token positions, the batch-wide indices of the row's
    images, and each image's positions (in sequence order), for families whose images take a known number of
    image tokens each."""
    mask = request.image_mask(image_token_id(request.config))
    images = list(images_of_row(list(tokens_per_image), mask, request.row))
    positions = mask[request.row].nonzero().flatten()
    blocks, cursor = [], 0
    for index in images:
        blocks.append(positions[cursor:cursor + tokens_per_image[index]])
        cursor += tokens_per_image[index]
    return positions, images, blocks


def square_layout(request: LayoutRequest, side: int, kind: str = "image") -> ImageLayout:
    """Layout of a family whose every image is one ``side x side`` grid of tokens, row-major, over the whole
    (squashed) image: PaliGemma, Gemma-3, Janus."""
    mask = request.image_mask(image_token_id(request.config))
    n_batch = int(mask.sum()) // (side * side)
    positions, _, blocks = image_blocks(request, [side * side] * n_batch)
    tiles, sizes = [], []
    for local, block in enumerate(blocks):
        original = request.original_size(local)
        sizes.append(original)
        tiles.append(Tile(side, side, block.clone(), local, kind, full_box(original)))
    return ImageLayout(request.config.model_type, request.row, positions, tiles, image_sizes=sizes)
