"""A word-level fast tokenizer (whitespace and punctuation split, character offsets) small enough for the tiny
random models (vocabulary 64), and labelled toy data for ICL prompts."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from neuronscope.inputs.icl import LabelledDataset

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "Review:", "Sentiment:", "foo", "bar", "negative", "positive",
         "good", "bad", "fine", "awful", "great", "poor", "film", "plot", "story", "cast", "very", "not", "a", "the",
         "was", "is", "and", "dull", "fun", "sad", "bright", "dark"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {word: i for i, word in enumerate(WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def toy_dataset(n: int = 24) -> LabelledDataset:
    positive = ["good film", "great plot", "fun story", "bright cast", "very good", "a great film"]
    negative = ["bad film", "poor plot", "dull story", "dark cast", "very bad", "a poor film"]
    texts, labels = [], []
    for i in range(n):
        texts.append((negative if i % 2 == 0 else positive)[(i // 2) % 6] + (" and fun" if i % 4 == 1 else ""))
        labels.append(0 if i % 2 == 0 else 1)
    return LabelledDataset("toy", texts, labels, ["0", "1"], ["negative", "positive"])


POSITIVE, NEGATIVE = ["good", "great", "fun", "bright", "fine"], ["bad", "poor", "dull", "dark", "awful", "sad"]
NOUNS = ["film", "plot", "story", "cast"]


def save_icl_toy(root: Path) -> tuple[Path, Path]:
    """A tiny random Llama (2 layers of 4 heads) with the word tokenizer in ``root/model`` and a toy SST-2 file in
    ``root/data/icl/sst2_872.tsv``: (model folder, data folder)."""
    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=24, max_position_embeddings=256, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger weights: predictions that differ between prompts and heads that matter
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.5)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rows = [(f"a {a} {n}", label) for words, label in ((NEGATIVE, 0), (POSITIVE, 1)) for a in words for n in NOUNS]
    rows += [(f"the {n} was very {a}", 1) for a in POSITIVE for n in NOUNS]
    rows += [(f"the {n} was not {a}", 0) for a in NEGATIVE for n in NOUNS]
    random.Random(0).shuffle(rows)
    (root / "data" / "icl").mkdir(parents=True)
    (root / "data" / "icl" / "sst2_872.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{c}\n" for t, c in rows))
    return root / "model", root / "data"
