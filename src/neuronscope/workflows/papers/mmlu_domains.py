"""The QRNCA domain MCQA set built from MMLU subjects (Chen, Dejl & Toni 2024 build theirs the same way).

Domains and the MMLU subjects grouped into each (``DOMAINS``): biology, physics, chemistry, mathematics, geography,
computer science. Each question becomes several prompt variants (instruction wording × option order, the answer
letter moving with its option: :func:`neuronscope.inputs.mcqa.render_prompt_variants`). A question is kept when the
model answers it right in at least ``min_correct`` of its variants, reading the model's answer as the most likely
of the option-letter tokens at the end of the prompt; only the variants it answers right are attributed (the
paper attributes prompts the model gets right).

The MMLU CSVs (no header: question, A, B, C, D, answer letter) are read from ``../shared/data/mmlu``.

Example:
    >>> items = read_domain_items(per_domain=5, seed=0)                        # doctest: +SKIP
    >>> queries, screened = screen_queries(model, tokenizer, items)           # doctest: +SKIP
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuronscope.errors import InputError
from neuronscope.inputs.mcqa import MCQAItem, render_prompt_variants

DOMAINS: dict[str, tuple[str, ...]] = {
    "biology": ("college_biology", "high_school_biology"),
    "physics": ("college_physics", "high_school_physics", "conceptual_physics"),
    "chemistry": ("college_chemistry", "high_school_chemistry"),
    "mathematics": ("college_mathematics", "high_school_mathematics", "elementary_mathematics"),
    "geography": ("high_school_geography",),
    "computer_science": ("college_computer_science", "high_school_computer_science"),
}
LETTERS = "ABCD"


@dataclass(frozen=True)
class DomainQuery:
    """One kept question: its variants the model answers right, with their answer letters."""

    id: str
    domain: str
    prompts: tuple[str, ...]
    answer_letters: tuple[str, ...]
    n_variants_tried: int


def read_subject(path: Path, domain: str) -> list[MCQAItem]:
    """One MMLU CSV as items with ids ``<subject>-<row>``."""
    items = []
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle)):
            if len(row) != 6 or row[5].strip() not in LETTERS:
                raise InputError(f"{path}, row {number + 1}: expected question, A, B, C, D, answer letter")
            items.append(MCQAItem(id=f"{path.stem.removesuffix('_test')}-{number}", question=row[0].strip(),
                                  options=tuple(o.strip() for o in row[1:5]),
                                  answer_index=LETTERS.index(row[5].strip()), domain=domain))
    return items


def read_domain_items(
    per_domain: int, *, seed: int = 0, max_chars: int = 300, folder: Path | None = None,
    domains: Sequence[str] | None = None, skip: int = 0,
) -> list[MCQAItem]:
    """``per_domain`` questions per domain, drawn at random (seeded) from the domain's subjects.

    Args:
        per_domain: questions per domain.
        seed: seed of the draw.
        max_chars: skip questions whose question + options are longer (keeps CPU attribution affordable).
        folder: the MMLU folder: one ``<subject>_test.csv`` per subject (e.g. ``../shared/data/mmlu``).
        domains: a subset of ``DOMAINS`` (default all).
        skip: skip the first ``skip`` drawn questions of each domain (a disjoint split with the same seed).
    """
    if folder is None or not Path(folder).is_dir():
        raise InputError(f"MMLU folder {folder} not found: pass --data the folder that holds mmlu/ (one "
                         "<subject>_test.csv per subject), e.g. ../shared/data of a neuronscope checkout")
    folder = Path(folder)
    out = []
    for domain in domains or DOMAINS:
        pool = []
        for subject in DOMAINS[domain]:
            pool += read_subject(folder / f"{subject}_test.csv", domain)
        pool = [item for item in pool if len(item.question) + sum(map(len, item.options)) <= max_chars]
        random.Random(f"{seed}:{domain}").shuffle(pool)
        out += pool[skip:skip + per_domain]
    return out


def letter_token_ids(tokenizer: Any, leading_space: bool = True) -> list[int]:
    """Token ids of the option letters as the model would write them after ``Answer:`` (``" A"`` by default)."""
    ids = []
    for letter in LETTERS:
        encoded = tokenizer((" " if leading_space else "") + letter, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise InputError(f"option letter {letter!r} is not one token for this tokenizer ({encoded})")
        ids.append(int(encoded[0]))
    return ids


@torch.no_grad()
def answer_letters(model: nn.Module, tokenizer: Any, prompts: Sequence[str], leading_space: bool = True,
                   batch_size: int = 8) -> list[str]:
    """The model's answer to each prompt: the most likely option letter at the last position."""
    from neuronscope.inputs import encode_prompts

    letter_ids = torch.tensor(letter_token_ids(tokenizer, leading_space))
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_prompts(tokenizer, list(prompts[start:start + batch_size]), model=model)
        logits = model(**batch.inputs).logits[:, -1, letter_ids]
        out += [LETTERS[i] for i in logits.argmax(-1).tolist()]
    return out


def screen_queries(
    model: nn.Module, tokenizer: Any, items: Sequence[MCQAItem], *, n_variants: int = 3, min_correct: int = 2,
    seed: int = 0, leading_space: bool = True,
) -> tuple[list[DomainQuery], dict[str, Any]]:
    """Render ``n_variants`` prompts per item, keep items answered right in ``min_correct`` variants or more.

    Returns:
        ``(queries, stats)``: kept queries (only their correct variants) and accuracy statistics per domain.
    """
    candidates = [(item.id, str(item.domain), [(v.prompt, v.answer_letter)
                                               for v in render_prompt_variants(item, n_variants, seed=seed)])
                  for item in items]  # fmt: skip
    return screen_variants(model, tokenizer, candidates, min_correct=min_correct, leading_space=leading_space)


def screen_variants(
    model: nn.Module, tokenizer: Any, candidates: Sequence[tuple[str, str, Sequence[tuple[str, str]]]], *,
    min_correct: int = 2, leading_space: bool = True,
) -> tuple[list[DomainQuery], dict[str, Any]]:
    """Keep the questions the model answers right in ``min_correct`` prompt variants or more.

    Args:
        candidates: ``(id, domain, [(prompt, answer letter), ...])`` per question.

    Returns:
        ``(queries, stats)``: kept queries (only their correct variants) and accuracy statistics per domain.
    """
    flat = [prompt for _, _, variants in candidates for prompt, _ in variants]
    answers = answer_letters(model, tokenizer, flat, leading_space)
    queries, stats = [], {}
    cursor = 0
    for query_id, domain, variants in candidates:
        mine = answers[cursor:cursor + len(variants)]
        cursor += len(variants)
        right = [(prompt, letter) for (prompt, letter), a in zip(variants, mine, strict=True) if a == letter]
        domain_stats = stats.setdefault(domain, {"questions": 0, "variants": 0, "variants_right": 0,
                                                 "all_right": 0, "kept": 0})
        domain_stats["questions"] += 1
        domain_stats["variants"] += len(variants)
        domain_stats["variants_right"] += len(right)
        domain_stats["all_right"] += len(right) == len(variants)
        if len(right) >= min_correct:
            domain_stats["kept"] += 1
            queries.append(DomainQuery(query_id, domain, tuple(p for p, _ in right), tuple(a for _, a in right),
                                       len(variants)))
    for domain_stats in stats.values():
        domain_stats["variant_accuracy"] = domain_stats["variants_right"] / max(domain_stats["variants"], 1)
    return queries, stats
