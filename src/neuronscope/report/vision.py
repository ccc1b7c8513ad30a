"""Report sections of the vision analyses: VQA vs textual QA, important image patches, the logit lens over image
tokens, and invariance / semantic sensitivity of multimodal neurons.

Each section appears when its files exist in the run folder, and claims them so that the generic "Tables",
"Plots" and "Heatmaps" sections do not show them a second time:

| files | section |
| --- | --- |
| `tables/heads.csv` + `plots/heads_vqa_tqa.png` (``recipe vqa``) | "VQA vs textual QA": headline figures, head maps, layer shares |
| `patches.csv` (``recipe patches``) or `tables/questions.csv` (``recipe vqa``) + `heatmaps/q<n>.*.png` | "Important image patches": per question the overlay, its mask and the attention map |
| `lens/<n>.json` (+ `lens/<n>.<stage>.png`, `tables/lens_*.csv`) (``recipe logit-lens``) | "Logit lens over image tokens": grids of each patch's top token per stage |
| `tables/region.csv`, `tables/cross_image.csv`, `tables/sensitivity.csv` (``recipe invariance``) | "Invariance and semantic sensitivity": a bar chart per concept and the tables |

Example:
    >>> sections, claimed = vision_sections(Path("runs/vqa"), max_rows=200)  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from neuronscope.report.cells import (
    EmbeddedImage,
    Section,
    Table,
    _cell,
    _data_uri,
    _left_out,
    _number,
    _read_csv,
    _read_json,
)

LENS_IMAGES = 6
PATCH_ROWS = 24
_PIXELATED = "width:{}px;image-rendering:pixelated;display:block"


def _image(path: Path, width: int = 144) -> Markup | str:
    if not path.is_file():
        return ""
    uri = _data_uri(path.read_bytes(), "image/png")
    return Markup('<img alt="{}" src="{}" style="{}">').format(path.name, uri, _PIXELATED.format(width))


def _figure(run: Path, path: Path, title: str) -> EmbeddedImage:
    return EmbeddedImage(title, _data_uri(path.read_bytes(), "image/png"), str(path.relative_to(run)))


def _csv_table(run: Path, path: Path, max_rows: int, title: str | None = None) -> Table:
    columns, raw, total = _read_csv(path, max_rows)
    rows = [[_cell(_number(value)) for value in row] for row in raw]
    return Table(title or str(path.relative_to(run)), columns, rows, _left_out(total, len(rows)))


def _vqa_section(run: Path, max_rows: int) -> tuple[Section, set[Path]] | None:
    heads, plot = run / "tables" / "heads.csv", run / "plots" / "heads_vqa_tqa.png"
    if not (heads.is_file() and plot.is_file()):
        return None
    metrics = _read_json(run / "metrics.json") or {}
    section = Section("vqa", "VQA vs textual QA")
    section.text = ("Each head's log-probability increase (LPI) of the answer at the last position, with the image "
                    "(VQA) and with the answer stated in a text context instead (TQA); mean over questions. "
                    "Framed cells: each condition's top heads.")
    keys = ("questions_done", "questions_with_context", "vqa_accuracy", "tqa_accuracy", "vqa_top_heads",
            "tqa_top_heads", "vqa_tqa_top_overlap", "vqa_tqa_top_overlap_per_question", "vqa_tqa_spearman",
            "vqa_lpi_vs_ablation", "tqa_lpi_vs_ablation", "top_patch_on_object", "on_object_chance", "top_patch_touches_object",
            "touches_object_chance", "tqa_top_source_is_answer")
    section.tables.append(Table("Headline figures", ["figure", "value"],
                                [[key, _cell(metrics[key])] for key in keys if metrics.get(key) is not None]))
    claimed = {heads, plot}
    section.figures.append(_figure(run, plot, "Mean head LPI, VQA and TQA"))
    layers = run / "plots" / "layers_vqa_tqa.png"
    if layers.is_file():
        section.figures.append(_figure(run, layers, "Each layer's share of the positive head LPI"))
        claimed.add(layers)
    section.tables.append(_csv_table(run, heads, max_rows, "Heads (tables/heads.csv), by VQA rank"))
    for name in ("layers.csv",):
        if (run / "tables" / name).is_file():
            section.tables.append(_csv_table(run, run / "tables" / name, max_rows))
            claimed.add(run / "tables" / name)
    return section, claimed


def _patch_rows(run: Path) -> list[dict[str, Any]]:
    """Question rows with a heat map index: ``patches.csv`` (recipe patches) or ``tables/questions.csv``."""
    import csv

    for path in (run / "patches.csv", run / "tables" / "questions.csv"):
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as handle:
                return [row for row in csv.DictReader(handle) if "index" in row]
    return []


def _patches_section(run: Path, max_rows: int) -> tuple[Section, set[Path]] | None:
    rows = [row for row in _patch_rows(run) if (run / "heatmaps" / f"q{row['index']}.patches.png").is_file()]
    if not rows:
        return None
    section = Section("patches", "Important image patches")
    section.text = ("Per question: each image token's contribution through the top head(s), scored by LPI, "
                    "upsampled over the image; the pixels above the 95th percentile; the same heads' attention.")
    claimed: set[Path] = set()
    table_rows = []
    for row in rows[:PATCH_ROWS]:
        stem = run / "heatmaps" / f"q{row['index']}"
        files = [Path(f"{stem}.{what}.png") for what in ("patches", "patches.mask", "attention",
                                                                   "attention.mask")]
        claimed |= {path for path in Path(stem).parent.glob(f"q{row['index']}.*.png")}
        table_rows.append([row.get("question", ""), row.get("answer", ""), row.get("vqa_prediction", ""),
                           row.get("heads") or row.get("patch_heads", ""), *(_image(path) for path in files),
                           _cell(_number(row.get("rank_correlation") or row.get("top_patch_on_object") or ""))])
    last = "rank correlation" if "rank_correlation" in rows[0] else "top patch on object"
    section.tables.append(Table("Questions", ["question", "answer", "prediction", "heads", "patches",
                                              "top 5 %", "attention", "top 5 %", last], table_rows,
                                _left_out(len(rows), len(table_rows))))
    return section, claimed


def _grid_markup(stage: dict[str, Any], grid: list[int]) -> Markup:
    rows, cols = grid
    cells = []
    for r in range(rows):
        line = []
        for c in range(cols):
            token, hit = stage["top"][r * cols + c], stage["highlight"][r * cols + c]
            style = "background:#ffe08a;font-weight:600" if hit else ""
            line.append(Markup('<td style="padding:1px 3px;font-size:11px;{}">{}</td>').format(
                style, escape(token.strip() or repr(token))))
        cells.append(Markup("<tr>{}</tr>").format(Markup("").join(line)))
    return Markup('<table style="min-width:0;border-collapse:collapse">{}</table>').format(Markup("").join(cells))


def _lens_section(run: Path, max_rows: int) -> tuple[Section, set[Path]] | None:
    files = sorted((run / "lens").glob("*.json"), key=lambda path: int(path.stem) if path.stem.isdigit() else 0)
    if not files:
        return None
    section = Section("lens", "Logit lens over image tokens")
    section.text = ("The residual stream at each image token read through the final norm and the unembedding: the "
                    "top token of every patch at every stage ('embeddings' = after the projector). Highlighted: "
                    "one of the run's words (e.g. the colours).")
    claimed: set[Path] = set(files)
    for name in ("lens_localisation.csv", "lens_word_ranks.csv", "lens_top_tokens.csv"):
        path = run / "tables" / name
        if path.is_file():
            section.tables.append(_csv_table(run, path, max_rows))
            claimed.add(path)
    for path in files[:LENS_IMAGES]:
        data = json.loads(path.read_text(encoding="utf-8"))
        stages = data["stages"]
        section.tables.append(Table(f"image {path.stem}: top token per patch", [s["stage"] for s in stages],
                                    [[_grid_markup(stage, data["grid"]) for stage in stages]]))
    pictures = sorted((run / "lens").glob("*.png"))
    section.figures.extend(_figure(run, picture, picture.stem.replace("_", " ")) for picture in pictures)
    claimed |= set(pictures)
    left = len(files) - LENS_IMAGES
    if left > 0:
        section.tables[-1].note = f"{left} more images in lens/*.json"
    return section, claimed


def _invariance_section(run: Path, max_rows: int) -> tuple[Section, set[Path]] | None:
    tables = {name: run / "tables" / f"{name}.csv" for name in ("region", "cross_image", "sensitivity")}
    if not all(path.is_file() for path in tables.values()):
        return None
    metrics = _read_json(run / "metrics.json") or {}
    section = Section("invariance", "Invariance and semantic sensitivity")
    section.text = ("Region invariance: overlap of a concept's top-k neurons before / after shuffling the image "
                    "tokens. Cross-image invariance: overlap of its top-k sets across the images that show it. "
                    "Semantic sensitivity: share of its top neurons whose top tokens name it.")
    region = (metrics.get("region") or {}).get("per_concept", {})
    cross, sensitivity = metrics.get("cross_image") or {}, metrics.get("sensitivity") or {}
    concepts = sorted(set(region) | set(cross) | set(sensitivity))
    if concepts:
        from neuronscope.report.vision_plots import grouped_bars_figure

        def value(table: dict[str, Any], concept: str, key: str) -> float:
            found = (table.get(concept) or {}).get(key)
            return float(found) if isinstance(found, (int, float)) and found == found else 0.0

        figure = grouped_bars_figure({"region overlap": [value(region, c, "overlap") for c in concepts],
                                      "cross-image overlap": [value(cross, c, "mean_overlap") for c in concepts],
                                      "semantic sensitivity": [value(sensitivity, c, "rate") for c in concepts]},
                                     concepts, "Per concept", "concept", "fraction")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        section.figures.append(EmbeddedImage("Invariance and sensitivity per concept",
                                             _data_uri(buffer.getvalue(), "image/png")))
    for path in tables.values():
        section.tables.append(_csv_table(run, path, max_rows))
    return section, set(tables.values())


def vision_sections(run: Path, max_rows: int) -> tuple[list[Section], set[Path]]:
    """The vision sections found in ``run`` and the files they show (for the generic sections to skip)."""
    sections, claimed = [], set()
    for builder in (_vqa_section, _patches_section, _lens_section, _invariance_section):
        found = builder(run, max_rows)
        if found is not None:
            sections.append(found[0])
            claimed |= found[1]
    return sections, claimed


__all__ = ["vision_sections"]
