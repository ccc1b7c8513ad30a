"""Helpers of the CLI tests: a tiny random Llama with a word-level tokenizer saved to a folder, error checks,
and a hand computation of contribution scores."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from helpers.word_models import SPECIALS, WORDS, save_tiny_llama, word_tokenizer  # noqa: F401 (used by the CLI tests)


def assert_user_error(result, *fragments: str) -> list[str]:
    """Exit code 2, no traceback, an ``error:`` message containing ``fragments``; returns its lines."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    return lines


def load_tiny(folder: Path):
    model = LlamaForCausalLM.from_pretrained(folder).eval()
    return model, PreTrainedTokenizerFast.from_pretrained(folder)


def contribution_by_hand(model, tokenizer, prompt: str, token_id: int) -> torch.Tensor:
    """``a[l, i] · <W_down[:, i], W_U[t]>`` at the last position, with plain forward pre-hooks: ``[layers, d_ff]``."""
    captured = {}
    handles = [layer.mlp.down_proj.register_forward_pre_hook(
        lambda module, args, layer_index=index: captured.__setitem__(layer_index, args[0][0, -1].detach()))
        for index, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            model(**tokenizer(prompt, return_tensors="pt"))
    finally:
        for handle in handles:
            handle.remove()
    unembed = model.lm_head.weight[token_id]
    return torch.stack([captured[layer_index] * (layer.mlp.down_proj.weight.T @ unembed)
                        for layer_index, layer in enumerate(model.model.layers)]).detach()
