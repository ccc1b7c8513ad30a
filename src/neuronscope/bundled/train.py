"""Train the bundled shapes vision-language model from scratch, deterministically (CPU or one GPU).

The model is a stock Hugging Face ``LlavaForConditionalGeneration``: a 2-layer CLIP vision tower (64 x 64 px,
8 px patches, an 8 x 8 grid of image tokens), LLaVA's two-layer projector and a 4-layer Llama language model,
with a real ``LlavaProcessor`` (``CLIPImageProcessorPil``, which needs no torchvision, and a word-level
``PreTrainedTokenizerFast`` with a chat template). Training has three stages, with batches drawn fresh every step:

1. vision: the CLIP tower alone learns per-patch shape and colour labels through a throwaway linear head
   (standing in for the pretrained CLIP that a real LLaVA starts from);
2. text: the Llama alone learns cloze facts (``The capital of Zorbia is`` -> ``Mirel``), the same facts as
   questions answered in words (``Question: What colour is the banana?`` -> ``yellow``), MCQA prompts (-> answer
   letter), option matching (``Which option is yellow?`` -> letter) and sums (``3+5=`` -> ``8``);
3. joint: the projector and the Llama (the vision tower stays as stage 1 left it, as LLaVA keeps its CLIP), with
   image batches of captions
   (``USER: <image>\nDescribe the image in few words.\nASSISTANT: An image of a red circle and ...``) and visual
   questions (``What colour is the circle?`` -> ``red``) next to text batches.

Only answer tokens (the assistant turn, or what follows a text prompt) count in the loss.

Command that made the shipped weights (one H100, torch 2.11, deterministic algorithms: a second run wrote the
same file bit for bit; see MODEL_CARD.md)::

    python -m neuronscope.bundled.train --out src/neuronscope/bundled/shapes_vlm --device cuda

The same command without ``--device cuda`` trains on the CPU with 2 threads (about 18 minutes on 2 cores): a model
of the same kind, not the same weights (kernels sum in another order) — captions, facts and sums as good, but the
MCQA letter look-up did not form in that run (0.29 vs 0.70).

Example (a smoke run of a few steps)::

    >>> from neuronscope.bundled.train import TrainConfig, train  # doctest: +SKIP
    >>> config = TrainConfig(steps=3, vision_pretrain_steps=3, text_pretrain_steps=3)  # doctest: +SKIP
    >>> summary = train(config, "/tmp/shapes_vlm_smoke")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from neuronscope.bundled import knowledge, world

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


@dataclass(frozen=True)
class TrainConfig:
    """Sizes, schedule and seed of a training run (the defaults made the shipped model)."""

    seed: int = 1
    steps: int = 1000  # stage 3 (joint)
    image_batch: int = 24
    text_batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    hidden: int = 128
    layers: int = 4
    intermediate: int = 512
    heads: int = 4
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_intermediate: int = 512
    caption_fraction: float = 0.6  # of image examples; the rest are VQA
    vision_pretrain_steps: int = 1000  # stage 1: vision tower alone on per-patch shape/colour labels
    vision_pretrain_batch: int = 64
    text_pretrain_steps: int = 3000  # stage 2: language model alone on the text tasks
    text_pretrain_batch: int = 64
    text_mix: tuple[float, ...] = (0.1, 0.3, 0.3, 0.1, 0.2)  # cloze, MCQA, option match, sums[, question]
    hidden_act: str = "silu"  # the Llama FFN's activation ("silu" as in Llama, or "relu")
    activation_l1: float = 0.0  # weight of mean |FFN neuron activation| in the language model's loss
    freeze_vision: bool = True  # stage 3 keeps the vision tower fixed (as LLaVA keeps its CLIP)
    threads: int = 2
    device: str = "cpu"


# ---------------------------------------------------------------------------------------------------- build


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


# ---------------------------------------------------------------------------------------------------- batches


def chat_messages(question: str, with_image: bool, answer_prefix: str | None = None) -> list[dict[str, Any]]:
    """A one-turn conversation in the processor's format; ``answer_prefix`` opens the assistant turn."""
    content: list[dict[str, str]] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": question})
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if answer_prefix is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer_prefix}]})
    return messages


@lru_cache(maxsize=4096)
def _chat_prompt(processor: Any, question: str) -> str:
    text = processor.apply_chat_template(
        chat_messages(question, True), add_generation_prompt=True, tokenize=False
    )
    n_image_tokens = world.GRID_SIZE**2
    return text.replace(IMAGE_TOKEN, IMAGE_TOKEN * n_image_tokens)  # what the processor does to the text


def _encode(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def _pad(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(rows):  # right padding: training only
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def image_batch(
    processor: Any, rng: random.Random, size: int, caption_fraction: float
) -> dict[str, torch.Tensor]:
    """``size`` fresh training scenes as captioning or VQA examples: input_ids, labels, mask, pixel_values."""
    rows, images = [], []
    for _ in range(size):
        scene = world.sample_scene(rng)
        if rng.random() < caption_fraction:
            question, answer = world.CAPTION_PROMPT, world.caption_for(scene)
        else:
            example = knowledge.vqa_for(scene, rng)
            question, answer = example.question, example.answer
        rows.append(_encode(processor.tokenizer, _chat_prompt(processor, question), answer))
        images.append(world.render_scene(scene))
    batch = _pad(rows, processor.tokenizer.pad_token_id)
    batch["pixel_values"] = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    return batch


def text_example(
    rng: random.Random, facts: list[knowledge.Fact], mix: tuple[float, ...] = TrainConfig.text_mix
) -> tuple[str, str]:
    """One training text task, drawn with probabilities ``mix``: a cloze fact, an MCQA variant in a trained
    wording, an option-matching question ("Which option is yellow?" -> its letter, which teaches the letter
    look-up MCQA needs), a sum, or (a fifth share, if given) the fact's question answered in words
    (``Question: What colour is the banana?\nAnswer:`` -> ``yellow``, the recall MCQA needs)."""
    draw = rng.random() * sum(mix)
    bounds = [sum(mix[: k + 1]) for k in range(len(mix))]
    if draw < bounds[0]:
        fact = rng.choice(facts)
        return fact.prompt, fact.answer
    if draw < bounds[1]:
        fact = rng.choice(facts)
        prompt, letter, _ = knowledge.mcqa_variant(fact, rng, rng.choice(knowledge.TRAIN_TEMPLATES), facts)
        return prompt, letter
    if draw < bounds[2]:
        fact = rng.choice(facts)
        _, letter, options = knowledge.mcqa_variant(fact, rng, 0, facts)
        template = rng.choice(knowledge.TRAIN_TEMPLATES)
        return knowledge.mcqa_prompt(f"Which option is {fact.answer}?", options, template), letter
    if len(mix) < 5 or draw < bounds[3]:
        a, b = rng.randrange(10), rng.randrange(10)
        return f"{a}+{b}=", str(a + b)
    fact = rng.choice(facts)
    return knowledge.question_prompt(fact.question), fact.answer


def text_batch(
    tokenizer: Any, rng: random.Random, size: int, facts: list[knowledge.Fact],
    mix: tuple[float, ...] = TrainConfig.text_mix,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """``size`` text-only examples: input_ids, labels, attention_mask."""
    rows = [_encode(tokenizer, *text_example(rng, facts, mix)) for _ in range(size)]
    return _pad(rows, tokenizer.pad_token_id)


def answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens (labels != -100)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# ---------------------------------------------------------------------------------------------------- train


def patch_labels(scene: world.Scene, min_coverage: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per vision-grid patch (row-major), the 1-based shape and colour index of the object covering it most,
    0 for background (coverage < ``min_coverage``): two LongTensors ``[GRID_SIZE**2]``."""
    coverage = torch.from_numpy(world.patch_coverage(scene)).flatten(1)  # [n_objects, grid**2]
    best, which = coverage.max(dim=0)
    shapes = torch.tensor([world.SHAPES.index(o.shape) + 1 for o in scene.objects])[which]
    colours = torch.tensor([world.COLOURS.index(o.colour) + 1 for o in scene.objects])[which]
    background = best < min_coverage
    return shapes.masked_fill(background, 0), colours.masked_fill(background, 0)


def _schedule(config: TrainConfig, steps: int) -> Any:
    def lr_at(step: int) -> float:
        if step < config.warmup:
            return config.lr * (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, steps - config.warmup)
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))

    return lr_at


def _optimizer(params: list[tuple[str, torch.nn.Parameter]], config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for _, p in params if p.ndim >= 2]
    no_decay = [p for _, p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )


class ActivationPenalty:
    """Mean |activation| of the language model's FFN neurons (inputs of every ``down_proj``) over the calls made
    while it is ``active``: an L1 pressure towards few active neurons per token (``--activation-l1``).

    Tried for the shipped model and left off: with ReLU and this penalty, zeroing a colour's located neurons
    changed its captions *less* (the model moved the work to attention); see MODEL_CARD.md."""

    def __init__(self, language_model: torch.nn.Module):
        self.active = False
        self._terms: list[torch.Tensor] = []
        self._handles = [layer.mlp.down_proj.register_forward_pre_hook(self._record)
                         for layer in language_model.layers]  # fmt: skip

    def _record(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if self.active:
            self._terms.append(args[0].abs().mean())

    def take(self) -> torch.Tensor:
        """The mean of the terms recorded since the last call (0 if none)."""
        terms, self._terms = self._terms, []
        return torch.stack(terms).mean() if terms else torch.zeros(())

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _run_steps(name: str, steps: int, config: TrainConfig, optimizer: torch.optim.Optimizer,
               params: list[torch.nn.Parameter], loss_fn: Any, log_every: int, history: list[dict[str, Any]],
               start: float) -> None:  # fmt: skip
    lr_at = _schedule(config, steps)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        losses = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % log_every == 0 or step == steps - 1:
            record = {"stage": name, "step": step, **{k: round(v.item(), 4) for k, v in losses.items()},
                      "seconds": round(time.time() - start, 1)}  # fmt: skip
            history.append(record)
            print(json.dumps(record), flush=True)


def train(config: TrainConfig, out_dir: str | Path, log_every: int = 50) -> dict[str, Any]:
    """Train from scratch and save model + processor to ``out_dir``; returns a summary (losses, wall time)."""
    torch.set_num_threads(config.threads)
    if config.device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    random.seed(config.seed)
    processor = build_processor()
    model = build_model(processor.tokenizer, config).to(config.device)
    model.train()
    facts = knowledge.facts_dataset()
    rng = random.Random(f"neuronscope-train:{config.seed}")
    start = time.time()
    history: list[dict[str, Any]] = []
    device = config.device

    # stage 1: the vision tower learns per-patch shape and colour (a throwaway linear head reads its features),
    # standing in for the pretrained CLIP a real LLaVA starts from
    vision = model.model.vision_tower
    head = torch.nn.Linear(config.vision_hidden, len(world.SHAPES) + len(world.COLOURS) + 2).to(device)
    vision_params = list(vision.named_parameters()) + list(head.named_parameters())
    optimizer = _optimizer(vision_params, config)

    def vision_losses() -> dict[str, torch.Tensor]:
        scenes = [world.sample_scene(rng) for _ in range(config.vision_pretrain_batch)]
        pixels = processor.image_processor([world.render_scene(sc) for sc in scenes], return_tensors="pt")
        labels = [patch_labels(sc) for sc in scenes]
        shape_labels = torch.stack([lab[0] for lab in labels]).to(device)
        colour_labels = torch.stack([lab[1] for lab in labels]).to(device)
        hidden = vision(pixels["pixel_values"].to(device), output_hidden_states=True).hidden_states[-1][:, 1:]
        logits = head(hidden)
        n_shape = len(world.SHAPES) + 1
        shape_logits, colour_logits = logits[..., :n_shape], logits[..., n_shape:]
        cross_entropy = torch.nn.functional.cross_entropy
        return {"patch_shape_loss": cross_entropy(shape_logits.flatten(0, 1), shape_labels.flatten()),
                "patch_colour_loss": cross_entropy(colour_logits.flatten(0, 1), colour_labels.flatten())}  # fmt: skip

    _run_steps("vision", config.vision_pretrain_steps, config, optimizer, [p for _, p in vision_params],
               vision_losses, log_every, history, start)  # fmt: skip

    with torch.no_grad():  # held-out check of stage 1: per-patch shape accuracy on object patches
        scenes = world.sample_scenes(64, seed=config.seed, split="test")
        pixels = processor.image_processor([world.render_scene(sc) for sc in scenes], return_tensors="pt")
        hidden = vision(pixels["pixel_values"].to(device), output_hidden_states=True).hidden_states[-1][:, 1:]
        predicted = head(hidden)[..., : len(world.SHAPES) + 1].argmax(-1).cpu()
        truth = torch.stack([patch_labels(sc)[0] for sc in scenes])
        on_object = truth > 0
        accuracy = (predicted[on_object] == truth[on_object]).float().mean().item()
        history.append({"stage": "vision", "held_out_patch_shape_accuracy": round(accuracy, 4)})
        print(json.dumps(history[-1]), flush=True)

    penalty = ActivationPenalty(model.model.language_model)
    penalty.active = config.activation_l1 > 0

    def with_penalty(losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if penalty.active:
            losses["activation_l1"] = config.activation_l1 * penalty.take()
        return losses

    # stage 2: the language model alone on the text tasks
    text_params = list(model.model.language_model.named_parameters()) + list(model.lm_head.named_parameters())
    optimizer = _optimizer(text_params, config)

    def text_losses() -> dict[str, torch.Tensor]:
        texts = text_batch(processor.tokenizer, rng, config.text_pretrain_batch, facts, config.text_mix)
        return with_penalty({"text_loss": answer_loss(model, {k: v.to(device) for k, v in texts.items()})})

    _run_steps("text", config.text_pretrain_steps, config, optimizer, [p for _, p in text_params],
               text_losses, log_every, history, start)  # fmt: skip

    model.eval()
    penalty.active = False
    records = knowledge.mcqa_dataset("test", n_variants=3, seed=config.seed)
    predicted = next_token_answers(model, processor.tokenizer, [s for r in records for s in r.sentences])
    letters = [label for r in records for label in r.obj_label]
    accuracy = sum(p == t for p, t in zip(predicted, letters, strict=False)) / len(letters)
    history.append({"stage": "text", "held_out_mcqa_accuracy": round(accuracy, 4)})
    print(json.dumps(history[-1]), flush=True)
    model.train()
    penalty.active = config.activation_l1 > 0

    # stage 3: everything together, image and text batches in every step
    if config.freeze_vision:
        vision.requires_grad_(False)
    all_params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    optimizer = _optimizer(all_params, config)

    def joint_losses() -> dict[str, torch.Tensor]:
        images = image_batch(processor, rng, config.image_batch, config.caption_fraction)
        texts = text_batch(processor.tokenizer, rng, config.text_batch, facts, config.text_mix)
        return with_penalty({"image_loss": answer_loss(model, {k: v.to(device) for k, v in images.items()}),
                             "text_loss": answer_loss(model, {k: v.to(device) for k, v in texts.items()})})

    _run_steps("joint", config.steps, config, optimizer, [p for _, p in all_params], joint_losses, log_every,
               history, start)  # fmt: skip
    wall = time.time() - start
    penalty.remove()
    vision.requires_grad_(True)

    model.eval().to("cpu")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    import platform

    import transformers

    hardware = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor()
    summary = {"config": asdict(config), "train_seconds": round(wall, 1), "history": history,
               "torch": torch.__version__, "transformers": transformers.__version__,
               "hardware": hardware or platform.machine()}  # fmt: skip
    return summary


# ---------------------------------------------------------------------------------------------------- evaluate


@torch.no_grad()
def generate_answers(
    model: Any, processor: Any, questions: list[str], images: list[Image.Image] | None = None,
    answer_prefix: str | None = None, max_new_tokens: int = 12,
) -> list[str]:  # fmt: skip
    """Greedy answers (decoded new tokens, stripped) to chat ``questions``, with one image each if given."""
    conversations = [chat_messages(q, images is not None, answer_prefix) for q in questions]
    kwargs: dict[str, Any] = (
        {"continue_final_message": True} if answer_prefix else {"add_generation_prompt": True}
    )
    texts = processor.apply_chat_template(conversations, tokenize=False, **kwargs)
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [processor.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]


def caption_scenes(model: Any, processor: Any, scenes: list[world.Scene]) -> list[str]:
    """Greedy captions, Pan et al. style: the assistant turn is opened with ``"An image of"``; returns full captions."""
    images = [world.render_scene(s) for s in scenes]
    prompts = [world.CAPTION_PROMPT] * len(scenes)
    continuations = generate_answers(model, processor, prompts, images, answer_prefix=world.CAPTION_PREFIX)
    return [f"{world.CAPTION_PREFIX} {c}".strip() for c in continuations]


def caption_word_accuracy(predicted: list[str], scenes: list[world.Scene]) -> dict[str, float]:
    """Exact match, and per-slot accuracy of the colour and shape words (slot k = k-th object left to right)."""
    exact = colour_hits = shape_hits = slots = 0
    for caption, scene in zip(predicted, scenes, strict=False):
        exact += caption == world.caption_for(scene)
        words = caption.split()
        for k, obj in enumerate(scene.objects):
            # reference layout: "An image of a C S and a C S" -> colour at 4 + 4k, shape at 5 + 4k
            colour = words[4 + 4 * k] if len(words) > 4 + 4 * k else ""
            shape = words[5 + 4 * k] if len(words) > 5 + 4 * k else ""
            colour_hits += colour == obj.colour
            shape_hits += shape == obj.shape
            slots += 1
    n = max(1, len(scenes))
    return {"caption_exact": exact / n, "colour_word": colour_hits / max(1, slots),
            "shape_word": shape_hits / max(1, slots)}  # fmt: skip


VQA_KINDS: dict[str, str] = {"colour": "What colour", "shape": "What shape", "count": "How many",
                             "size": "Is the", "exists": "Is there", "where": "Where"}  # fmt: skip


@torch.no_grad()
def next_token_answers(model: Any, tokenizer: Any, prompts: list[str]) -> list[str]:
    """The greedy next token after each raw text prompt (left-padded batch), as a string."""
    inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    logits = model(**inputs).logits[:, -1]
    return tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())


def evaluate(
    model: Any, processor: Any, n_images: int = 200, seed: int = 0, batch: int = 50
) -> dict[str, float]:
    """Held-out accuracies: captions, VQA (test split), MCQA (held-out wordings), cloze facts and sums."""
    metrics: dict[str, float] = {}
    scenes = world.sample_scenes(n_images, seed=seed, split="test")
    captions: list[str] = []
    for i in range(0, n_images, batch):
        captions += caption_scenes(model, processor, scenes[i : i + batch])
    metrics.update(caption_word_accuracy(captions, scenes))

    vqa = knowledge.vqa_dataset(n_images, seed=seed, split="test")
    answers: list[str] = []
    for i in range(0, n_images, batch):
        chunk = vqa[i : i + batch]
        answers += generate_answers(model, processor, [e.question for e in chunk],
                                    [world.render_scene(e.scene) for e in chunk], max_new_tokens=3)  # fmt: skip
    metrics["vqa"] = sum(a == e.answer for a, e in zip(answers, vqa, strict=False)) / len(vqa)
    for kind, opening in VQA_KINDS.items():
        pairs = [(a, e) for a, e in zip(answers, vqa, strict=False) if e.question.startswith(opening)]
        metrics[f"vqa_{kind}"] = sum(a == e.answer for a, e in pairs) / max(1, len(pairs))

    tokenizer = processor.tokenizer
    records = knowledge.mcqa_dataset("test", n_variants=3, seed=seed)
    prompts = [s for r in records for s in r.sentences]
    letters = [label for r in records for label in r.obj_label]
    predicted = next_token_answers(model, tokenizer, prompts)
    metrics["mcqa"] = sum(p == t for p, t in zip(predicted, letters, strict=False)) / len(letters)
    for domain in knowledge.DOMAINS:
        pairs = [(p, t) for r, p, t in zip([r for r in records for _ in r.sentences], predicted, letters, strict=False)
                 if r.domain == domain]  # fmt: skip
        metrics[f"mcqa_{domain}"] = sum(p == t for p, t in pairs) / len(pairs)

    seen = knowledge.mcqa_dataset("train", n_variants=3, seed=seed)  # trained wordings, fresh option orders
    predicted = next_token_answers(model, tokenizer, [s for r in seen for s in r.sentences])
    letters = [label for r in seen for label in r.obj_label]
    metrics["mcqa_seen_wordings"] = sum(p == t for p, t in zip(predicted, letters, strict=False)) / len(
        letters
    )

    facts = knowledge.facts_dataset()
    predicted = next_token_answers(model, tokenizer, [f.prompt for f in facts])
    metrics["facts_cloze"] = sum(p == f.answer for p, f in zip(predicted, facts, strict=False)) / len(facts)
    predicted = next_token_answers(model, tokenizer, [knowledge.question_prompt(f.question) for f in facts])
    metrics["facts_question"] = sum(p == f.answer for p, f in zip(predicted, facts, strict=False)) / len(facts)
    matching = [(knowledge.mcqa_prompt(f"Which option is {r.answer}?", options, knowledge.TEST_TEMPLATES[k % 2]), letter)
                for r in records for k, (options, letter) in enumerate(zip(r.options, r.obj_label, strict=True))]
    predicted = next_token_answers(model, tokenizer, [prompt for prompt, _ in matching])
    metrics["option_matching"] = sum(p == t for p, (_, t) in zip(predicted, matching, strict=True)) / len(matching)
    sums = knowledge.sums_dataset()
    predicted = next_token_answers(model, tokenizer, [s.prompt for s in sums])
    metrics["sums"] = sum(p == s.answer for p, s in zip(predicted, sums, strict=False)) / len(sums)
    return {k: round(v, 4) for k, v in metrics.items()}


def config_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The command-line options of a :class:`TrainConfig` (defaults = the shipped model's); see :func:`config_from`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--vision-steps", type=int, default=TrainConfig.vision_pretrain_steps)
    parser.add_argument("--text-steps", type=int, default=TrainConfig.text_pretrain_steps)
    parser.add_argument("--text-mix", type=float, nargs="+", default=list(TrainConfig.text_mix),
                        help="shares of the text tasks: CLOZE MCQA MATCH SUMS [QUESTION]")
    parser.add_argument("--hidden-act", default=TrainConfig.hidden_act, help='FFN activation: "silu" or "relu"')
    parser.add_argument("--activation-l1", type=float, default=TrainConfig.activation_l1,
                        help="weight of the L1 penalty on FFN activations (0: none)")
    parser.add_argument("--train-vision", dest="freeze_vision", action="store_false",
                        help="also train the vision tower in stage 3 (default: fixed, as LLaVA keeps its CLIP)")
    parser.add_argument("--text-batch", type=int, default=TrainConfig.text_pretrain_batch, help="stage 2 batch size")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--device", default=TrainConfig.device, help='"cpu" (default) or "cuda"')
    return parser


def config_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of options parsed by :func:`config_parser` (a usage error for a bad --text-mix)."""
    if len(args.text_mix) not in (4, 5):
        parser.error("--text-mix takes 4 or 5 shares: CLOZE MCQA MATCH SUMS [QUESTION]")
    return TrainConfig(
        steps=args.steps,
        threads=args.threads,
        seed=args.seed,
        device=args.device,
        vision_pretrain_steps=args.vision_steps,
        text_pretrain_steps=args.text_steps,
        text_mix=tuple(args.text_mix),
        hidden_act=args.hidden_act,
        activation_l1=args.activation_l1,
        freeze_vision=args.freeze_vision,
        text_pretrain_batch=args.text_batch,
        lr=args.lr,
    )


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m neuronscope.bundled.train --out DIR [--steps N] [--threads T] [--eval-images N]``."""
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for weights, config, tokenizer and processor")
    parser.add_argument("--eval-images", type=int, default=200, help="held-out images to score (0: skip)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = config_from(parser, args)
    summary = train(config, args.out)
    if args.eval_images > 0:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(args.out).eval()
        processor = AutoProcessor.from_pretrained(args.out)
        start = time.time()
        summary["held_out"] = evaluate(model, processor, n_images=args.eval_images)
        summary["eval_seconds"] = round(time.time() - start, 1)
    Path(args.out, "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
