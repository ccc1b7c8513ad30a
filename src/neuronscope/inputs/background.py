"""Background prompts: prompts whose answers a neuron set (or an edit) should leave alone, in named groups.

A ``--background`` JSONL file is read like any prompts file (:func:`~.prompts.prompt_records`); a record's
``"group"`` field names its group (e.g. ``"same template"``, ``"other templates"``; default ``"background"``).
Without a file, :func:`default_background` gives a small built-in set of short English facts in several templates,
grouped against the target prompts: ``"same template"`` where a target prompt is an instance of the record's
template, ``"other templates"`` otherwise (a record equal to a target prompt is left out). Background answers are
the model's own next tokens.

Example:
    >>> records = default_background(["The capital of France is"])
    >>> sorted(background_groups(records))
    ['other templates', 'same template']
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from neuronscope.inputs.prompts import PromptRecord

SAME, OTHER, DEFAULT_GROUP = "same template", "other templates", "background"

#: (template, subjects): the built-in background, short facts an English language model completes.
DEFAULT_TEMPLATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("The capital of {} is", ("Japan", "Italy", "Egypt", "Canada")),
    ("The official language of {} is", ("Brazil", "Germany", "Mexico")),
    ("{} is located in the continent of", ("Kenya", "Peru", "Norway")),
    ("The currency of {} is the", ("Japan", "India", "Mexico")),
    ("The chemical symbol for {} is", ("gold", "iron", "sodium")),
    ("{} was developed by", ("Windows", "the iPhone", "Android")),
    ("{} is a city in the country of", ("Lyon", "Osaka", "Munich")),
    ("The opposite of {} is", ("hot", "up", "early")),
)


def matches_template(prompt: str, template: str) -> bool:
    """Whether ``prompt`` is ``template`` with some non-empty text in place of ``{}`` (spaces at the ends ignored).

    Example:
        >>> matches_template("The capital of France is", "The capital of {} is")
        True
    """
    head, _, tail = template.partition("{}")
    pattern = re.escape(head.strip()) + r"\s*\S.*?\s*" + re.escape(tail.strip())
    return re.fullmatch(pattern, prompt.strip(), flags=re.IGNORECASE) is not None


def default_background(target_prompts: Sequence[str]) -> list[PromptRecord]:
    """The built-in background (:data:`DEFAULT_TEMPLATES`), grouped against ``target_prompts`` (module docstring);
    targets are ``"prediction"`` (the model's own next token)."""
    targets = {prompt.strip() for prompt in target_prompts}
    records = []
    for template, subjects in DEFAULT_TEMPLATES:
        same = any(matches_template(prompt, template) for prompt in targets)
        for subject in subjects:
            prompt = template.format(subject)
            if subject[0].islower() and template.startswith("{}"):
                prompt = prompt[0].upper() + prompt[1:]
            if prompt in targets:
                continue
            records.append(PromptRecord(f"background-{len(records)}", prompt, "prediction",
                                        {"group": SAME if same else OTHER, "template": template}))
    return records


def background_groups(records: Sequence[PromptRecord]) -> dict[str, list[int]]:
    """Group name (a record's ``"group"``, default ``"background"``) -> the positions of its records, in first-seen
    order.

    Example:
        >>> background_groups([PromptRecord("a", "x", extra={"group": "g"}), PromptRecord("b", "y")])
        {'g': [0], 'background': [1]}
    """
    groups: dict[str, list[int]] = {}
    for number, record in enumerate(records):
        groups.setdefault(str(record.extra.get("group") or DEFAULT_GROUP), []).append(number)
    return groups
