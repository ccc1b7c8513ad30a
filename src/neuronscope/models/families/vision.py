"""Vision-language wrappers. Their language model (``model.get_decoder()``) is adapted by its text family;
where the image tokens sit and their vision grid are resolved by :mod:`neuronscope.vision`."""

from neuronscope.models.spec import VisionFamily

FAMILIES = (
    VisionFamily("llava", ("llava",), notes="LLaVA-1.5: one square vision grid (24x24 at 336 px)"),
    VisionFamily("llava_next", ("llava_next",), notes="LLaVA-NeXT: any-res tiles plus newline tokens"),
    VisionFamily("qwen2_vl", ("qwen2_vl",), notes="Qwen2-VL: dynamic grid from image_grid_thw, 2x2 merge"),
    VisionFamily("qwen2_5_vl", ("qwen2_5_vl",), notes="Qwen2.5-VL: as Qwen2-VL"),
    VisionFamily("idefics3", ("idefics3", "smolvlm"), notes="Idefics3 / SmolVLM: pixel-shuffled tiles plus a global image"),
    VisionFamily(
        "instructblip",
        ("instructblip", "blip-2", "blip_2"),
        spatial_map=False,
        notes="InstructBLIP/BLIP-2: learned query tokens, no spatial map (no heatmaps)",
    ),
)
