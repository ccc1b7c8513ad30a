"""Throughput of the multimodal-neurons pipeline on a random-initialised LLaVA-1.5-7B shape (bf16, one GPU), next
to the reference approach (batch 1, one full re-forward per generated token). Not a test: run it by hand on a GPU.

    PYTHONPATH=src python tests/pipelines/benchmark_multimodal_gpu.py --out bench.json
    PYTHONPATH=src python tests/pipelines/benchmark_multimodal_gpu.py --tiny          # a CPU smoke run

Nothing is downloaded: the model is built from a config with random weights, the tokenizer is a synthetic word-level
one (32,000 words ``w0 ..``), and the "nouns" are the caption words whose number is a multiple of 5 (about one word
in five, like real captions), so both approaches score the same number of targets.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch


def build_processor(vocab: int, tiny: bool) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlavaProcessor, PreTrainedTokenizerFast

    try:
        from transformers import LlavaImageProcessorPil as ImageProcessor
    except ImportError:  # older transformers
        from transformers import CLIPImageProcessor as ImageProcessor
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    words = {token: i for i, token in enumerate(specials)}
    for number in range(vocab - len(specials)):
        words[f"w{number}"] = len(words)
    backend = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in [*specials, "<image>"]])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>")
    size = 48 if tiny else 336
    image_processor = ImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    template = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
                "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %} ASSISTANT:{% endif %}")
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8 if tiny else 14,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=template)


def build_model(processor: Any, tiny: bool, device: str, dtype: torch.dtype) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    if tiny:
        vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=48, patch_size=8, projection_dim=16)
        text = LlamaConfig(vocab_size=len(tokenizer) + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, pad_token_id=tokenizer.pad_token_id)
        seq = 36
    else:  # LLaVA-1.5-7B: CLIP ViT-L/14-336 + Vicuna-7B (Llama-2-7B shape)
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
        text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                           pad_token_id=tokenizer.pad_token_id, bos_token_id=1, eos_token_id=2)
        seq = 576
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id, image_seq_length=seq,
                         vision_feature_select_strategy="default", vision_feature_layer=-2,
                         projector_hidden_act="gelu")
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def images(n: int) -> list[Any]:
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    return [Image.fromarray((torch.rand(336, 448, 3, generator=generator) * 255).to(torch.uint8).numpy())
            for _ in range(n)]


def tagger(text: str) -> list[Any]:
    from neuronscope.pipelines.nouns import TaggedWord

    out, position = [], 0
    for word in text.split():
        start = text.index(word, position)
        position = start + len(word)
        noun = word.startswith("w") and word[1:].isdigit() and int(word[1:]) % 5 == 0
        out.append(TaggedWord(start, position, word, "NOUN" if noun else "X", word))
    return out


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ours(model: Any, processor: Any, pictures: list[Any], batch_size: int, max_new_tokens: int, top_k: int,
         device: str) -> dict[str, Any]:
    from neuronscope.pipelines.multimodal import find_multimodal_neurons

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    synchronise(device)
    start = time.perf_counter()
    result = find_multimodal_neurons(model, processor, pictures, tagger=tagger, top_k=top_k, batch_size=batch_size,
                                     max_new_tokens=max_new_tokens, progress=False, heatmaps=0)
    synchronise(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {"approach": f"neuronscope (batch {batch_size}, capture during generate)", "images": len(pictures),
            "seconds": round(seconds, 3), "images_per_second": round(len(pictures) / seconds, 3),
            "pairs": len(result.pairs), "peak_gib": None if peak is None else round(peak, 2)}


@torch.no_grad()
def reference(model: Any, processor: Any, pictures: list[Any], max_new_tokens: int, top_k: int,
              device: str) -> dict[str, Any]:
    """Batch 1; after generating, one full forward of the sequence per generated token, scoring every neuron for
    that token at its producing position (then keeping the nouns)."""
    from neuronscope.aggregate.select import sparse_top_k
    from neuronscope.attribute.contribution import contribution
    from neuronscope.attribute.targets import TargetSet
    from neuronscope.inputs import DEFAULT_CAPTION_PREFIX, Batch, encode_images, generate
    from neuronscope.pipelines.multimodal import to_model
    from neuronscope.pipelines.nouns import select_targets

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    synchronise(device)
    start = time.perf_counter()
    pairs = 0
    for picture in pictures:
        batch = to_model(encode_images(processor, [picture], "Describe the image in few words.",
                                       assistant_prefix=DEFAULT_CAPTION_PREFIX), model)
        generation = generate(model, processor, batch, max_new_tokens=max_new_tokens)
        ids = generation.tokens[0].tolist()
        if processor.tokenizer.eos_token_id in ids:
            ids = ids[:ids.index(processor.tokenizer.eos_token_id)]
        _, targets = select_targets(processor, ids, tagger=tagger)
        nouns = {t.step for t in targets}
        for step, token in enumerate(ids):
            length = generation.prompt_len + step
            inputs = {**batch.inputs, "input_ids": generation.sequences[:, :length],
                      "attention_mask": torch.ones(1, length, dtype=torch.long, device=generation.sequences.device)}
            one = TargetSet(torch.tensor([[token]]), torch.tensor([[length - 1]]), torch.ones(1, 1, dtype=torch.bool))
            scores = contribution(model, Batch(inputs, batch.texts, torch.tensor([length])), one).values[0, 0]
            if step in nouns:
                sparse_top_k(scores, top_k)
                pairs += 1
    synchronise(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {"approach": "reference (batch 1, one full re-forward per generated token)", "images": len(pictures),
            "seconds": round(seconds, 3), "images_per_second": round(len(pictures) / seconds, 3), "pairs": pairs,
            "peak_gib": None if peak is None else round(peak, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny CPU model (smoke run)")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--reference-images", type=int, default=4)
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=10_000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    processor = build_processor(200 if args.tiny else 32000, args.tiny)
    start = time.perf_counter()
    model = build_model(processor, args.tiny, device, dtype)
    built = time.perf_counter() - start
    pictures = images(args.images)
    runs = []
    # warm-up (kernels, allocator), not timed
    ours(model, processor, pictures[:2], 2, 4, args.top_k, device)
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        runs.append(ours(model, processor, pictures, batch_size, args.max_new_tokens, args.top_k, device))
        print(json.dumps(runs[-1]), flush=True)
    runs.append(reference(model, processor, pictures[:args.reference_images], args.max_new_tokens, args.top_k,
                          device))
    print(json.dumps(runs[-1]), flush=True)
    summary = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype),
               "model": "random LLaVA-1.5-7B shape" if not args.tiny else "tiny", "build_seconds": round(built, 1),
               "max_new_tokens": args.max_new_tokens, "top_k": args.top_k, "torch": torch.__version__,
               "runs": runs}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
