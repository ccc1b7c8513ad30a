"""Prompts JSONL with optional targets: one `{"prompt": str, "target": str, "id": str|int, ...}` per line.

`prompt` is required; `target` (the continuation to attribute, e.g. " Paris") and `id` are optional; any other
fields are kept in `PromptRecord.extra` untouched (a pipeline may use them, e.g. "counterfactual").

Example:
    >>> records = read_prompts_jsonl("prompts.jsonl")  # doctest: +SKIP
    >>> records[0].prompt, records[0].target  # doctest: +SKIP
    ('The capital of France is', ' Paris')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuronscope.inputs.problems import ProblemLog, fail, get_record_id, get_string, load_jsonl


@dataclass(frozen=True)
class PromptRecord:
    """One prompt; `id` defaults to the line number; `extra` holds the record's other fields."""

    id: str
    prompt: str
    target: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_prompts_jsonl(path: str | Path, *, require_target: bool = False) -> list[PromptRecord]:
    """Read prompts (and targets) from a JSONL file, in file order.

    Args:
        path: the JSONL file.
        require_target: if True (default False), a record without "target" is a problem.

    Raises:
        InputError: listing every problem (invalid JSON with its line, missing or non-string fields,
            repeated ids, empty file), one line each.

    Example:
        >>> read_prompts_jsonl("prompts.jsonl", require_target=True)  # doctest: +SKIP
    """
    log = ProblemLog(path)
    records = load_jsonl(path, log)
    if not records and not log.problems:
        fail(path, "the file has no records; add one JSON object per line")
    prompts: list[PromptRecord] = []
    seen_ids: dict[str, str] = {}
    for line_number, record in records:
        where = f"line {line_number}"
        problems_before = len(log)
        prompt = get_string(record, "prompt", where, log)
        # A target may legitimately be whitespace-led (" Paris") but not empty.
        target = get_string(record, "target", where, log, required=require_target)
        record_id = get_record_id(record, str(line_number), where, log, seen_ids)
        if len(log) > problems_before or prompt is None or record_id is None:
            continue
        extra = {key: value for key, value in record.items() if key not in ("prompt", "target", "id")}
        prompts.append(PromptRecord(record_id, prompt, target, extra))
    log.raise_if_any()
    return prompts
