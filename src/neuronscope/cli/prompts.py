"""Prompts and their targets for the commands that run a model on text (locate, intervene, evaluate).

Prompts come from a JSONL file (``--prompts``, records ``{"prompt", "target"?, "id"?}``) or from ``--prompt``
flags. A target is written as:

- ``prediction``: the model's own top-1 token at the last position (the default when no target is given);
- ``id:123``: a token id;
- ``word:text`` or plain ``text``: the first sub-token of the word, with a leading space unless
  ``--no-leading-space`` (QRNCA attributes to the bare letter ``A``, a word inside a sentence is usually `` A``).

Example:
    >>> parse_target("id:17"), parse_target("prediction"), parse_target(" Paris")
    (('id', 17), ('prediction', None), ('word', ' Paris'))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.inputs import Batch, encode_prompts
from neuronscope.inputs.targets import TargetSet, word_token

PREDICTION = "prediction"


@dataclass(frozen=True)
class PromptItem:
    """One prompt with its target spec (see the module docstring)."""

    id: str
    prompt: str
    target: str


def parse_target(spec: str) -> tuple[str, Any]:
    """``"prediction"`` → ``("prediction", None)``; ``"id:5"`` → ``("id", 5)``; else ``("word", text)``."""
    text = str(spec)
    if text.strip().lower() == PREDICTION:
        return PREDICTION, None
    if text.startswith("id:"):
        try:
            return "id", int(text[3:])
        except ValueError:
            raise InputError(f"target {text!r}: 'id:' must be followed by a token id, e.g. id:123") from None
    if text.startswith("word:"):
        text = text[5:]
    if not text.strip():
        raise InputError(f"target {spec!r} is empty; give a word, id:N or 'prediction'")
    return "word", text


def read_items(options: Mapping[str, Any], *, fallback: Mapping[str, Any] | None = None) -> list[PromptItem]:
    """Prompt items from ``prompts`` (JSONL) or ``prompt`` (+ ``target``) options; ``fallback`` (a run's config)
    is used when neither is given.

    ``target`` may hold one spec for every prompt or one per prompt; a JSONL record's own target wins over it.
    """
    from neuronscope.inputs import read_prompts_jsonl

    prompts_file, prompt_list = options.get("prompts"), list(options.get("prompt") or [])
    targets = list(options.get("target") or [])
    if not prompts_file and not prompt_list and fallback:
        prompts_file, prompt_list = fallback.get("prompts"), list(fallback.get("prompt") or [])
        targets = targets or list(fallback.get("target") or [])
    if prompts_file and prompt_list:
        raise InputError("give prompts either in a file (--prompts) or as --prompt flags, not both")
    if prompts_file:
        records = read_prompts_jsonl(Path(prompts_file))
        if len(targets) > 1:
            raise InputError("with --prompts, --target gives one default target for records without one")
        default = targets[0] if targets else PREDICTION
        items = [PromptItem(r.id, r.prompt, r.target if r.target is not None else default) for r in records]
    elif prompt_list:
        if len(targets) not in (0, 1, len(prompt_list)):
            raise InputError(f"{len(targets)} --target flags for {len(prompt_list)} --prompt flags: give one target "
                             "for all prompts or one per prompt")
        if not targets:
            targets = [PREDICTION]
        if len(targets) == 1:
            targets = targets * len(prompt_list)
        items = [PromptItem(str(i), p, t) for i, (p, t) in enumerate(zip(prompt_list, targets, strict=True))]
    else:
        raise InputError("no prompts given: pass --prompts FILE.jsonl or one or more --prompt TEXT")
    empty = [item.id for item in items if not item.prompt.strip()]
    if empty:
        raise InputError(f"prompts {', '.join(empty[:10])} are empty; give text to run the model on")
    return items


def resolve_targets(
    processor: Any, items: Sequence[PromptItem], vocab_size: int, leading_space: bool = True
) -> list[int | None]:
    """Token ids of the word / id targets (None for ``prediction``), checked up front: one problem per line."""
    out: list[int | None] = []
    problems = []
    for item in items:
        try:
            kind, value = parse_target(item.target)
            if kind == PREDICTION:
                out.append(None)
            elif kind == "id":
                if not 0 <= value < vocab_size:
                    raise InputError(f"token id {value} is outside the vocabulary (0..{vocab_size - 1})")
                out.append(int(value))
            else:
                out.append(word_token(processor, value, leading_space=leading_space))
        except NeuronscopeError as error:
            problems.append(f"prompt {item.id}: target {item.target!r}: {error}")
            out.append(None)
    if problems:
        raise InputError("\n".join(problems))
    return out


def encode(processor: Any, prompts: Sequence[str], model: nn.Module, chat: bool, device: torch.device) -> Batch:
    """Left-padded batch of ``prompts`` on ``device``."""
    return encode_prompts(processor, list(prompts), chat=chat, model=model).to(device)


@torch.no_grad()
def target_set(
    model: nn.Module, processor: Any, batch: Batch, token_ids: Sequence[int | None], labels: Sequence[str]
) -> TargetSet:
    """One target per row at the last position; rows with ``None`` get the model's own prediction."""
    ids = list(token_ids)
    if any(token is None for token in ids):
        predicted = model(**batch.inputs).logits[:, -1].argmax(-1).cpu().tolist()
        ids = [predicted[row] if token is None else token for row, token in enumerate(ids)]
    tokenizer = getattr(processor, "tokenizer", processor)
    n = len(ids)
    token_tensor = torch.tensor(ids, dtype=torch.long).reshape(n, 1)
    positions = torch.full((n, 1), batch.seq_len - 1, dtype=torch.long)
    names = [[tokenizer.decode([token]) if str(label).strip().lower() == PREDICTION else label]
             for token, label in zip(ids, labels, strict=True)]
    return TargetSet(token_tensor, positions, torch.ones(n, 1, dtype=torch.bool), names)
