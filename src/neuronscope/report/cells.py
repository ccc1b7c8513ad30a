"""The pieces the report is made of: tables, embedded images and sections, and how one value becomes a cell.

Everything that reads a run's file for the report reads it here, so a damaged file is an error that names it.
"""

from __future__ import annotations

import base64
import csv
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from neuronscope.errors import InputError

MAX_EMBED_BYTES = 25 * 1024 * 1024
_THUMBNAIL_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                       ".webp": "image/webp"}


@dataclass
class Table:
    """A table ready for the template: header cells and rows of (already escaped or plain) cells."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""


@dataclass
class EmbeddedImage:
    """A PNG for the template: caption, `data:` URI (None when too large to embed) and a note."""

    title: str
    data_uri: str | None
    note: str = ""
    wide: bool = False  # spans the whole row of figures (e.g. a sheet of heatmaps)


@dataclass
class Section:
    """One report section (anchor id, heading, tables, images, preformatted text)."""

    id: str
    title: str
    tables: list[Table] = field(default_factory=list)
    figures: list[EmbeddedImage] = field(default_factory=list)
    text: str = ""


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: line {error.lineno}: invalid JSON ({error.msg}); fix or rewrite the file, then "
                         "build the report again") from None


def _read_csv(path: Path, max_rows: int) -> tuple[list[str], list[list[str]], int]:
    """Header, the first `max_rows` rows as text, and the total number of rows."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        columns = next(reader, [])
        rows, total = [], 0
        for row in reader:
            total += 1
            if len(rows) < max_rows:
                rows.append(row)
    return columns, rows, total


def _number(text: str) -> Any:
    """CSV text as a number when it is one (so floats get the report's formatting)."""
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _top_tokens(path: Path) -> dict[str, Markup]:
    data = _read_json(path)
    if data is None:
        return {}
    entries: list[tuple[str, Any]] = []
    if isinstance(data, dict):
        entries = [(str(key), value) for key, value in data.items()]
    elif isinstance(data, list) and all(isinstance(item, dict) and {"layer", "index", "tokens"} <= set(item)
                                        for item in data):
        entries = [(f"{item['layer']}:{item['index']}", item["tokens"]) for item in data]
    else:
        raise InputError(f"{path}: expected {{\"<layer>:<index>\": tokens}} or [{{\"layer\", \"index\", "
                         "\"tokens\"}]; rewrite it in one of these shapes")
    return {key: _tokens_markup(tokens) for key, tokens in entries}


def _tokens_markup(tokens: Any) -> Markup:
    if not isinstance(tokens, list):
        tokens = [tokens]
    parts = []
    for token in tokens:
        score = None
        if isinstance(token, (list, tuple)) and len(token) == 2:
            token, score = token
        elif isinstance(token, dict):
            token, score = token.get("token", ""), token.get("score")
        label = escape(str(token))
        score_text = Markup(f' <span class="score">{escape(_format(score))}</span>') if score is not None else ""
        parts.append(Markup('<span class="tok">{}</span>{}').format(label, score_text))
    return Markup(" ").join(parts)


def _thumbnail(run: Path, image: str) -> Any:
    candidate = (run / image).resolve()
    inside = candidate.is_relative_to(run.resolve())
    mime = _THUMBNAIL_SUFFIXES.get(candidate.suffix.lower())
    if inside and mime and candidate.is_file() and candidate.stat().st_size <= MAX_EMBED_BYTES:
        uri = _data_uri(candidate.read_bytes(), mime)
        return Markup('<img class="thumb" alt="{}" src="{}">').format(image, uri)
    return image


def _word_diff(before: str, after: str) -> Markup:
    """`after` with the words that are not in `before` (in order) highlighted."""
    old, new = before.split(), after.split()
    pieces = []
    for tag, _, _, start, end in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        words = escape(" ".join(new[start:end]))
        if not words:
            continue
        pieces.append(Markup("<mark>{}</mark>").format(words) if tag != "equal" else words)
    return Markup(" ").join(pieces)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _records_table(title: str, records: list[Any], max_rows: int) -> Table:
    columns = list(dict.fromkeys(key for record in records if isinstance(record, dict) for key in record))
    rows = [[_cell(record.get(column, "")) for column in columns] if isinstance(record, dict) else [_cell(record)]
            for record in records[:max_rows]]
    return Table(title, columns or ["value"], rows, _left_out(len(records), len(rows)))


def _find_skipped(value: Any) -> list[Any]:
    found: list[Any] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "skipped_inputs" and isinstance(inner, list):
                found.extend(inner)
            else:
                found.extend(_find_skipped(inner))
    return found


def _flatten(mapping: dict[str, Any], prefix: str = "", skip: str | None = None) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        if key == skip:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items.extend(_flatten(value, f"{name}.", skip))
        else:
            items.append((name, value))
    return items


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _is_matrix(value: Any) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(row, dict) and row and all(_is_scalar(v) for v in row.values())
                    for row in value.values()))


def _is_records(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(row, dict) and all(_is_scalar(v) for v in row.values()) for row in value))


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cell(value: Any) -> Any:
    if isinstance(value, Markup):
        return value
    if isinstance(value, (list, dict)):
        if isinstance(value, list) and all(_is_scalar(v) for v in value) and len(value) <= 20:
            return ", ".join(_format(v) for v in value)
        return Markup('<code class="json">{}</code>').format(json.dumps(value, ensure_ascii=False))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Markup('<span class="num">{}</span>').format(_format(value))
    return _format(value)


def _left_out(total: int, shown: int) -> str:
    return f"showing the first {shown} of {total} rows" if total > shown else ""


def png_width(data: bytes) -> int:
    """Width in pixels from a PNG's header (0 if ``data`` is not a PNG)."""
    return int.from_bytes(data[16:20], "big") if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 else 0


def natural_key(path: Path | str) -> list[Any]:
    """Sort key that compares the digit runs of a name as numbers: ``top1 < top10 < top50 < top100 < top500``."""
    parts = re.split(r"(\d+)", str(path))
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts]


def _file_link(run: Path, path: Path) -> Markup:
    """``<a href>`` to a file of the run folder, by its path relative to the folder (followed only when clicked)."""
    from urllib.parse import quote

    relative = path.relative_to(run).as_posix()
    return Markup(f'<a href="{escape(quote(relative))}">{escape(relative)}</a>')


def _label(stem: str) -> str:
    return stem.replace("_", " ").replace("-", " ")


def _subtitle(config: Any, meta: Any) -> str:
    parts = []
    if isinstance(config, dict):
        for key in ("model", "method", "site", "dataset"):
            if key in config and _is_scalar(config[key]):
                parts.append(f"{key}: {config[key]}")
    if isinstance(meta, dict) and meta.get("time"):
        parts.append(f"run {meta['time']}")
    return " · ".join(parts)
