"""Multiple-choice QA readers: the qrneuron JSON format and a simple JSONL format, plus prompt variants.

qrneuron JSON (one query = several prompt variants of the same question, with the answer letter of each):

    {"q1": {"sentences": ["Question ... (A) ... Answer:", ...], "obj_label": ["A", "C", ...],
            "relation_name": "biology"}}

Simple JSONL (one question per line; options as a list or as a letter-keyed object; answer as a letter or a
0-based index; domain optional):

    {"question": "2 + 2 = ?", "options": ["3", "4"], "answer": "B", "domain": "maths"}
    {"question": "H2O is", "options": {"A": "water", "B": "salt"}, "answer": 0}

`render_prompt_variants` turns a simple item into QRNCA's prompt variants: instruction wordings × option orders,
the answer letter moving with its option, chosen deterministically from a seed.

Example:
    >>> item = MCQAItem(id="q", question="2 + 2 = ?", options=("3", "4"), answer_index=1, domain=None)
    >>> [v.answer_letter for v in render_prompt_variants(item, 2, seed=0)][0]
    'B'
"""

from __future__ import annotations

import itertools
import math
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuronscope.errors import InputError
from neuronscope.inputs.problems import (
    ProblemLog,
    fail,
    get_record_id,
    get_string,
    load_json,
    load_jsonl,
    type_name,
)

LETTERS = string.ascii_uppercase
_LETTER = re.compile(r"^[A-Z]$")
#: Up to this many (wording, order) pairs are listed and sampled exactly; beyond, pairs are drawn at random.
_ENUMERATE_UP_TO = 5040


@dataclass(frozen=True)
class QRNeuronQuery:
    """One qrneuron query: prompt variants and the option letter that answers each (same length)."""

    id: str
    prompts: tuple[str, ...]
    answer_letters: tuple[str, ...]
    relation: str


@dataclass(frozen=True)
class MCQAItem:
    """One multiple-choice question; `answer_index` is 0-based into `options`."""

    id: str
    question: str
    options: tuple[str, ...]
    answer_index: int
    domain: str | None

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer_index]


@dataclass(frozen=True)
class PromptVariant:
    """A rendered prompt; `order[j]` is the index in `item.options` shown at letter j."""

    prompt: str
    answer_letter: str
    template_index: int
    order: tuple[int, ...]


def read_qrneuron_mcqa(path: str | Path) -> list[QRNeuronQuery]:
    """Read a qrneuron MCQA JSON file into queries, in file order.

    Every problem (wrong types, missing fields, unequal lengths, labels that are not option letters) is
    collected and raised as one `InputError` with one line per problem.

    Example:
        >>> queries = read_qrneuron_mcqa("domain_mcqa.json")  # doctest: +SKIP
        >>> queries[0].prompts[0], queries[0].answer_letters[0]  # doctest: +SKIP
    """
    data = load_json(path)
    log = ProblemLog(path)
    if not isinstance(data, dict):
        fail(path, f"expected a JSON object {{id: {{...}}}} at the top, got {type_name(data)}; "
             "see the qrneuron format in neuronscope.inputs.mcqa")
    if not data:
        fail(path, "the object has no queries; add at least one")
    queries: list[QRNeuronQuery] = []
    for query_id, entry in data.items():
        where = f"record '{query_id}'"
        if not isinstance(entry, dict):
            log.add(where, None, f"expected an object with sentences, obj_label, relation_name, got {type_name(entry)}")
            continue
        prompts = _string_list(entry, "sentences", where, log)
        labels = _string_list(entry, "obj_label", where, log)
        relation = get_string(entry, "relation_name", where, log)
        if labels is not None:
            for position, label in enumerate(labels):
                if not _LETTER.match(label):
                    log.add(where, f"obj_label[{position}]", f"'{label}' is not an option letter; write one "
                            "capital letter such as \"A\"")
        if prompts is not None and labels is not None and len(prompts) != len(labels):
            log.add(where, "obj_label", f"has {len(labels)} labels for {len(prompts)} sentences; give one "
                    "answer letter per sentence")
        if prompts is None or labels is None or relation is None:
            continue
        queries.append(QRNeuronQuery(str(query_id), tuple(prompts), tuple(labels), relation))
    log.raise_if_any()
    return queries


def read_mcqa_jsonl(path: str | Path) -> list[MCQAItem]:
    """Read a simple MCQA JSONL file (see the module docstring) into items, in file order.

    `id` is taken from the record's "id" field when present, otherwise it is the line number as a string.

    Example:
        >>> items = read_mcqa_jsonl("questions.jsonl")  # doctest: +SKIP
        >>> items[0].answer_letter  # doctest: +SKIP
    """
    log = ProblemLog(path)
    records = load_jsonl(path, log)
    if not records and not log.problems:
        fail(path, "the file has no records; add one JSON object per line")
    items: list[MCQAItem] = []
    seen_ids: dict[str, str] = {}
    for line_number, record in records:
        where = f"line {line_number}"
        question = get_string(record, "question", where, log)
        options = _options(record, where, log)
        domain = get_string(record, "domain", where, log, required=False)
        answer_index = _answer(record, options, where, log)
        item_id = get_record_id(record, str(line_number), where, log, seen_ids)
        if question is None or options is None or answer_index is None or item_id is None:
            continue
        items.append(MCQAItem(item_id, question, tuple(options), answer_index, domain))
    log.raise_if_any()
    return items


#: Instruction wordings for `render_prompt_variants`; each must contain {question} and {options}.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "Answer the multiple-choice question with the letter of the correct option.\n"
    "Question: {question}\n{options}\nAnswer:",
    "{question}\n{options}\nThe correct option is",
    "Pick the right answer and reply with its letter only.\n{question}\n{options}\nLetter:",
)


def render_prompt_variants(
    item: MCQAItem,
    n_variants: int = 3,
    seed: int = 0,
    templates: tuple[str, ...] = DEFAULT_TEMPLATES,
) -> list[PromptVariant]:
    """`n_variants` distinct prompts for `item`: (wording, option order) pairs drawn without replacement.

    The first variant is always wording 0 with the original option order; the rest are drawn from all other
    pairs by a generator seeded with `(seed, item.id)`, so the same seed gives the same prompts on every
    machine. Options are shown as "A. text" lines; `answer_letter` is the letter the correct option got.

    Args:
        item: the question.
        n_variants: how many prompts (default 3, as in QRNCA); at most len(templates) × len(options)!.
        seed: seed of the draw (default 0).
        templates: wordings with `{question}` and `{options}` fields (default `DEFAULT_TEMPLATES`).

    Example:
        >>> item = MCQAItem(id="q", question="Sky?", options=("blue", "red"), answer_index=0, domain=None)
        >>> print(render_prompt_variants(item, 1)[0].prompt.splitlines()[-3:])
        ['A. blue', 'B. red', 'Answer:']
    """
    n_options = len(item.options)
    if n_options > len(LETTERS):
        raise InputError(f"question '{item.id}' has {n_options} options; at most {len(LETTERS)} are supported")
    for index, template in enumerate(templates):
        if "{question}" not in template or "{options}" not in template:
            raise InputError(f"prompt template {index} lacks {{question}} or {{options}}; add both fields")
    identity = tuple(range(n_options))
    total = len(templates) * math.factorial(n_options)
    if n_variants < 1 or n_variants > total:
        raise InputError(f"n_variants={n_variants} for question '{item.id}': choose 1..{total} "
                         f"({len(templates)} wordings × {n_options}! option orders)")
    rng = random.Random(f"{seed}:{item.id}")
    chosen = [(0, identity)]
    if total <= _ENUMERATE_UP_TO:
        others = [
            (template_index, order)
            for template_index in range(len(templates))
            for order in itertools.permutations(identity)
            if (template_index, order) != (0, identity)
        ]
        chosen += rng.sample(others, n_variants - 1)
    else:
        # Too many pairs to list (10 options: 3.6 million orders): draw until enough distinct ones.
        seen = set(chosen)
        while len(chosen) < n_variants:
            order = list(identity)
            rng.shuffle(order)
            pair = (rng.randrange(len(templates)), tuple(order))
            if pair not in seen:
                seen.add(pair)
                chosen.append(pair)
    variants = []
    for template_index, order in chosen:
        option_lines = "\n".join(f"{LETTERS[slot]}. {item.options[source]}" for slot, source in enumerate(order))
        try:
            prompt = templates[template_index].format(question=item.question, options=option_lines)
        except (KeyError, IndexError, ValueError) as error:
            raise InputError(f"prompt template {template_index} has a field other than {{question}} and "
                             f"{{options}} ({error}); write literal braces as {{{{ and }}}}") from None
        answer_letter = LETTERS[order.index(item.answer_index)]
        variants.append(PromptVariant(prompt, answer_letter, template_index, order))
    return variants


def _string_list(record: dict[str, Any], field: str, where: str, log: ProblemLog) -> list[str] | None:
    if field not in record:
        log.add(where, field, "missing; add a list of strings")
        return None
    value = record[field]
    if not isinstance(value, list):
        log.add(where, field, f"expected a list of strings, got {type_name(value)}; write it as [\"...\", ...]")
        return None
    if not value:
        log.add(where, field, "is an empty list; add at least one string")
        return None
    ok = True
    for position, element in enumerate(value):
        if not isinstance(element, str) or not element.strip():
            got = "an empty string" if isinstance(element, str) else type_name(element)
            log.add(where, f"{field}[{position}]", f"expected a non-empty string, got {got}")
            ok = False
    return value if ok else None


def _options(record: dict[str, Any], where: str, log: ProblemLog) -> list[str] | None:
    if "options" not in record:
        log.add(where, "options", "missing; add a list of option texts or an object {\"A\": ..., \"B\": ...}")
        return None
    value = record["options"]
    if isinstance(value, dict):
        keys = list(value.keys())
        expected = list(LETTERS[: len(keys)])
        if keys != expected:
            log.add(where, "options", f"keys {keys} must be consecutive letters {expected}; rename them")
            return None
        value = list(value.values())
    if not isinstance(value, list):
        log.add(where, "options", f"expected a list or a letter-keyed object, got {type_name(value)}")
        return None
    if len(value) < 2:
        log.add(where, "options", f"has {len(value)} option(s); give at least 2")
        return None
    if len(value) > len(LETTERS):
        log.add(where, "options", f"has {len(value)} options; at most {len(LETTERS)} are supported")
        return None
    ok = True
    for position, option in enumerate(value):
        if not isinstance(option, str) or not option.strip():
            got = "an empty string" if isinstance(option, str) else type_name(option)
            log.add(where, f"options[{position}]", f"expected a non-empty string, got {got}")
            ok = False
    return value if ok else None


def _answer(record: dict[str, Any], options: list[str] | None, where: str, log: ProblemLog) -> int | None:
    if "answer" not in record:
        log.add(where, "answer", "missing; add the correct option's letter (\"B\") or 0-based index (1)")
        return None
    value = record["answer"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        log.add(where, "answer", f"expected a letter or a 0-based index, got {type_name(value)}")
        return None
    if isinstance(value, str):
        if not _LETTER.match(value):
            log.add(where, "answer", f"'{value}' is not an option letter; write one capital letter such as \"B\"")
            return None
        index = LETTERS.index(value)
    else:
        index = value
    if options is not None and not 0 <= index < len(options):
        log.add(where, "answer", f"{value!r} points outside the {len(options)} options; use "
                f"{LETTERS[0]}..{LETTERS[len(options) - 1]} or 0..{len(options) - 1}")
        return None
    return index
