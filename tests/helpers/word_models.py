"""A tiny random Llama with a word-level tokenizer (one token per word), saved to a folder: targets and positions
are easy to predict by hand."""

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
