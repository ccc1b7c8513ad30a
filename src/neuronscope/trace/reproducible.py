"""Bit-identical repeated runs on a GPU: scaled-dot-product attention without cuDNN's kernel.

PyTorch's ``scaled_dot_product_attention`` may take cuDNN's kernel on recent NVIDIA GPUs. Measured on one H200
(torch 2.11, cuDNN's kernel enabled as by default, bf16, the LLaVA-1.5-7B shape, 4 images;
``benchmarks/probe_determinism.py``):

- a forward of the prompts is bit-identical from call to call;
- decode steps (one query against the cache) are not: repeated greedy captions of the same images part after 6 to
  19 tokens, transformers' own ``generate`` as much as :func:`neuronscope.trace.decode.greedy_generate`, and the
  kept contribution scores then differ too;
- with cuDNN's kernel turned off (sdpa then takes the flash, memory-efficient or math kernel) every call was
  bit-identical (``generate``, greedy decoding eager and from CUDA graphs, the streaming scores); a call of the
  multimodal pipeline took 363 and 404 ms in two processes against 348 ms with it (4-16 % more);
- the Mixtral and Qwen3-MoE shapes (4 layers, 4 prompts of 64 tokens, grouped key/value heads) were bit-identical
  from call to call either way.

:func:`reproducible` turns cuDNN's attention kernel off for a block of work and puts it back as it was; the
command line's ``--deterministic`` runs a whole workflow so, and every run's ``meta.json`` records the kernels'
switches (``sdpa_kernels``). Nothing else is changed; on a CPU it changes nothing.

Example:
    >>> with reproducible():
    ...     first = greedy_generate(model, processor, batch)
    ...     again = greedy_generate(model, processor, batch)      # the same tokens, bit for bit
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def reproducible(enabled: bool = True) -> Iterator[None]:
    """Within the block, scaled-dot-product attention never takes cuDNN's kernel (see the module docstring);
    the other kernels keep the switches they had. ``enabled=False``: leave everything as it is."""
    if not enabled:
        yield
        return
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
