"""Helpers of the CLI tests: a tiny random Llama with a word-level tokenizer saved to a folder, error checks,
and a hand computation of contribution scores."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<unk>", "<pad>", "<s>", "</s>"]
WORDS = ("the capital of france is paris rome berlin madrid city country a an and red blue green cat dog "
         "sky grass colour animal answer A B C D question what which").split()


def word_tokenizer() -> PreTrainedTokenizerFast:
    """One token per whitespace-separated word (so targets and positions are easy to predict by hand)."""
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


def save_tiny_llama(folder: Path, seed: int = 0) -> Path:
    tokenizer = word_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=24, max_position_embeddings=64,
                         pad_token_id=1, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the default init, so that probabilities differ visibly
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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
