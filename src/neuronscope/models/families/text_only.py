"""Vision-language wrappers accepted for text-only scoring only (``get_adapter(model, text_only=True)``): their
image tokens have no layout reader yet, so heatmaps and patches refuse; the language model inside is adapted by
its text family as usual. Each entry says why there is no reader."""

VIDEO = "built for video frames (temporal grids, frame sampling): no image-layout reader yet"
UNMAPPED = "its processor's image-token layout has not been mapped yet"

TEXT_ONLY: dict[str, str] = {
    "apertus1p5": UNMAPPED, "cohere2_vision": UNMAPPED, "cohere_compass": UNMAPPED, "cosmos3_edge": UNMAPPED,
    "cosmos3_omni": "an omni model (image, video, audio): " + UNMAPPED, "deepseek_ocr2": UNMAPPED,
    "deepseek_vl": UNMAPPED, "deepseek_vl_hybrid": UNMAPPED, "diffusion_gemma": "a diffusion decoder: " + UNMAPPED,
    "exaone4_5": UNMAPPED, "fast_vlm": UNMAPPED, "glm46v": UNMAPPED, "glm4v": UNMAPPED, "glm_ocr": UNMAPPED,
    "glmga": UNMAPPED, "got_ocr2": "an OCR model whose image tokens are a 2-D crop grid: " + UNMAPPED,
    "granite4_vision": UNMAPPED, "granite_docling": UNMAPPED, "hunyuan_vl": UNMAPPED,
    "hyperclovax_vision_v2": UNMAPPED, "instructblipvideo": VIDEO, "lfm2_vl": UNMAPPED, "lfm3_vl": UNMAPPED,
    "lighton_ocr": UNMAPPED, "llava_next_video": VIDEO, "minicpm_ocr": UNMAPPED, "minicpmv4_6": UNMAPPED,
    "minicpmv4_7": UNMAPPED, "molmo2": UNMAPPED, "nemotron_h_omni": UNMAPPED, "ovis2": UNMAPPED,
    "paddleocr_vl": UNMAPPED, "perception_lm": UNMAPPED, "pi0": "a robot-action model: " + UNMAPPED,
    "qianfan_ocr": UNMAPPED, "qwen2_5_omni_thinker": "an omni model (audio and video too): " + UNMAPPED,
    "shieldgemma2": UNMAPPED, "unlimited_ocr": UNMAPPED, "video_llama_3": VIDEO, "video_llava": VIDEO,
    "vipllava": UNMAPPED, "emu3": "discrete VQ image tokens laid out with end-of-line tokens: " + UNMAPPED,
    "gemma4_unified": UNMAPPED, "llama4": "Llama-4's tiles plus a global image (its MoE language model is covered): "
    + UNMAPPED,
    "chameleon": "discrete VQ image tokens: " + UNMAPPED,
}
