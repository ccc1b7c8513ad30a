"""Collect every problem in a user file, then raise one `InputError` that lists them all.

A reader never stops at the first bad record: it walks the whole file, adds one `Problem` per bad field, and
calls `ProblemLog.raise_if_any()` at the end. The error message has a header line and then one line per problem:

    <file>: <record>: field '<field>': <what is wrong>; <what to do>

`<record>` is `line 3` for JSONL, `record 2` for a JSON list, `record 'q1'` for a JSON object keyed by id.

Example:
    >>> log = ProblemLog("data.jsonl")
    >>> log.add("line 2", "prompt", "missing; add a non-empty string")
    >>> print(log.lines()[0])
    data.jsonl: line 2: field 'prompt': missing; add a non-empty string
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuronscope.errors import InputError

#: At most this many problem lines are printed; the header still gives the total.
MAX_LINES = 50


@dataclass(frozen=True)
class Problem:
    """One problem: which file, which record, which field, and what to do."""

    file: str
    record: str | None
    field: str | None
    message: str

    def line(self) -> str:
        parts = [self.file]
        if self.record is not None:
            parts.append(self.record)
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        parts.append(self.message)
        return ": ".join(parts)


class ProblemLog:
    """Accumulates `Problem`s for one file; `raise_if_any` raises a single `InputError` listing all of them."""

    def __init__(self, file: str | Path) -> None:
        self.file = str(file)
        self.problems: list[Problem] = []

    def add(self, record: str | None, field: str | None, message: str) -> None:
        self.problems.append(Problem(self.file, record, field, message))

    def __len__(self) -> int:
        return len(self.problems)

    def lines(self) -> list[str]:
        """One line per problem; JSONL problems ("line N") in line order, others in the order found."""
        return [problem.line() for problem in sorted(self.problems, key=_line_number)]

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        count = len(self.problems)
        lines = self.lines()
        if count == 1:  # one problem: one line that names the file, the record and the fix
            raise InputError(lines[0])
        header = f"{count} problem{'s' if count != 1 else ''} in {self.file}; fix {'them' if count != 1 else 'it'} and run again:"
        shown = lines[:MAX_LINES]
        if count > MAX_LINES:
            shown.append(f"... and {count - MAX_LINES} more")
        raise InputError("\n".join([header, *shown]))


def _line_number(problem: Problem) -> int:
    record = problem.record or ""
    if record.startswith("line ") and record[5:].isdigit():
        return int(record[5:])
    return 0


def fail(file: str | Path, message: str, record: str | None = None, field: str | None = None) -> None:
    """Raise an `InputError` for a single problem (a file-level problem such as 'empty file')."""
    log = ProblemLog(file)
    log.add(record, field, message)
    log.raise_if_any()


def read_text(path: str | Path) -> str:
    """The file's text; a missing, unreadable or empty file is an `InputError` saying so."""
    path = Path(path)
    if not path.exists():
        fail(path, "file not found; check the path")
    if path.is_dir():
        fail(path, "is a folder, expected a file; pass the file inside it")
    try:
        # utf-8-sig: files saved with a byte-order mark (common on Windows) read the same.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        fail(path, f"not UTF-8 text (byte {error.start}); save the file as UTF-8")
    except OSError as error:
        fail(path, f"cannot be read ({error.strerror}); check its permissions")
    if not text.strip():
        fail(path, "the file is empty; add at least one record")
    return text


def load_json(path: str | Path) -> Any:
    """Parse a JSON file; invalid JSON is an `InputError` naming the line and column."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        fail(path, f"invalid JSON ({error.msg}) at column {error.colno}; fix the syntax", record=f"line {error.lineno}")


def load_jsonl(path: str | Path, log: ProblemLog) -> list[tuple[int, dict[str, Any]]]:
    """Parse a JSONL file into `(line_number, object)` pairs (1-based lines; blank lines are ignored).

    Invalid JSON and lines that are not objects are added to `log` (the caller raises at the end).
    """
    text = read_text(path)
    records: list[tuple[int, dict[str, Any]]] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            log.add(f"line {line_number}", None, f"invalid JSON ({error.msg}) at column {error.colno}; "
                    "write one JSON object per line")
            continue
        if not isinstance(value, dict):
            log.add(f"line {line_number}", None, f"expected a JSON object {{...}}, got {type_name(value)}; "
                    "write one JSON object per line")
            continue
        records.append((line_number, value))
    return records


def type_name(value: Any) -> str:
    """JSON's name for a Python value's type: object, array, string, number, boolean, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def get_string(
    record: dict[str, Any],
    field: str,
    where: str,
    log: ProblemLog,
    *,
    required: bool = True,
    allow_empty: bool = False,
) -> str | None:
    """`record[field]` if it is a string; otherwise add a problem to `log` and return None."""
    if field not in record or record[field] is None:
        if required:
            log.add(where, field, "missing; add a string")
        return None
    value = record[field]
    if not isinstance(value, str):
        log.add(where, field, f"expected a string, got {type_name(value)}; write it in quotes")
        return None
    if not allow_empty and not value.strip():
        log.add(where, field, "is empty; write a non-empty string")
        return None
    return value


def get_record_id(
    record: dict[str, Any], default_id: str, where: str, log: ProblemLog, seen: dict[str, str]
) -> str | None:
    """The record's id (its "id" field, else `default_id`); a repeated id is a problem. `seen`: id -> where."""
    if "id" in record:
        value = record["id"]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            log.add(where, "id", f"expected a string or an integer, got {type_name(value)}")
            return None
        record_id = str(value)
    else:
        record_id = default_id
    if record_id in seen:
        log.add(where, "id", f"'{record_id}' repeats the id of {seen[record_id]}; make ids unique")
        return None
    seen[record_id] = where
    return record_id
