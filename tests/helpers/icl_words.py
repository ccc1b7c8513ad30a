"""A word-level fast tokenizer (whitespace and punctuation split, character offsets) small enough for the tiny
random models (vocabulary 64), and labelled toy data for ICL prompts."""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

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
