"""The static KV cache of the greedy decoder (:mod:`.decode`), set up so that the host never waits for the device
between the prompt's forward and the recording of the decode step's CUDA graph: the host then queues the prompt,
runs the first step and records the graph while the device is still busy with the prompt.

Three reads of the device stood in that way, each replaced by what the host already knows:

- transformers' ``StaticLayer`` keeps its step counter on the host until its first update, then copies it to the
  device, which makes the host wait for every layer before it (32 times in a prompt's forward):
  :func:`new_static_cache` makes each counter on the device in advance (without a copy);
- a :class:`~neuronscope.trace.hooks.HookSet` learns each call's offset from the cache's length, a device tensor:
  the decoder tells it the length it drives the cache at (:func:`drive`, read by :func:`driven_length`);
- transformers builds the first decode step's mask with a host check of the padding:
  :func:`first_step_mask` builds the same boolean mask from the prompt's attention mask.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

_DRIVEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def new_static_cache(config: Any, max_cache_len: int, device: torch.device) -> Any:
    """transformers' ``StaticCache`` for ``config`` with every layer's step counter made on ``device`` (its value
    and dtype kept) where it is a host tensor that the layer's first update would copy there; a layer without
    such a counter (another transformers release) is left as it is."""
    from transformers import StaticCache

    cache = StaticCache(config=config, max_cache_len=max_cache_len)
    for layer in cache.layers:
        counter = getattr(layer, "cumulative_length", None)
        if isinstance(counter, torch.Tensor) and counter.device != device and not getattr(layer, "is_initialized",
                                                                                         True):
            layer.cumulative_length = torch.full_like(counter, int(counter), device=device)
    return cache


def drive(cache: Any, length: int) -> None:
    """Say that the next call on ``cache`` starts at position ``length`` (what the cache holds)."""
    try:
        _DRIVEN[cache] = length
    except TypeError:  # a cache that cannot be weakly referenced or hashed: its length is read from the device
        pass


def driven_length(cache: Any) -> int | None:
    """The length :func:`drive` last gave for ``cache`` (None: no decoder of ours drives it)."""
    try:
        return _DRIVEN.get(cache)
    except TypeError:
        return None


def first_step_mask(attention_mask: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, 1, 1, width]`` bool: the keys the first decode step of a left-padded prompt ``attention_mask
    [B, prompt]`` attends to in a static cache of ``width`` positions: the prompt's real tokens and the new one.
    What ``create_masks_for_generate`` returns for full-attention layers under ``sdpa`` (tested per family)."""
    rows, prompt = attention_mask.shape
    mask = torch.zeros(rows, 1, 1, width, dtype=torch.bool, device=attention_mask.device)
    mask[:, 0, 0, :prompt] = attention_mask.bool()
    mask[:, 0, 0, prompt] = True
    return mask
