"""Tiny random vision-language models of the current families, each with its real processor class (PIL image
processors, a local character-level tokenizer), built locally with no downloads. See :mod:`helpers.tiny_vlms` for
the older families and the :class:`~helpers.tiny_vlms.TinyVLM` they all return.

Tiny numbers (so tests can reason by hand):

- paligemma: SigLIP 32 px / patch 8 -> 4x4 tokens.  gemma3: SigLIP 32 px / patch 4, pooled to 4x4.
- janus: SigLIP 32 px / patch 8 -> 4x4.
- mistral3: Pixtral patch 4, merge 2 (a token per 8x8 px), longest edge 48.  llava_pixtral: patch 8, no merge.
- internvl / aya_vision: 32 px tiles, patch 4, shuffle x2 -> 4x4 tokens per tile, 1..4 tiles plus a thumbnail.
- llava_onevision: SigLIP 16 px / patch 4 -> 4x4 per crop, pinpoints up to 48 px, anyres_max_2.
- qwen3_vl / qwen3_5 / qwen3_5_moe: patch 4, merge 2, as qwen2_vl.
- smolvlm: as idefics3 (32 px tiles, patch 4, shuffle x2), through SmolVLMProcessor.
- idefics2: 4 perceiver latents per image (no spatial map).
"""

from __future__ import annotations

from typing import Any

import torch
import transformers as T

from helpers.tiny_vlms import (
    TinyVLM,
    _finish,
    _qwen_tokens,
    _tiny_qwen_text,
    _without_video_check,
    char_tokenizer,
)


def _pixtral_processor_class() -> type:
    """The real ``PixtralProcessor``. Its module imports one helper from the torchvision image processor; where
    torchvision is not installed, that helper is taken from the PIL image processor module (the same function),
    so the processor class itself runs unchanged."""
    import importlib
    import sys
    import types

    from transformers.utils import is_torchvision_available

    name = "transformers.models.pixtral.image_processing_pixtral"
    if not is_torchvision_available() and name not in sys.modules:
        pil = importlib.import_module("transformers.models.pixtral.image_processing_pil_pixtral")
        stub = types.ModuleType(name)
        stub.get_resize_output_image_size = pil.get_resize_output_image_size
        sys.modules[name] = stub
    return importlib.import_module("transformers.models.pixtral.processing_pixtral").PixtralProcessor


def _smolvlm_processor_class() -> type:
    """The real ``SmolVLMProcessor``; it insists on ``num2words`` (used only to phrase video prompts), so where that
    package is missing a plain ``str`` stands in for it."""
    import importlib

    module = importlib.import_module("transformers.models.smolvlm.processing_smolvlm")
    if module.num2words is None:
        module.num2words = str
    return module.SmolVLMProcessor

FAMILIES = ("paligemma", "gemma3", "gemma4", "janus", "mistral3", "llava_pixtral", "internvl", "aya_vision",
            "llava_onevision", "qwen3_vl", "qwen3_5", "qwen3_5_moe", "smolvlm", "idefics2")
MOE_FAMILIES = ("qwen3_5_moe",)  # their language model's neurons are expert neurons (tests/attribute/test_moe_vlm.py)

_TEXT = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=4, max_position_embeddings=4096)


def _siglip(image_size: int, patch_size: int) -> dict[str, Any]:
    return dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                image_size=image_size, patch_size=patch_size)


def _text(model_type: str, tok, **extra) -> dict[str, Any]:
    return dict(model_type=model_type, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=2,
                eos_token_id=3, **_TEXT, **extra)


def tiny_paligemma(seed: int = 0) -> TinyVLM:
    tok = char_tokenizer(["<image>"])
    image_processor = T.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    image_processor.image_seq_length = 16
    processor = T.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    config = T.PaliGemmaConfig(vision_config=dict(_siglip(32, 8), projection_dim=16), text_config=_text("gemma", tok),
                               image_token_index=tok.convert_tokens_to_ids("<image>"), projection_dim=16)
    torch.manual_seed(seed)
    return TinyVLM("paligemma", _finish(T.PaliGemmaForConditionalGeneration(config)), processor, "<image>",
                   {"side": 4})


def tiny_gemma3(seed: int = 0) -> TinyVLM:
    tok = char_tokenizer([], boi_token="<start_of_image>", eoi_token="<end_of_image>",
                         image_token="<image_soft_token>")
    image_processor = T.Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    processor = T.Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=16)
    config = T.Gemma3Config(vision_config=_siglip(32, 4), text_config=_text("gemma3_text", tok),
                            mm_tokens_per_image=16, image_token_index=tok.image_token_id,
                            boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id)
    torch.manual_seed(seed)
    model = T.Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # initialised to zeros, which would make every image feature zero
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.5)
    return TinyVLM("gemma3", _finish(model), processor, "<start_of_image>",
                   {"side": 4}, nested_images=True)


def _accepting_none(processor_class: type, *names: str) -> type:
    """``processor_class`` accepting None for the sub-processors ``names`` (video, audio) that images do not need."""

    class ImagesOnly(processor_class):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument is None and argument_name in names:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImagesOnly.__name__ = processor_class.__name__
    return ImagesOnly


def tiny_gemma4(seed: int = 0) -> TinyVLM:
    tok = char_tokenizer([], boi_token="<start_of_image>", eoi_token="<end_of_image>",
                         image_token="<image_soft_token>", audio_token="<audio_soft_token>",
                         boa_token="<start_of_audio>", eoa_token="<end_of_audio>")
    image_processor = T.Gemma4ImageProcessorPil(patch_size=4, max_soft_tokens=70, pooling_kernel_size=3)
    processor = _accepting_none(T.Gemma4Processor, "video_processor", "feature_extractor")(
        image_processor=image_processor, tokenizer=tok, video_processor=None, feature_extractor=None,
        image_seq_length=70)
    text = _text("gemma4_text", tok, global_head_dim=8, hidden_size_per_layer_input=4,
                 layer_types=["sliding_attention", "full_attention"], sliding_window=4)
    text.update(vocab_size=len(tok) + 2, vocab_size_per_layer_input=len(tok) + 2)  # + the processor's video token
    text.pop("head_dim")
    text["head_dim"] = 4
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=8, patch_size=4, pooling_kernel_size=3,
                  position_embedding_size=64)
    config = T.Gemma4Config(text_config=text, vision_config=vision, audio_config=None,
                            image_token_id=tok.image_token_id, boi_token_id=tok.boi_token_id,
                            eoi_token_id=tok.eoi_token_id)
    torch.manual_seed(seed)
    return TinyVLM("gemma4", _finish(T.Gemma4ForConditionalGeneration(config)), processor, "<image_soft_token>",
                   {"kernel": 3}, nested_images=True)


def tiny_mistral3(seed: int = 0) -> TinyVLM:
    tok = char_tokenizer(["[IMG]", "[IMG_BREAK]", "[IMG_END]"])
    image_processor = T.PixtralImageProcessorPil(size={"longest_edge": 48}, patch_size={"height": 8, "width": 8})
    processor = _pixtral_processor_class()(image_processor=image_processor, tokenizer=tok, patch_size=4,
                                   spatial_merge_size=2, image_token="[IMG]", image_break_token="[IMG_BREAK]",
                                   image_end_token="[IMG_END]")
    vision = dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, head_dim=8, image_size=48, patch_size=4)
    config = T.Mistral3Config(vision_config=vision, text_config=_text("mistral", tok), spatial_merge_size=2,
                              image_token_index=tok.convert_tokens_to_ids("[IMG]"), vision_feature_layer=-1)
    torch.manual_seed(seed)
    return TinyVLM("mistral3", _finish(T.Mistral3ForConditionalGeneration(config)), processor, "[IMG]",
                   {"cell": 8})


def tiny_llava_pixtral(seed: int = 0) -> TinyVLM:
    tok = char_tokenizer(["[IMG]", "[IMG_BREAK]", "[IMG_END]"])
    image_processor = T.PixtralImageProcessorPil(size={"longest_edge": 48}, patch_size={"height": 8, "width": 8})
    processor = _pixtral_processor_class()(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                   spatial_merge_size=1, image_token="[IMG]", image_break_token="[IMG_BREAK]",
                                   image_end_token="[IMG_END]")
    vision = dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, head_dim=8, image_size=48, patch_size=8)
    config = T.LlavaConfig(vision_config=vision, text_config=_text("mistral", tok),
                           image_token_index=tok.convert_tokens_to_ids("[IMG]"), vision_feature_layer=-1,
                           vision_feature_select_strategy="full")
    torch.manual_seed(seed)
    vlm = TinyVLM("llava", _finish(T.LlavaForConditionalGeneration(config)), processor, "[IMG]", {"cell": 8})
    return vlm


def _got_ocr2(tile: int, max_patches: int = 4) -> Any:
    return T.GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True, min_patches=1,
                                      max_patches=max_patches)


def tiny_internvl(seed: int = 0) -> TinyVLM:
    tok = char_tokenizer([], start_image_token="<img>", end_image_token="</img>", context_image_token="<IMG_CONTEXT>",
                         video_token="<video>")
    processor = _without_video_check(T.InternVLProcessor)(image_processor=_got_ocr2(32), tokenizer=tok,
                                                          video_processor=None, image_seq_length=16)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=[32, 32], patch_size=[4, 4])
    config = T.InternVLConfig(vision_config=vision, text_config=_text("qwen2", tok),
                              image_token_id=tok.context_image_token_id, downsample_ratio=0.5,
                              vision_feature_layer=-1)
    torch.manual_seed(seed)
    return TinyVLM("internvl", _finish(T.InternVLForConditionalGeneration(config)), processor, "<IMG_CONTEXT>",
                   {"side": 4, "tile": 32})


def tiny_aya_vision(seed: int = 0) -> TinyVLM:
    specials = dict(start_of_img_token="<|START_OF_IMG|>", end_of_img_token="<|END_OF_IMG|>",
                    img_patch_token="<|IMG_PATCH|>", img_line_break_token="<|IMG_LINE_BREAK|>",
                    tile_token="TILE", tile_global_token="TILE_GLOBAL")
    tok = char_tokenizer(list(specials.values()) + ["<image>"])
    processor = T.AyaVisionProcessor(image_processor=_got_ocr2(32), tokenizer=tok, patch_size=4,
                                     img_size=32, downsample_factor=2, **specials)
    config = T.AyaVisionConfig(vision_config=dict(_siglip(32, 4), model_type="siglip_vision_model"),
                               text_config=_text("cohere2", tok), downsample_factor=2,
                               image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"), vision_feature_layer=-1)
    torch.manual_seed(seed)
    return TinyVLM("aya_vision", _finish(T.AyaVisionForConditionalGeneration(config)), processor, "<image>",
                   {"side": 4, "tile": 32})


def tiny_llava_onevision(seed: int = 0) -> TinyVLM:
    pinpoints = [[16, 32], [32, 16], [32, 32], [48, 16], [16, 48], [48, 48]]
    tok = char_tokenizer(["<image>", "<video>"])
    image_processor = T.LlavaOnevisionImageProcessorPil(size={"height": 16, "width": 16},
                                                        image_grid_pinpoints=pinpoints)
    processor = _without_video_check(T.LlavaOnevisionProcessor)(
        image_processor=image_processor, tokenizer=tok, video_processor=None, num_image_tokens=16,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_2")
    config = T.LlavaOnevisionConfig(vision_config=dict(_siglip(16, 4), model_type="siglip_vision_model"),
                                    text_config=_text("qwen2", tok), image_grid_pinpoints=pinpoints,
                                    image_token_index=tok.convert_tokens_to_ids("<image>"),
                                    video_token_index=tok.convert_tokens_to_ids("<video>"),
                                    vision_feature_select_strategy="full", vision_feature_layer=-1,
                                    vision_aspect_ratio="anyres_max_2")
    torch.manual_seed(seed)
    return TinyVLM("llava_onevision", _finish(T.LlavaOnevisionForConditionalGeneration(config)), processor,
                   "<image>", {"grid": 4, "pinpoints": pinpoints})


def _qwen3(family: str, seed: int) -> TinyVLM:
    tok = char_tokenizer(_qwen_tokens())
    from helpers.tiny_vlms import _qwen_image_processor

    processor = _without_video_check(T.Qwen3VLProcessor)(image_processor=_qwen_image_processor(), tokenizer=tok,
                                                          video_processor=None)
    ids = {t: tok.convert_tokens_to_ids(t) for t in _qwen_tokens()}
    vision = dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                  deepstack_visual_indexes=[0])
    text = _tiny_qwen_text(len(tok), tok.pad_token_id)
    text.update(hidden_size=16, intermediate_size=24, head_dim=4,
                rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 0], "rope_theta": 10000.0})
    if family in ("qwen3_5", "qwen3_5_moe"):
        text.update(layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                    linear_num_value_heads=2, linear_key_head_dim=4, linear_value_head_dim=4,
                    linear_conv_kernel_dim=2)
        if family == "qwen3_5_moe":  # the MoE language model: 4 routed experts (top-2) and a gated shared one
            text.update(moe_intermediate_size=8, shared_expert_intermediate_size=12, num_experts=4,
                        num_experts_per_tok=2)
        vision.pop("deepstack_visual_indexes")
        config_class, model_class = ((T.Qwen3_5Config, T.Qwen3_5ForConditionalGeneration) if family == "qwen3_5"
                                     else (T.Qwen3_5MoeConfig, T.Qwen3_5MoeForConditionalGeneration))
        config = config_class(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"])
    else:
        config = T.Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                                 video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                                 vision_end_token_id=ids["<|vision_end|>"])
        model_class = T.Qwen3VLForConditionalGeneration
    torch.manual_seed(seed)
    return TinyVLM(family, _finish(model_class(config)), processor, "<|vision_start|><|image_pad|><|vision_end|>",
                   {"patch_size": 4, "merge_size": 2})


def tiny_qwen3_vl(seed: int = 0) -> TinyVLM:
    return _qwen3("qwen3_vl", seed)


def tiny_qwen3_5(seed: int = 0) -> TinyVLM:
    return _qwen3("qwen3_5", seed)


def tiny_qwen3_5_moe(seed: int = 0) -> TinyVLM:
    return _qwen3("qwen3_5_moe", seed)


def tiny_smolvlm(seed: int = 0) -> TinyVLM:
    markers = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = char_tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *markers],
                         fake_image_token="<fake_token_around_image>", image_token="<image>",
                         end_of_utterance_token="<end_of_utterance>", global_image_token="<global-img>")
    image_processor = T.SmolVLMImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                                 do_image_splitting=True)
    processor = _without_video_check(_smolvlm_processor_class())(image_processor=image_processor, tokenizer=tok,
                                                         video_processor=None, image_seq_len=16)
    config = T.SmolVLMConfig(vision_config=dict(_siglip(32, 4)), text_config=_text("llama", tok), scale_factor=2,
                             image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return TinyVLM("smolvlm", _finish(T.SmolVLMForConditionalGeneration(config)), processor, "<image>",
                   {"side": 4, "tile": 32}, nested_images=True)


def tiny_idefics2(seed: int = 0) -> TinyVLM:
    tok = char_tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>"])
    image_processor = T.Idefics2ImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 32},
                                                  do_image_splitting=False)
    processor = T.Idefics2Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=4)
    config = T.Idefics2Config(vision_config=_siglip(32, 8), text_config=_text("mistral", tok),
                              perceiver_config=dict(hidden_size=16, resampler_n_latents=4, resampler_depth=1,
                                                    resampler_n_heads=2, resampler_head_dim=8, num_key_value_heads=2),
                              image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    return TinyVLM("idefics2", _finish(T.Idefics2ForConditionalGeneration(config)), processor, "<image>",
                   {"latents": 4}, nested_images=True)


def tiny_janus(seed: int = 0) -> TinyVLM:
    tok = char_tokenizer(["<image_placeholder>", "<begin_of_image>", "<end_of_image>"],
                         image_token="<image_placeholder>", boi_token="<begin_of_image>", eoi_token="<end_of_image>")
    image_processor = T.JanusImageProcessorPil(size={"height": 32, "width": 32})
    processor = T.JanusProcessor(image_processor=image_processor, tokenizer=tok, num_image_tokens=16,
                                 use_default_system_prompt=False)
    config = T.JanusConfig(text_config=_text("llama", tok),
                           vision_config=dict(_siglip(32, 8), projection_dim=16, depth=1),
                           vq_config=dict(embed_dim=8, num_embeddings=32, latent_channels=32, base_channels=32,
                                          channel_multiplier=[1, 1], num_res_blocks=1, projection_dim=16,
                                          image_token_embed_dim=16, num_patches=4, resolution=32),
                           image_token_id=tok.image_token_id)
    torch.manual_seed(seed)
    return TinyVLM("janus", _finish(T.JanusForConditionalGeneration(config)), processor, "<image_placeholder>",
                   {"side": 4})


BUILDERS = {name: globals()[f"tiny_{name}"] for name in FAMILIES}


def build_current_vlm(family: str, seed: int = 0) -> TinyVLM:
    """The tiny VLM of ``family`` (one of :data:`FAMILIES`)."""
    return BUILDERS[family](seed=seed)
