"""Caption and score in one pass: greedy generation that writes each step's neuron activations into preallocated
device buffers, then contribution scores of the chosen (row, step) targets with the top-k selected on the device.

The primitive under the multimodal-neurons pipeline (Pan et al.): the token generated at step ``k`` is produced by
the logits of the call that ran step ``k`` (the prompt's last position for ``k = 0``), so the site captured at the
last position of that call is exactly where its contribution is scored — no re-forward. What is different from
capturing with :func:`neuronscope.trace.capture`:

- per layer one buffer ``[batch, steps, d_ff]`` in the model's dtype on that layer's device, filled in place by
  one copy per layer and call (no per-call lists, clones or host work);
- scores are computed layer by layer for the chosen pairs only (``<w_i, u_t>`` of that layer for their tokens)
  and merged into a running top-k on the device (:class:`~neuronscope.attribute.selection.RunningTopK`); the
  ``[pairs, layers, d_ff]`` grid never exists and nothing dense reaches the host;
- one pinned asynchronous copy of the kept values and indices at the end;
- decoding by :func:`neuronscope.trace.decode.greedy_generate`: a static KV cache, and on a GPU each decode step
  replayed from one CUDA graph (the buffers are indexed by its device clock), the same tokens as
  ``model.generate``; or, when asked (``slots``) or when the batch's cache would not fit in the GPU's memory, by
  :func:`neuronscope.trace.slot_decode.slot_buffered_generate`: a cache of a few prompts, the others read in
  chunks inside the decode calls (memory bounded by the slots, not the batch), the same tokens again.

Example:
    >>> batch = encode_images(processor, images, assistant_prefix="An image of")
    >>> found = caption_contributions(model, processor, batch, max_new_tokens=20, top_k=10_000)
    >>> found.texts[0], found.values.shape            # caption of image 0, [pairs, 10000]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neuronscope.attribute.contribution import CONTRIBUTION_SITES, layer_projection
from neuronscope.attribute.selection import to_host, top_k_selector
from neuronscope.errors import InputError
from neuronscope.inputs import Batch, Generation
from neuronscope.models.adapter import get_adapter
from neuronscope.models.devices import on_device
from neuronscope.trace.slot_decode import buffered_decode

StepSelector = Callable[[Generation], Sequence[Sequence[int]]]


@dataclass
class CaptionContributions:
    """What :func:`caption_contributions` returns (all on the host).

    Attributes:
        generation: the greedy generation (``sequences``, ``prompt_len``, ``texts``).
        pairs: ``[n, 3]`` (row, step, token id) of every scored target; the token was produced at position
            ``prompt_len - 1 + step`` of ``sequences``.
        values: ``[n, k]`` the kept contribution scores, best first.
        flat_indices: ``[n, k]`` ``layer * d_ff + i``.
        n_layers, d_ff: the neuron grid.
    """

    generation: Generation
    pairs: torch.Tensor
    values: torch.Tensor
    flat_indices: torch.Tensor
    n_layers: int
    d_ff: int

    @property
    def texts(self) -> list[str]:
        return self.generation.texts

    def rows(self, row: int) -> torch.Tensor:
        """Indices into ``pairs`` / ``values`` of one image's targets."""
        return (self.pairs[:, 0] == row).nonzero()[:, 0]


def every_step(stop_ids: set[int]) -> StepSelector:
    """A selector: every generated step of a row until its first stop token (pad / end of sequence)."""

    def select(generation: Generation) -> list[list[int]]:
        out = []
        for tokens in generation.tokens.tolist():
            steps = []
            for step, token in enumerate(tokens):
                if token in stop_ids:
                    break
                steps.append(step)
            out.append(steps)
        return out

    return select


def _stop_ids(processor: Any) -> set[int]:
    tokenizer = getattr(processor, "tokenizer", processor)
    return {int(i) for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None}


def _pairs(generation: Generation, chosen: Sequence[Sequence[int]]) -> torch.Tensor:
    tokens = generation.tokens.cpu()
    rows = [(row, step, int(tokens[row, step])) for row, steps in enumerate(chosen) for step in steps
            if 0 <= step < tokens.shape[1]]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)


@torch.no_grad()
def caption_contributions(
    model: nn.Module,
    processor: Any,
    batch: Batch,
    *,
    max_new_tokens: int = 20,
    select: StepSelector | None = None,
    top_k: int = 10_000,
    site: str = "neuron",
    absolute: bool = False,
    pair_chunk: int = 256,
    slots: int | str | None = "auto",
    keep: bool = False,
    **generate_kwargs: Any,
) -> CaptionContributions:
    """Generate greedily while buffering the site at each step, then keep the top-k contributions of each target.

    Args:
        model: a vision-language model (or a causal LM).
        processor: its processor (decoding and stop tokens).
        batch: left-padded inputs, e.g. :func:`neuronscope.inputs.encode_images` with ``assistant_prefix``.
        max_new_tokens: caption length (the buffers hold this many steps).
        select: ``select(generation) -> steps per row`` to score (e.g. the first sub-token of each noun); default
            every step before the row's first stop token.
        top_k: neurons kept per target over all ``layers × d_ff`` (Pan et al. keep 10,000).
        site: ``"neuron"`` (default) or ``"act"``.
        absolute: rank by ``|score|``.
        pair_chunk: targets scored at once (memory ``pair_chunk × (top_k + d_ff)`` float32).
        slots: decode through a KV cache of this many prompts, the prompts read in chunks inside the decode calls
            (:mod:`neuronscope.trace.slot_decode`: memory bounded by the slots, not the batch, but slower);
            ``"auto"`` (default): batched while the batch's cache fits in the free GPU memory, else the slots that
            fit; None: batched. The same tokens and scores either way.
        keep: keep the batched decoding (its cache, buffers and decode step's CUDA graph) for the next call of
            the same shape, which replays it from its first step (:func:`neuronscope.trace.decode.buffered_generate`;
            for a loop over batches; :func:`~neuronscope.trace.decode.release_kept_decoding` frees it).
        generate_kwargs: ``min_new_tokens`` / ``suppress_tokens``; ``compile=True`` (the batched decoding's steps
            through the ``torch.compile``'d text decoder: :mod:`neuronscope.trace.compiled_decoder`); or any
            ``model.generate`` keyword (which then decodes instead of
            :func:`neuronscope.trace.decode.greedy_generate`'s static, CUDA-graph decoding).

    Returns:
        :class:`CaptionContributions`.
    """
    if site not in CONTRIBUTION_SITES:
        raise InputError(f"the contribution score is defined at sites {CONTRIBUTION_SITES}, not {site!r}")
    adapter = get_adapter(model)
    dtype = next(model.parameters()).dtype
    generation, steps = buffered_decode(model, processor, batch, {site: range(adapter.n_layers)}, max_new_tokens,
                                        slots=slots, dtype=dtype, keep=keep, **generate_kwargs)
    buffers = [steps.get(site, layer) for layer in range(adapter.n_layers)]
    chosen = (select or every_step(_stop_ids(processor)))(generation)
    pairs = _pairs(generation, chosen)
    device = adapter.unembedding().device
    k = min(top_k, adapter.n_layers * adapter.d_ff)
    values, indices = [], []
    for start in range(0, pairs.shape[0], pair_chunk):
        chunk = pairs[start:start + pair_chunk]
        unique, target_index = chunk[:, 2].unique(return_inverse=True)
        directions = adapter.unembedding()[on_device(unique, device)]
        top = top_k_selector(chunk.shape[0], k, adapter.d_ff, adapter.n_layers, device, absolute)
        # (flat row · steps + step, target) per device, one pinned copy each; per layer two index_selects, the
        # products' matrix product and one multiplication, written into the buffered top-k's slot where it has one
        # (fewer kernels and less host work than advanced indexing; the loop took ~11 ms of host time in a profiled
        # batch-5 call on a 7B; no gain of the whole call was measured beyond the drift)
        index: dict[torch.device, torch.Tensor] = {}
        slot = getattr(top, "slot", None)
        for layer in range(adapter.n_layers):
            here = buffers[layer].device
            if here not in index:
                flat = chunk[:, 0] * buffers[layer].shape[1] + chunk[:, 1]
                index[here] = on_device(torch.stack([flat, target_index]), here)
            flat_of, targets_of = index[here]
            acts = buffers[layer].view(-1, adapter.d_ff).index_select(0, flat_of)  # [p, d_ff]
            proj = layer_projection(adapter, layer, directions, False, here).T  # [m, d_ff]
            acts, proj = acts.to(proj.dtype), proj.index_select(0, targets_of)
            if slot is not None and proj.device == top.buffer.device:
                torch.mul(acts, proj, out=slot(layer))
            else:
                top.add(layer, acts * proj)
        values.append(top.values)
        indices.append(top.indices)
    if values:
        kept_values, kept_indices = to_host(torch.cat(values), torch.cat(indices))
    else:
        kept_values, kept_indices = torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
    generation = Generation(generation.sequences.cpu(), generation.prompt_len, generation.texts)
    return CaptionContributions(generation, pairs, kept_values, kept_indices, adapter.n_layers, adapter.d_ff)
