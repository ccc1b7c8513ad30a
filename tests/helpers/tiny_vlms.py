"""Tiny random vision-language models and their real processor classes, built locally with no downloads.

Every builder returns a :class:`TinyVLM`: a random model of a few thousand parameters, the family's own
processor class (its PIL image processor, which needs no torchvision) and a character-level tokenizer built
with the ``tokenizers`` library that knows the family's special image tokens. Use them to test anything that
reads the inputs a processor produces and runs a forward pass.

Families: ``llava``, ``llava_next``, ``qwen2_vl``, ``qwen2_5_vl``, ``idefics3``, ``instructblip``.

Tiny numbers (documented so tests can check against them by hand):

- llava: CLIP tower 48 px, patch 8 -> 6x6 = 36 image tokens (CLS dropped, strategy "default").
- llava_next: CLIP tower 32 px, patch 8 -> 4x4 per tile; pinpoints [[32,64],[64,32],[64,64],[96,32],[32,96]].
- qwen2_vl / qwen2_5_vl: patch 4, merge 2 (one token per 8x8 px), pixel budget 64..4096 -> grids from 1x1.
- idefics3: tower 32 px, patch 4, scale factor 2 -> 4x4 = 16 tokens per tile; images resized to a longest
  edge of 64 then split into 32 px tiles (up to 2x2) plus the global image.
- instructblip: 4 learned query tokens (no spatial map).

Example::

    vlm = build_tiny_vlm("llava")
    batch = vlm.inputs([Image.new("RGB", (60, 40))])
    out = vlm.model(**batch)
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from tokenizers import AddedToken, Tokenizer, models
from transformers import (
    BatchFeature,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers import PreTrainedTokenizerFast as TokenizerClass

FAMILIES: tuple[str, ...] = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "instructblip")

_BASE_SPECIALS = ["<unk>", "<pad>", "<s>", "</s>"]


def char_tokenizer(special_tokens: Sequence[str] = (), **named_tokens: str) -> TokenizerClass:
    """A character-level fast tokenizer (printable ASCII + newline) with extra special tokens.

    Each character is one token (a BPE model with no merges), so token counts are easy to predict by hand.
    ``special_tokens`` become single, unsplittable special tokens in the given order, after the base ones
    (``<unk>``, ``<pad>``, ``<s>``, ``</s>``); ``named_tokens`` (e.g. ``boi_token="<start_of_image>"``) are added
    too and become the tokenizer's named attributes (``tok.boi_token``, ``tok.boi_token_id``), as processors
    expect of their real tokenizers.

    Example::

        tok = char_tokenizer(["<image>"])
        tok("a<image>b")["input_ids"]  # 3 tokens
    """
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(_BASE_SPECIALS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    wanted = list(special_tokens) + [t for t in named_tokens.values() if t not in special_tokens]
    specials = list(_BASE_SPECIALS) + [t for t in wanted if t not in _BASE_SPECIALS]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return TokenizerClass(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="left",
        **named_tokens,
    )


def _tiny_llama(vocab_size: int, pad_token_id: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=pad_token_id,
        bos_token_id=2,
        eos_token_id=3,
    )


def _tiny_clip_vision(image_size: int, patch_size: int) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=16,
    )


@dataclass
class TinyVLM:
    """A tiny random VLM with its processor.

    Attributes:
        family: ``config.model_type`` of the model.
        model: the random ``*ForConditionalGeneration`` model, in eval mode.
        processor: the family's real processor class (PIL image processor, local tokenizer).
        image_placeholder: the text that stands for one image in a prompt.
        numbers: the tiny sizes chosen for this family (patch size, tile size, ...), for hand-made oracles.
    """

    family: str
    model: PreTrainedModel
    processor: ProcessorMixin
    image_placeholder: str
    numbers: dict[str, Any] = field(default_factory=dict)
    nested_images: bool = False  # the processor takes images as a list per row (Idefics-style)

    @property
    def image_token_id(self) -> int:
        """Id of the token the processor repeats once per image feature."""
        return int(self.model.config.image_token_id)

    def prompt(self, n_images: int = 1, text: str = "Describe it.") -> str:
        """A prompt with ``n_images`` image placeholders followed by ``text``."""
        return self.image_placeholder * n_images + text

    def inputs(
        self,
        images: Sequence[Image.Image] | Sequence[Sequence[Image.Image]],
        texts: Sequence[str] | None = None,
    ) -> BatchFeature:
        """Processor output (PyTorch tensors) for one row per entry of ``images``.

        ``images`` is either a flat list (one image per row) or a list of lists (images per row). ``texts``
        defaults to one prompt per row with as many placeholders as that row has images; rows are
        left-padded to the same length.
        """
        per_row = [list(x) if isinstance(x, (list, tuple)) else [x] for x in images]
        if texts is None:
            texts = [self.prompt(len(row)) for row in per_row]
        flat = [im for row in per_row for im in row]
        kwargs: dict[str, Any] = {"padding": True, "return_tensors": "pt"}
        if self.family == "idefics3" or self.nested_images:
            return self.processor(text=list(texts), images=per_row, **kwargs)
        return self.processor(text=list(texts), images=flat, **kwargs)


def _finish(model: PreTrainedModel) -> PreTrainedModel:
    model.eval()
    return model


def tiny_llava(seed: int = 0, strategy: str = "default") -> TinyVLM:
    """Tiny LLaVA-1.5: CLIP 48 px / patch 8 (6x6 grid), Llama text model, ``LlavaImageProcessorPil``."""
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaImageProcessorPil,
        LlavaProcessor,
    )

    tok = char_tokenizer(["<image>"])
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}, do_pad=False
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=_tiny_clip_vision(48, 8),
        text_config=_tiny_llama(len(tok), tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=36 if strategy == "default" else 37,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = _finish(LlavaForConditionalGeneration(config))
    return TinyVLM(
        "llava",
        model,
        processor,
        "<image>",
        {"image_size": 48, "patch_size": 8, "grid": 6, "strategy": strategy},
    )


def tiny_llava_next(seed: int = 0) -> TinyVLM:
    """Tiny LLaVA-NeXT: CLIP 32 px / patch 8 (4x4 per tile), any-res pinpoints up to 96 px."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    pinpoints = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
    tok = char_tokenizer(["<image>"])
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    config = LlavaNextConfig(
        vision_config=_tiny_clip_vision(32, 8),
        text_config=_tiny_llama(len(tok), tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=16,
    )
    torch.manual_seed(seed)
    model = _finish(LlavaNextForConditionalGeneration(config))
    return TinyVLM(
        "llava_next",
        model,
        processor,
        "<image>",
        {"image_size": 32, "patch_size": 8, "grid": 4, "pinpoints": pinpoints},
    )


def _qwen_tokens() -> list[str]:
    return ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _tiny_qwen_text(vocab_size: int, pad_token_id: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
        "pad_token_id": pad_token_id,
        "bos_token_id": 2,
        "eos_token_id": 3,
    }


def _without_video_check(processor_class: type) -> type:
    """``processor_class`` accepting ``video_processor=None``.

    Qwen processors type-check their video processor against ``BaseVideoProcessor``, which transformers only
    defines when torchvision is installed; images alone need no video processor.
    """

    class ImageOnly(processor_class):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnly.__name__ = processor_class.__name__
    return ImageOnly


def _qwen_image_processor() -> Any:
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        patch_size=4, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 64, "longest_edge": 4096}
    )


def tiny_qwen2_vl(seed: int = 0) -> TinyVLM:
    """Tiny Qwen2-VL: patch 4, 2x2 merge (one token per 8x8 px), dynamic grid from ``image_grid_thw``."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    tok = char_tokenizer(_qwen_tokens())
    processor = _without_video_check(Qwen2VLProcessor)(
        image_processor=_qwen_image_processor(), tokenizer=tok, video_processor=None
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in _qwen_tokens()}
    config = Qwen2VLConfig(
        text_config=_tiny_qwen_text(len(tok), tok.pad_token_id),
        vision_config={
            "depth": 2,
            "embed_dim": 16,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 4,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = _finish(Qwen2VLForConditionalGeneration(config))
    return TinyVLM(
        "qwen2_vl",
        model,
        processor,
        "<|vision_start|><|image_pad|><|vision_end|>",
        {"patch_size": 4, "merge_size": 2},
    )


def tiny_qwen2_5_vl(seed: int = 0) -> TinyVLM:
    """Tiny Qwen2.5-VL: as Qwen2-VL, with a windowed-attention vision tower (window 16 px)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    tok = char_tokenizer(_qwen_tokens())
    processor = _without_video_check(Qwen2_5_VLProcessor)(
        image_processor=_qwen_image_processor(), tokenizer=tok, video_processor=None
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in _qwen_tokens()}
    config = Qwen2_5_VLConfig(
        text_config=_tiny_qwen_text(len(tok), tok.pad_token_id),
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": 32,
            "patch_size": 4,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 16,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = _finish(Qwen2_5_VLForConditionalGeneration(config))
    return TinyVLM(
        "qwen2_5_vl",
        model,
        processor,
        "<|vision_start|><|image_pad|><|vision_end|>",
        {"patch_size": 4, "merge_size": 2},
    )


def tiny_idefics3(seed: int = 0) -> TinyVLM:
    """Tiny Idefics3: 32 px tiles, patch 4, pixel shuffle x2 (4x4 = 16 tokens per tile), up to 2x2 tiles."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    markers = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = char_tokenizer(
        ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *markers]
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=16)
    config = Idefics3Config(
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 4,
        },
        text_config=_tiny_llama(len(tok), tok.pad_token_id),
        scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = _finish(Idefics3ForConditionalGeneration(config))
    return TinyVLM(
        "idefics3",
        model,
        processor,
        "<image>",
        {"tile_size": 32, "patch_size": 4, "scale_factor": 2, "grid": 4, "longest_edge": 64},
    )


def tiny_instructblip(seed: int = 0) -> TinyVLM:
    """Tiny InstructBLIP: 4 learned query tokens stand for the image (no spatial map)."""
    from transformers import (
        BlipImageProcessorPil,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
    )

    tok = char_tokenizer(["<image>"])
    qformer_tok = char_tokenizer()
    image_processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
    processor = InstructBlipProcessor(
        image_processor=image_processor, tokenizer=tok, qformer_tokenizer=qformer_tok, num_query_tokens=4
    )
    config = InstructBlipConfig(
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        qformer_config={
            "vocab_size": len(qformer_tok),
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "encoder_hidden_size": 16,
            "pad_token_id": qformer_tok.pad_token_id,
        },
        text_config=_tiny_llama(len(tok), tok.pad_token_id).to_dict(),
        num_query_tokens=4,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = _finish(InstructBlipForConditionalGeneration(config))
    return TinyVLM("instructblip", model, processor, "", {"num_query_tokens": 4})


_BUILDERS = {
    "llava": tiny_llava,
    "llava_next": tiny_llava_next,
    "qwen2_vl": tiny_qwen2_vl,
    "qwen2_5_vl": tiny_qwen2_5_vl,
    "idefics3": tiny_idefics3,
    "instructblip": tiny_instructblip,
}


def build_tiny_vlm(family: str, seed: int = 0) -> TinyVLM:
    """Build the tiny VLM of ``family`` (one of :data:`FAMILIES`) with a seeded random init."""
    if family not in _BUILDERS:
        raise ValueError(f"no tiny builder for {family!r}; choose one of {', '.join(FAMILIES)}")
    return _BUILDERS[family](seed=seed)


def gradient_image(width: int, height: int) -> Image.Image:
    """A deterministic RGB test image (red grows left to right, green top to bottom)."""
    xs = torch.linspace(0, 255, width).round().to(torch.uint8)
    ys = torch.linspace(0, 255, height).round().to(torch.uint8)
    arr = torch.stack(
        [
            xs[None, :].expand(height, width),
            ys[:, None].expand(height, width),
            torch.full((height, width), 128),
        ],
        dim=-1,
    ).to(torch.uint8)
    return Image.fromarray(arr.numpy(), mode="RGB")
