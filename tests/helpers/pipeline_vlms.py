"""Tiny VLMs with a minimal chat template (the tiny processors ship none), built once per module."""

from __future__ import annotations

from helpers.tiny_vlms import TinyVLM, build_tiny_vlm


def with_chat_template(vlm: TinyVLM) -> TinyVLM:
    """Give the tiny processor a chat template: the image placeholder, the user text, then ``\\nA:``."""
    vlm.processor.chat_template = (
        "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}"
        + vlm.image_placeholder
        + "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}\nA:{% endif %}"
    )
    return vlm


def chat_vlm(family: str, seed: int = 0) -> TinyVLM:
    return with_chat_template(build_tiny_vlm(family, seed=seed))


def metaspace_tokenizer():
    """A tiny sentencepiece-like tokenizer: words start with a ``▁x`` token (space + first letter), then one
    token per character; decoding restores the spaces. First sub-tokens are thus easy to predict by hand."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.ascii_letters + string.digits + ".,'-"]
    vocab = {"<unk>": 0, "<pad>": 1, "<s>": 2, "</s>": 3, "▁": 4}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    merges = []
    for c in chars:
        vocab.setdefault("▁" + c, len(vocab))
        merges.append(("▁", c))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")
