"""What the static greedy decoder (:mod:`neuronscope.trace.decode`) covers: :func:`static_decode_blocker` says why a
call is handed to ``model.generate`` instead (a search or logits processor it does not implement, inputs its decode
steps would need, a cache that is not one static length, a model over several devices)."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import nn

from neuronscope.inputs.batch import Batch
from neuronscope.models.decoding import PROMPT_ONLY_INPUTS, TEXT_INPUTS
from neuronscope.trace.last_step import cache_keyword

#: ``model.generate`` keywords this decoder implements itself (everything else falls back to ``generate``).
OWN_KEYWORDS = frozenset({"min_new_tokens", "suppress_tokens"})

#: generation-config fields whose non-default values add logits processors or change the search.
_SEARCH_FIELDS = ("num_beams", "num_beam_groups", "penalty_alpha", "repetition_penalty", "encoder_repetition_penalty",
                  "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids", "min_length",
                  "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
                  "begin_suppress_tokens", "sequence_bias", "exponential_decay_length_penalty", "renormalize_logits",
                  "guidance_scale", "watermarking_config", "stop_strings", "assistant_model", "prompt_lookup_num_tokens")


@functools.cache
def _defaults() -> Any:
    from transformers import GenerationConfig

    return GenerationConfig()


def static_decode_blocker(model: nn.Module, batch: Batch, generate_kwargs: dict[str, Any]) -> str | None:
    """Why :func:`greedy_generate` would hand this call to ``model.generate`` (None: it decodes itself)."""
    other = sorted(set(generate_kwargs) - OWN_KEYWORDS)
    if other:
        return f"generate keywords {other}"
    config = getattr(model, "generation_config", None)
    defaults = _defaults()
    for field in (name for name in _SEARCH_FIELDS if name not in OWN_KEYWORDS):
        if config is not None and getattr(config, field, None) != getattr(defaults, field, None):
            return f"generation_config.{field} = {getattr(config, field)!r}"
    extra = sorted(set(batch.inputs) - TEXT_INPUTS - PROMPT_ONLY_INPUTS)
    if extra:
        return f"inputs {extra} (their decode steps need more than text inputs)"
    if getattr(type(model), "create_masks_for_generate", None) is not None:
        return f"{type(model).__name__} builds its own generation masks"
    forward = inspect.signature(model.forward).parameters
    if not {"position_ids", "attention_mask", cache_keyword(model)} <= set(forward):
        return "the forward takes no position_ids, attention_mask or cache"
    if len({p.device for p in model.parameters()}) > 1:
        return "the model spans several devices"
    kinds = _cache_kinds(model)
    if kinds != {"StaticLayer"}:
        return f"cache layers {sorted(kinds)} (sliding-window, chunked or linear attention)"
    return None


def _cache_kinds(model: nn.Module) -> set[str]:
    """The layer kinds of the static cache transformers builds for ``model`` (built lazily: no tensors yet)."""
    from transformers import StaticCache

    return {type(layer).__name__ for layer in StaticCache(config=model.config, max_cache_len=1).layers}
