"""Words written on the image grid: one label per image-token cell, drawn over the (enlarged) image.

Used for the logit lens over image tokens (:mod:`neuronscope.vision.logit_lens`): each patch shows the token it
"says" at one layer; highlighted cells (e.g. where that token is the object's colour) get a yellow frame.

Example:
    >>> picture = token_grid_image(image, layout, ["red"] * layout.n_image_tokens)  # doctest: +SKIP
    >>> picture.save("lens.png")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from neuronscope.errors import InputError
from neuronscope.models.image_grid import ImageLayout

HIGHLIGHT = (255, 214, 0)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font only
        return ImageFont.load_default()


def token_grid_image(
    image: Image.Image,
    layout: ImageLayout,
    labels: Sequence[str],
    *,
    highlight: Sequence[bool] | None = None,
    tile: int = 0,
    cell_px: int = 48,
    title: str = "",
) -> Image.Image:
    """Draw ``labels`` (one per image token, in ``layout.positions`` order) on one tile's cells.

    Args:
        image: the original image.
        layout: its :class:`~neuronscope.models.image_grid.ImageLayout` (with a spatial map).
        labels: one string per image token of the row.
        highlight: cells to frame (same order), default none.
        tile: which tile of ``layout.tiles`` to draw (default the first: the whole image for LLaVA-1.5).
        cell_px: the drawn width of one cell (the image is enlarged to fit).
        title: a line written above the grid.

    Returns:
        An RGB image: the enlarged original, the tile's grid lines, a label per cell on a dark box.
    """
    if not layout.has_spatial_map:
        raise InputError(f"no grid to draw on: {layout.reason}")
    if len(labels) != layout.n_image_tokens:
        raise InputError(f"got {len(labels)} labels for {layout.n_image_tokens} image tokens: one per token")
    if not 0 <= tile < len(layout.tiles):
        raise InputError(f"tile {tile} does not exist: the layout has {len(layout.tiles)} tiles")
    chosen = layout.tiles[tile]
    width, height = image.size
    left, top, right, bottom = chosen.box if chosen.box is not None else (0.0, 0.0, float(width), float(height))
    scale = cell_px * chosen.cols / max(right - left, 1e-6)
    header = 22 if title else 0
    canvas = Image.new("RGB", (round(width * scale), round(height * scale) + header), (255, 255, 255))
    canvas.paste(image.convert("RGB").resize((round(width * scale), round(height * scale)),
                                             Image.Resampling.NEAREST), (0, header))
    draw = ImageDraw.Draw(canvas)
    font = _font(max(8, cell_px // 4))
    if title:
        draw.text((4, 3), title, fill=(0, 0, 0), font=_font(14))
    index = layout.token_index(chosen.positions).tolist()
    cell_w = (right - left) / chosen.cols * scale
    cell_h = (bottom - top) / chosen.rows * scale
    for cell, token_index in enumerate(index):
        row, col = divmod(cell, chosen.cols)
        x0, y0 = left * scale + col * cell_w, top * scale + row * cell_h + header
        framed = bool(highlight[token_index]) if highlight is not None else False
        draw.rectangle((x0, y0, x0 + cell_w, y0 + cell_h), outline=HIGHLIGHT if framed else (90, 90, 90),
                       width=3 if framed else 1)
        text = labels[token_index].strip() or repr(labels[token_index])
        box = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = box[2] - box[0], box[3] - box[1]
        x, y = x0 + (cell_w - text_w) / 2, y0 + (cell_h - text_h) / 2
        draw.rectangle((x - 2, y - 2 + box[1], x + text_w + 2, y + text_h + 2 + box[1]), fill=(0, 0, 0))
        draw.text((x, y), text, fill=HIGHLIGHT if framed else (255, 255, 255), font=font)
    return canvas


__all__ = ["token_grid_image"]
