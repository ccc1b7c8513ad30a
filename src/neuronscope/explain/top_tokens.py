"""Top tokens of a neuron: its value vector read through the unembedding, ``W_U w_i`` (DESIGN §3.1).

Computed neuron by neuron in chunks (``[chunk, V]`` at a time), so a large set never builds a neurons × vocabulary
table in full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from neuronscope.models.adapter import get_adapter
from neuronscope.models.moe.weights import value_vector
from neuronscope.results.base import JsonResult


@dataclass
class NeuronTokens(JsonResult):
    """For each neuron, its top-``k`` tokens (ids, strings, logit values), and optionally the bottom-``k``."""

    format: ClassVar[str] = "neuronscope.neuron_tokens"

    neurons: torch.Tensor  # [n, 2] (layer, index), or [n, 3] (layer, expert, index) for MoE models
    token_ids: torch.Tensor  # [n, k]
    values: torch.Tensor  # [n, k]
    tokens: list[list[str]]
    bottom_tokens: list[list[str]] | None = None

    def summary(self) -> str:
        return "\n".join(f"{':'.join(map(str, neuron))}  " + " ".join(repr(t) for t in tokens)
                         for neuron, tokens in zip(self.neurons.tolist(), self.tokens, strict=True))

    def rows(self) -> list[dict[str, Any]]:
        """One dict per neuron, for JSON/CSV."""
        out = []
        for r, neuron in enumerate(self.neurons.tolist()):
            layer, index = neuron[0], neuron[-1]
            row = {"layer": layer, **({"expert": neuron[1]} if len(neuron) == 3 else {}), "neuron": index,
                   "top_tokens": self.tokens[r],
                   "top_values": [round(float(v), 4) for v in self.values[r]]}
            if self.bottom_tokens is not None:
                row["bottom_tokens"] = self.bottom_tokens[r]
            out.append(row)
        return out


@torch.no_grad()
def top_tokens(
    model: nn.Module,
    neurons: torch.Tensor,
    tokenizer: Any = None,
    k: int = 10,
    bottom: bool = False,
    chunk_size: int = 256,
) -> NeuronTokens:
    """The ``k`` tokens each neuron's value vector promotes most: ``topk(W_U w_i)``.

    Args:
        model: the model.
        neurons: ``[n, 2]`` (layer, index) rows, or ``[n, 3]`` (layer, expert, index) rows of an MoE model.
        tokenizer: to turn ids into strings (or a processor with ``.tokenizer``); ids as strings if None.
        k: tokens per neuron.
        bottom: also the ``k`` most suppressed tokens.
        chunk_size: neurons per matmul.

    Example:
        >>> top_tokens(model, torch.tensor([[3, 17]]), tokenizer, k=5).tokens
        [[' red', ' Red', ...]]
    """
    adapter = get_adapter(model)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    neurons = neurons if neurons.dim() == 2 and neurons.shape[1] == 3 else neurons.reshape(-1, 2)
    unembed = adapter.unembedding()
    vectors = torch.stack([value_vector(adapter, row).to(unembed.device)
                           for row in neurons.tolist()]) if len(neurons) else unembed.new_zeros(0, 1)
    ids, vals, low_ids = [], [], []
    for start in range(0, len(neurons), chunk_size):
        logits = (vectors[start:start + chunk_size].to(unembed.dtype) @ unembed.T).float()  # [chunk, V]
        top = logits.topk(min(k, logits.shape[-1]), dim=-1)
        ids.append(top.indices.cpu())
        vals.append(top.values.cpu())
        if bottom:
            low_ids.append(logits.topk(min(k, logits.shape[-1]), dim=-1, largest=False).indices.cpu())
    token_ids = torch.cat(ids) if ids else torch.zeros(0, k, dtype=torch.long)
    values = torch.cat(vals) if vals else torch.zeros(0, k)

    def decode(rows: torch.Tensor) -> list[list[str]]:
        if tokenizer is None:
            return [[str(t) for t in row] for row in rows.tolist()]
        return [[tokenizer.decode([t]) for t in row] for row in rows.tolist()]

    bottom_tokens = decode(torch.cat(low_ids)) if bottom and low_ids else None
    return NeuronTokens(neurons, token_ids, values, decode(token_ids), bottom_tokens)
