"""A self-contained HTML report of a run folder: one file, readable offline, nothing fetched from anywhere.

`build_report(run_dir)` writes `report.html` into the folder. CSS is inline, images are embedded as base64
`data:` URIs, there is no JavaScript, and a Content-Security-Policy forbids any network request, so the file can
be mailed, archived or opened on an air-gapped machine.

Which files the report picks up (a section appears only when its files exist; names are relative to the run
folder):

| file | section |
| --- | --- |
| `summary.txt` | a paragraph under the title |
| `config.json` | "How this run was made": the options (nested keys flattened as `a.b`) |
| `meta.json` | same section: versions, time, host, command line, resumes |
| `metrics.json` | "Metrics": scalars in one table; `{row: {column: value}}` mappings and lists of flat objects as 2-D tables; any `skipped_inputs` lists go to "Skipped inputs" |
| `neurons.csv` | "Top neurons": the first `max_rows` rows; a column "top tokens" is added from `top_tokens.json` (keys `layer:index`, or `layer:expert:neuron` when the table has an `expert` column) |
| `top_tokens.json` | `{"<layer>:<index>": tokens}` or `[{"layer", "index", "tokens"}]`; tokens are strings, `[token, score]` pairs or `{"token", "score"}` objects |
| `captions.json` | "Captions before / after": `[{"id"?, "image"?, "before", "after", ...}]`; changed words of "after" highlighted; "image" (a path inside the run folder) shown as a thumbnail |
| `tables/*.csv` | "Tables": each CSV, first `max_rows` rows |
| `plots/*.png` | "Plots" |
| `plots/<topic>/*.png` | one section per sub-folder, in name order, titled by its name without a leading number (`plots/3_two_towers/` -> "Two towers") |
| `heatmaps/*.png` | "Heatmaps" |
| `*.png` (top level) | "Figures" |
| `skipped.json` | "Skipped inputs": `[{"source", "record", "image"?, "reason"}]` (e.g. `ImageDataset.summary()["skipped_inputs"]`) |
| vision runs' files | "VQA vs textual QA", "Important image patches", "Logit lens over image tokens", "Invariance and semantic sensitivity" (see `neuronscope.report.vision`; files shown there are not repeated under "Tables" / "Plots" / "Heatmaps") |
| every file (with `link_files=True`) | "Files": a link to each file of the folder, by relative path, and its size |

Figures are shown in natural order: digit runs compare as numbers (`top1, top10, top50, top100, top500`).

Example:
    >>> from neuronscope.report import RunDir, build_report
    >>> run = RunDir("runs/demo", overwrite=True)  # doctest: +SKIP
    >>> run.write_json("metrics.json", {"pcr": {"boost": 0.31, "suppress": -0.52}})  # doctest: +SKIP
    >>> build_report(run.path)  # doctest: +SKIP
    PosixPath('runs/demo/report.html')
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2

from neuronscope.errors import InputError
from neuronscope.report.cells import (
    MAX_EMBED_BYTES,
    EmbeddedImage,
    Section,
    Table,
    _cell,
    _data_uri,
    _file_link,
    _find_skipped,
    _flatten,
    _is_matrix,
    _is_records,
    _label,
    _left_out,
    _number,
    _read_csv,
    _read_json,
    _records_table,
    _subtitle,
    _thumbnail,
    _top_tokens,
    _word_diff,
    natural_key,
    png_width,
)
from neuronscope.report.vision import vision_sections
from neuronscope.results.io import atomic_write_text

TEMPLATE_DIR = Path(__file__).parent / "templates"
TEMPLATE_NAME = "report.html.j2"
REPORT_NAME = "report.html"
#: PNGs wider than this span the whole row of figures
WIDE_FIGURE_PX = 1000
#: Images larger than this are listed, not embedded, to keep the report openable.
def build_report(
    run_dir: str | Path,
    *,
    title: str | None = None,
    out_name: str = REPORT_NAME,
    max_rows: int = 200,
    link_files: bool = False,
) -> Path:
    """Write the run's self-contained HTML report and return its path.

    Args:
        run_dir: the run folder (see the module docstring for the files it reads).
        title: page title (default: config "title", else "neuronscope run · <folder name>").
        out_name: file name of the report inside the folder (default "report.html").
        max_rows: rows shown per table (default 200; the table says how many were left out).
        link_files: add a "Files" section linking every file in the folder (relative links, followed only when
            clicked; default False).

    Raises:
        InputError: the folder does not exist, or one of its files is damaged (the message names it).

    Example:
        >>> build_report("runs/demo")  # doctest: +SKIP
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"{run}: run folder not found; pass the folder a run wrote its results into")
    config = _read_json(run / "config.json")
    meta = _read_json(run / "meta.json")
    metrics = _read_json(run / "metrics.json")
    vision, shown = vision_sections(run, max_rows)  # files a vision section shows are not repeated below
    sections = [
        _made_section(config, meta),
        _metrics_section(metrics, max_rows),
        _neurons_section(run, max_rows),
        _captions_section(run, max_rows),
        *vision,
        _tables_section(run, max_rows, shown),
        _figures_section(run, "plots", "Plots",
                         [p for p in sorted((run / "plots").glob("*.png"), key=natural_key) if p not in shown]),
        *_topic_sections(run),
        _figures_section(run, "heatmaps", "Heatmaps",
                         [p for p in sorted((run / "heatmaps").glob("*.png"), key=natural_key) if p not in shown]),
        _figures_section(run, "figures", "Figures",
                         sorted((path for path in run.glob("*.png") if path.name not in _caption_images(run)),
                                key=natural_key)),
        _skipped_section(run, metrics, max_rows),
        _files_section(run, out_name) if link_files else None,
    ]
    sections = [section for section in sections if section is not None]
    if title is None:
        title = str(config.get("title")) if isinstance(config, dict) and config.get("title") else \
            f"neuronscope run · {run.resolve().name}"
    summary = (run / "summary.txt").read_text(encoding="utf-8") if (run / "summary.txt").is_file() else ""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    from neuronscope._version import __version__

    html = environment.get_template(TEMPLATE_NAME).render(
        title=title,
        summary=summary,
        subtitle=_subtitle(config, meta),
        sections=sections,
        built=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        version=__version__,
    )
    return atomic_write_text(run / out_name, html)


# ---------------------------------------------------------------------------------------------------- sections
def _made_section(config: Any, meta: Any) -> Section | None:
    if config is None and meta is None:
        return None
    section = Section("how", "How this run was made")
    if isinstance(config, dict):
        rows = [[key, _cell(value)] for key, value in _flatten(config)]
        section.tables.append(Table("Config (config.json)", ["option", "value"], rows))
    if isinstance(meta, dict):
        meta = dict(meta)
        versions = meta.pop("versions", None)
        resumes = meta.pop("resumes", None)
        rows = [[key, _cell(value)] for key, value in _flatten(meta)]
        if isinstance(versions, dict):
            rows = [[f"{name} version", _cell(value)] for name, value in versions.items()] + rows
        section.tables.append(Table("Environment (meta.json)", ["", "value"], rows))
        if isinstance(resumes, list) and resumes:
            section.tables.append(_records_table("Resumed", resumes, 1000))
    return section


def _metrics_section(metrics: Any, max_rows: int) -> Section | None:
    if metrics is None:
        return None
    section = Section("metrics", "Metrics")
    if not isinstance(metrics, dict):
        section.text = json.dumps(metrics, indent=2, ensure_ascii=False)
        return section
    scalars: list[list[Any]] = []
    for key, value in metrics.items():
        if key == "skipped_inputs":
            continue
        if _is_matrix(value):
            columns = list(dict.fromkeys(column for row in value.values() for column in row))
            rows = [[row_name, *(_cell(row.get(column, "")) for column in columns)]
                    for row_name, row in value.items()]
            section.tables.append(Table(key, ["", *columns], rows))
        elif _is_records(value):
            section.tables.append(_records_table(key, value, max_rows))
        else:
            scalars.extend([name, _cell(leaf)] for name, leaf in _flatten({key: value}, skip="skipped_inputs"))
    if scalars:
        section.tables.insert(0, Table("Values", ["metric", "value"], scalars))
    return section if section.tables else None


def _neurons_section(run: Path, max_rows: int) -> Section | None:
    neurons_file = run / "neurons.csv"
    tokens = _top_tokens(run / "top_tokens.json")
    if not neurons_file.is_file() and not tokens:
        return None
    section = Section("neurons", "Top neurons")
    if neurons_file.is_file():
        columns, raw_rows, total = _read_csv(neurons_file, max_rows)
        rows = [[_cell(_number(value)) for value in row] for row in raw_rows]
        key_columns = ["layer", "expert", "neuron"] if {"layer", "expert", "neuron"} <= set(columns) else \
            ["layer", "index"]  # mixture-of-experts neurons are keyed "layer:expert:index"
        if tokens and set(key_columns) <= set(columns):
            places = [columns.index(name) for name in key_columns]
            columns = [*columns, "top tokens"]
            rows = [[*row, tokens.get(":".join(raw[place].strip() for place in places), "")]
                    for row, raw in zip(rows, raw_rows, strict=True)]
        section.tables.append(Table("neurons.csv", columns, rows, _left_out(total, len(rows))))
    elif tokens:
        items = list(tokens.items())
        rows = [[*key.split(":"), value] for key, value in items[:max_rows]]
        section.tables.append(Table("top_tokens.json", ["layer", "index", "top tokens"], rows,
                                    _left_out(len(items), len(rows))))
    return section


def _captions_section(run: Path, max_rows: int) -> Section | None:
    captions = _read_json(run / "captions.json")
    if captions is None:
        return None
    if not isinstance(captions, list) or not all(isinstance(item, dict) for item in captions):
        raise InputError(f"{run / 'captions.json'}: expected a list of objects {{\"before\", \"after\", ...}}; "
                         "rewrite it in that shape")
    columns = list(dict.fromkeys(key for item in captions for key in item))
    ordered = [key for key in ("id", "image", "before", "after") if key in columns]
    columns = ordered + [key for key in columns if key not in ordered]
    rows = []
    for item in captions[:max_rows]:
        row = []
        for column in columns:
            value = item.get(column, "")
            if column == "image" and isinstance(value, str):
                row.append(_thumbnail(run, value))
            elif column == "after" and isinstance(item.get("before"), str) and isinstance(value, str):
                row.append(_word_diff(item["before"], value))
            else:
                row.append(_cell(value))
        rows.append(row)
    section = Section("captions", "Captions before / after")
    section.tables.append(Table("captions.json", columns, rows, _left_out(len(captions), len(rows))))
    return section


def _caption_images(run: Path) -> set[str]:
    """Top-level image names that captions.json shows as thumbnails (not repeated under "Figures")."""
    captions = _read_json(run / "captions.json")
    if not isinstance(captions, list):
        return set()
    return {Path(item["image"]).name for item in captions
            if isinstance(item, dict) and isinstance(item.get("image"), str) and "/" not in item["image"]}


def _tables_section(run: Path, max_rows: int, shown: set[Path] = frozenset()) -> Section | None:
    files = [path for path in sorted((run / "tables").glob("*.csv")) if path not in shown]
    if not files:
        return None
    section = Section("tables", "Tables")
    for path in files:
        columns, raw_rows, total = _read_csv(path, max_rows)
        rows = [[_cell(_number(value)) for value in row] for row in raw_rows]
        section.tables.append(Table(path.name, columns, rows, _left_out(total, len(rows))))
    return section


def _figures_section(run: Path, section_id: str, title: str, files: list[Path]) -> Section | None:
    if not files:
        return None
    section = Section(section_id, title)
    for path in files:
        size = path.stat().st_size
        if size > MAX_EMBED_BYTES:
            note = f"{path.relative_to(run)} is {size / 2**20:.0f} MiB: too large to embed; open it next to this report"
            section.figures.append(EmbeddedImage(_label(path.stem), None, note))
        else:
            data = path.read_bytes()
            section.figures.append(EmbeddedImage(_label(path.stem), _data_uri(data, "image/png"),
                                                 wide=png_width(data) > WIDE_FIGURE_PX))
    return section


def _topic_sections(run: Path) -> list[Section | None]:
    """One figure section per sub-folder of ``plots/`` (e.g. a reproduction's topics), in name order."""
    folders = sorted(path for path in (run / "plots").glob("*") if path.is_dir()) if (run / "plots").is_dir() else []
    return [_figures_section(run, f"plots-{folder.name}", _label(re.sub(r"^\d+_", "", folder.name)).capitalize(),
                             sorted(folder.glob("*.png"), key=natural_key)) for folder in folders]


def _skipped_section(run: Path, metrics: Any, max_rows: int) -> Section | None:
    skipped: list[Any] = []
    from_file = _read_json(run / "skipped.json")
    if from_file is not None:
        if not isinstance(from_file, list):
            raise InputError(f"{run / 'skipped.json'}: expected a list of skipped inputs; rewrite it as [{{...}}]")
        skipped.extend(from_file)
    skipped.extend(_find_skipped(metrics))
    if not skipped:
        return None
    section = Section("skipped", f"Skipped inputs ({len(skipped)})")
    section.tables.append(_records_table("Inputs left out of this run, with the reason", skipped, max_rows))
    return section


def _files_section(run: Path, out_name: str) -> Section | None:
    files = sorted((path for path in run.rglob("*") if path.is_file() and not path.is_symlink()
                    and path.relative_to(run).as_posix() != out_name), key=lambda p: natural_key(p.relative_to(run)))
    if not files:
        return None
    section = Section("files", f"Files ({len(files)})")
    rows = [[_file_link(run, path), _cell(path.stat().st_size)] for path in files]
    section.tables.append(Table("Every file in this run's folder (links open next to this report)",
                                ["file", "bytes"], rows))
    return section
