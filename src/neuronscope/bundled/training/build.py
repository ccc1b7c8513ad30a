"""The bundled model's parts, built fresh: a word-level tokenizer with a chat template, the ``LlavaProcessor``, and
an initialised ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama).

Example:
    >>> processor = build_processor()
    >>> processor.image_token
    '<image>'
"""

from __future__ import annotations

from typing import Any

import torch

from neuronscope.bundled import knowledge, world
from neuronscope.bundled.training.config import TrainConfig

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
IMAGE_TOKEN = "<image>"

# LLaVA-1.5-style turns; no BOS in the template: the tokenizer's post-processor adds it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def build_tokenizer() -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over the world's vocabulary, with ``<image>`` and a chat template.

    Pre-tokenisation splits on whitespace and punctuation (``"3+5="`` -> ``3 + 5 =``); the post-processor
    prepends ``<s>``; unknown words map to ``<unk>``.
    """
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    splitter = pre_tokenizers.Whitespace()
    words: set[str] = set()
    for text in knowledge.vocabulary_texts():
        words.update(piece for piece, _ in splitter.pre_tokenize_str(text))
    words.update(["USER", "ASSISTANT", "SYSTEM", ":"])
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted(words - set(vocab)):
        vocab[word] = len(vocab)

    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = splitter
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        image_token=IMAGE_TOKEN,
        padding_side="left",
        model_max_length=256,
        chat_template=CHAT_TEMPLATE,
    )
    return tokenizer


def build_processor() -> Any:
    """A ``LlavaProcessor``: ``CLIPImageProcessorPil`` at 64 px plus the word-level tokenizer."""
    from transformers import LlavaProcessor

    try:  # the PIL/numpy backend: needs no torchvision
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    except ImportError:  # transformers < 5.20 has no separate PIL class
        from transformers import CLIPImageProcessor as CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": world.IMAGE_SIZE},
        crop_size={"height": world.IMAGE_SIZE, "width": world.IMAGE_SIZE},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=world.PATCH_SIZE,
        vision_feature_select_strategy="default",  # drop CLS: GRID_SIZE**2 image tokens, as in LLaVA-1.5
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def build_model(tokenizer: Any, config: TrainConfig) -> Any:
    """A freshly initialised ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama) for ``tokenizer``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=config.vision_hidden,
        intermediate_size=config.vision_intermediate,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.heads,
        image_size=world.IMAGE_SIZE,
        patch_size=world.PATCH_SIZE,
        projection_dim=config.vision_hidden,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden,
        intermediate_size=config.intermediate,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        hidden_act=config.hidden_act,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=world.GRID_SIZE**2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(config.seed)
    model = LlavaForConditionalGeneration(llava)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    model.generation_config.max_new_tokens = 16
    return model
