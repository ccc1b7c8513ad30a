"""Throughput of the multimodal-neurons pipeline (caption → targets → contribution scores → top-k) on a random
LLaVA-1.5-7B-shaped model in bf16, against the reference approach; prints JSON.

Model: CLIP ViT-L/14 at 336 px (24 layers, width 1024; 576 image tokens) + a 2-layer GELU projector + a Llama-2-7B
language model (32 layers, d = 4096, d_ff = 11008, V = 32000), random weights built on the GPU (no download).
Processor: the real ``LlavaProcessor`` (CLIP image processor + a word-level tokenizer built here).

- ours: ``pipelines.multimodal.caption_and_score``: batched greedy generation with a KV cache, the neuron site of
  every layer captured at each generated step during generation, contribution scores of every target from
  those activations (``W_out^T u_t`` for the targets only) and the top-10,000 per (image, target).
- reference (Pan et al.'s released code, as described in DESIGN §3.1): batch 1, one full forward of the whole
  sequence per generated token (no cache), then one more forward per target to read its activations. Its
  d_ff × V table per layer (≈22 GB in fp16) is NOT built here — that would only make it slower.

Every word of a caption is taken as a target (random weights produce no real nouns), at most ``--targets``.

    python benchmarks/bench_multimodal.py --images 16 --batch 8 --tokens 20       # CUDA, bf16
    python benchmarks/bench_multimodal.py --tiny                                  # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import transformers as T
from PIL import Image
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from neuronscope.attribute.contribution import contribution
from neuronscope.inputs.targets import TargetSet
from neuronscope.inputs import encode_images
from neuronscope.pipelines.multimodal import caption_and_score
from neuronscope.pipelines.nouns import TaggedWord

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% else %}"
    "ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build(tiny: bool, device: str, dtype: torch.dtype) -> tuple[torch.nn.Module, T.LlavaProcessor]:
    vocab = 256 if tiny else 32000
    words = ["<unk>", "<pad>", "<s>", "</s>", "<image>"] + [f"w{i}" for i in range(vocab - 5)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in words[:5]])
    tokenizer = T.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                          bos_token="<s>", eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    image_size, patch = (28, 14) if tiny else (336, 14)
    image_processor = T.LlavaImageProcessorPil(size={"shortest_edge": image_size}, do_pad=False,
                                               crop_size={"height": image_size, "width": image_size})
    processor = T.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                                 patch_size=patch, vision_feature_select_strategy="default",
                                 num_additional_image_tokens=1)
    if tiny:
        text = T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             vocab_size=vocab)
        vision = T.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=image_size, patch_size=patch)
    else:
        text = T.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                             vocab_size=vocab, max_position_embeddings=4096)
        vision = T.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                    num_attention_heads=16, image_size=image_size, patch_size=patch,
                                    projection_dim=768)
    config = T.LlavaConfig(text_config=text, vision_config=vision, image_token_index=4, pad_token_id=1,
                           image_seq_length=(image_size // patch) ** 2, vision_feature_layer=-2)
    torch.manual_seed(0)
    with torch.device(device):
        model = T.LlavaForConditionalGeneration(config).to(dtype).eval()
    model.generation_config.suppress_tokens = [4]  # random weights must not generate the image token
    return model, processor


def every_word(text: str) -> list[TaggedWord]:
    out, start = [], 0
    for word in text.split():
        start = text.index(word, start)
        out.append(TaggedWord(start, start + len(word), word, "NOUN", word))
        start += len(word)
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=20, help="caption length (max new tokens)")
    parser.add_argument("--targets", type=int, default=3, help="targets per caption")
    parser.add_argument("--reference-images", type=int, default=2)
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    model, processor = build(args.tiny, device, dtype)
    generator = torch.Generator().manual_seed(0)
    size = 28 if args.tiny else 336
    images = [Image.fromarray(torch.randint(0, 255, (size, size, 3), generator=generator, dtype=torch.uint8).numpy())
              for _ in range(args.images)]
    tagger = lambda text: every_word(text)[: args.targets]  # noqa: E731

    def ours(batch_images: list) -> int:
        _, _, records, tops = caption_and_score(model, processor, batch_images, tagger=tagger, top_k=10_000,
                                                max_new_tokens=args.tokens)
        return sum(len(r["targets"]) for r in records)

    ours(images[: args.batch])  # warm-up
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start, pairs = time.perf_counter(), 0
    for i in range(0, args.images, args.batch):
        pairs += ours(images[i:i + args.batch])
    sync(device)
    ours_seconds = time.perf_counter() - start
    ours_peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0

    @torch.no_grad()
    def reference(image: Image.Image) -> None:
        batch = encode_images(processor, [image], "Describe the image in few words.", assistant_prefix="An image of")
        batch = batch.to(device)
        inputs = dict(batch.inputs)
        ids = inputs.pop("input_ids")
        mask = inputs.pop("attention_mask")
        for _ in range(args.tokens):  # greedy, no cache: a full forward of the whole sequence per token
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **inputs).logits[:, -1]
            logits[:, 4] = float("-inf")
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        prompt_len = batch.seq_len
        steps = list(range(min(args.targets, args.tokens)))
        full = type(batch)({**inputs, "input_ids": ids, "attention_mask": mask}, ["?"], torch.tensor([ids.shape[1]]))
        for step in steps:  # one re-forward per target to read its activations
            position = prompt_len - 1 + step
            targets = TargetSet(ids[:, position + 1:position + 2].cpu(), torch.tensor([[position]]),
                                torch.tensor([[True]]))
            contribution(model, full, targets, site="act")

    reference(images[0])  # warm-up
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for image in images[: args.reference_images]:
        reference(image)
    sync(device)
    reference_seconds = time.perf_counter() - start
    reference_peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype),
        "caption_tokens": args.tokens, "targets_per_caption": args.targets, "batch": args.batch,
        "ours": {"images": args.images, "pairs": pairs, "seconds": round(ours_seconds, 3),
                 "images_per_second": round(args.images / ours_seconds, 3), "peak_gib": round(ours_peak, 2)},
        "reference": {"images": args.reference_images, "seconds": round(reference_seconds, 3),
                      "images_per_second": round(args.reference_images / reference_seconds, 3),
                      "peak_gib": round(reference_peak, 2)},
    }
    result["speedup"] = round(result["ours"]["images_per_second"] / result["reference"]["images_per_second"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
