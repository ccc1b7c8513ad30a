"""Prompts JSONL with optional targets: one `{"prompt": str, "target": str, "id": str|int, ...}` per line.

`prompt` is required; `target` (the continuation to attribute, e.g. " Paris") and `id` are optional; any other
fields are kept in `PromptRecord.extra` untouched (a pipeline may use them, e.g. "counterfactual").

Example:
    >>> records = read_prompts_jsonl("prompts.jsonl")  # doctest: +SKIP
    >>> records[0].prompt, records[0].target  # doctest: +SKIP
    ('The capital of France is', ' Paris')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuronscope.errors import InputError
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


def prompt_records(
    prompts_file: str | Path | None = None,
    prompts: Sequence[str] = (),
    targets: Sequence[str] = (),
    *,
    default_target: str = "prediction",
) -> list[PromptRecord]:
    """Prompt records from a JSONL file or a list of prompts, each with a target spec (word, ``id:N`` or
    ``prediction``).

    ``targets`` holds one spec for every prompt or one per prompt; a JSONL record's own target wins over it.

    Raises:
        InputError: both or neither source given, a wrong number of targets, empty prompts (one line each).

    Example:
        >>> [r.target for r in prompt_records(prompts=["The capital of France is", "2 + 2 ="], targets=["Paris"])]
        ['Paris', 'Paris']
    """
    targets = list(targets)
    if prompts_file and prompts:
        raise InputError("give prompts either in a file (--prompts) or as --prompt flags, not both")
    if prompts_file:
        if len(targets) > 1:
            raise InputError("with --prompts, --target gives one default target for records without one")
        default = targets[0] if targets else default_target
        records = [PromptRecord(r.id, r.prompt, r.target if r.target is not None else default, r.extra)
                   for r in read_prompts_jsonl(Path(prompts_file))]
    elif prompts:
        if len(targets) not in (0, 1, len(prompts)):
            raise InputError(f"{len(targets)} --target flags for {len(prompts)} --prompt flags: give one target for "
                             "all prompts or one per prompt")
        targets = targets * len(prompts) if len(targets) == 1 else targets or [default_target] * len(prompts)
        records = [PromptRecord(str(i), text, spec) for i, (text, spec) in enumerate(zip(prompts, targets,
                                                                                          strict=True))]
    else:
        raise InputError("no prompts given: pass --prompts FILE.jsonl or one or more --prompt TEXT")
    empty = [record.id for record in records if not record.prompt.strip()]
    if empty:
        raise InputError(f"prompts {', '.join(empty[:10])} are empty; give text to run the model on")
    return records
