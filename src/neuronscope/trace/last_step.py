"""Many runs of a batch's last position under different interventions, with the prefix computed once.

The rows of a chunk are cut to their own width (leading columns that are padding in every row of the chunk are
dropped; explicit position ids keep the computation the same), so a condition receives a :class:`Chunk` that says
which batch rows run and by how much their positions moved.

An intervention that touches only the last position (a head ablated at ``"last"``, attention re-weighted at the
last query row) leaves every earlier position as it was. So the prefix (all positions but the last) is run once
with a KV cache, and each condition costs one cached step of one token per row; the cache is cropped back to the
prefix after each step. The result equals a full forward under the same intervention (up to float rounding): see
``tests/trace/test_last_step.py``.

Example:
    >>> conditions = {"clean": lambda chunk: contextlib.nullcontext(),
    ...               "ablated": lambda chunk: intervene(model, ablate_heads(model, [(20, 3)], positions="last"))}
    >>> logits = last_position_logits(model, batch, conditions, token_ids=torch.tensor([29856, 2753]))
    >>> logits["ablated"].shape                       # [B, 2]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.inputs.batch import Batch, to_model


@dataclass(frozen=True)
class Chunk:
    """The rows of one prefix run: ``rows [n]`` of the batch; position ``p`` of the batch is ``p - shift`` in it."""

    rows: torch.Tensor
    shift: int = 0


#: A condition: given the current :class:`Chunk`, a context manager to run the step under.
Condition = Callable[[Chunk], AbstractContextManager]


def cache_keyword(model: nn.Module) -> str:
    """The name under which this model's forward takes a KV cache (``cache`` from transformers 5.24 on, else
    ``past_key_values``)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(output: object) -> object:
    """The KV cache a forward returned (``output.cache`` from transformers 5.24 on, else ``past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


@torch.no_grad()
def last_position_logits(
    model: nn.Module,
    batch: Batch,
    conditions: Mapping[str, Condition],
    *,
    token_ids: torch.Tensor | None = None,
    log_softmax: bool = False,
    chunk_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Logits at the last position of every row under each condition (float32, on the CPU).

    Args:
        model: a text causal LM with a KV cache (full attention).
        batch: left-padded prompts (:func:`neuronscope.inputs.encode_prompts`), at least two positions long.
        conditions: name → :data:`Condition`; each must change only the last position.
        token_ids: ``[V']`` columns to keep (e.g. the label tokens); default the whole vocabulary.
        log_softmax: return log-probabilities over the whole vocabulary (then the ``token_ids`` columns).
        chunk_size: rows per prefix run (the cache of a chunk is held while its conditions run).

    Returns:
        name → ``[B, V']`` logits (or log-probabilities).

    Example:
        >>> out = last_position_logits(model, batch, {"clean": lambda chunk: contextlib.nullcontext()})
    """
    if batch.seq_len < 2:
        raise NeuronscopeError("last_position_logits needs prompts of at least two tokens")
    if chunk_size < 1:
        raise NeuronscopeError(f"chunk_size must be at least 1, got {chunk_size}")
    keyword = cache_keyword(model)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in conditions}
    for start in range(0, len(batch), chunk_size):
        rows = torch.arange(start, min(start + chunk_size, len(batch)))
        inputs = to_model(batch.select(rows), model).inputs
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        positions = inputs.get("position_ids")
        if positions is None:
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        shift = min(int(batch.pad_lengths[rows].min()), batch.seq_len - 2)  # columns that are padding in every row
        ids, mask, positions = ids[:, shift:], mask[:, shift:], positions[:, shift:]
        chunk = Chunk(rows, shift)
        prefix = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                       use_cache=True, logits_to_keep=1)
        cache = returned_cache(prefix)
        if cache is None or not hasattr(cache, "crop"):
            raise NeuronscopeError("the model returned no croppable KV cache; run full forwards instead")
        length = int(cache.get_seq_length())
        for name, condition in conditions.items():
            try:
                with condition(chunk):
                    step = model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:],
                                 use_cache=True, logits_to_keep=1, **{keyword: cache})
            finally:
                extra = int(cache.get_seq_length()) - length
                if extra:
                    cache.crop(-extra)  # a negative count removes that many tokens (every transformers release)
            if int(cache.get_seq_length()) != length:
                raise NeuronscopeError("the KV cache could not be cropped back to the prefix")
            logits = step.logits[:, -1].float()
            logits = logits.log_softmax(-1) if log_softmax else logits
            out[name].append((logits if token_ids is None else logits[:, token_ids.to(logits.device)]).cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}
