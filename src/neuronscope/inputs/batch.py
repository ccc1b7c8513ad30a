"""Model inputs: text prompts (raw or through the chat template) and image + text through the model's processor.

Batches are always left-padded, so that the last prompt position is ``T - 1`` in every row, and carry explicit
``position_ids`` for text models so that a padded row computes exactly what it computes alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuronscope.errors import InputError

DEFAULT_CAPTION_PROMPT = "Describe the image in few words."
DEFAULT_CAPTION_PREFIX = "An image of"


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _render_chat(templater: Any, messages: list[dict[str, Any]], assistant_prefix: str | None,
                 content: Any = None) -> str:
    """The chat template's text with the generation prompt, and the assistant's answer started with
    ``assistant_prefix`` through ``continue_final_message`` (so the template decides the spacing)."""
    if not assistant_prefix:
        return templater.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    answer = [{"type": "text", "text": assistant_prefix}] if content == "parts" else assistant_prefix
    try:
        return templater.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False,
                                             continue_final_message=True)
    except (ValueError, TypeError):  # templates that cannot continue a message: append the prefix to the prompt
        return templater.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + assistant_prefix


@dataclass
class Batch:
    """A left-padded batch ready for the model.

    Attributes:
        inputs: what the model takes (``input_ids``, ``attention_mask``, ``pixel_values``, ...).
        texts: the text of each row as fed to the tokenizer (after the chat template).
        lengths: ``[batch]`` number of real (non-pad) tokens per row.
    """

    inputs: dict[str, Any]
    texts: list[str]
    lengths: torch.Tensor
    images: list[Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def pad_lengths(self) -> torch.Tensor:
        """``[batch]`` number of pad tokens on the left of each row."""
        return self.seq_len - self.lengths

    @property
    def last_positions(self) -> torch.Tensor:
        """``[batch]`` position of each row's last prompt token (``T - 1``: left padding)."""
        return torch.full_like(self.lengths, self.seq_len - 1)

    def to_padded(self, positions: torch.Tensor) -> torch.Tensor:
        """Map positions in each row's own (unpadded) tokens ``[batch, k]`` to padded positions."""
        return positions + self.pad_lengths[:, None]

    def forward_inputs(self) -> dict[str, Any]:
        """``inputs`` without the attention mask when no row is padded (said by ``lengths``, on the host).

        transformers checks an attention mask's values before building the causal mask, which makes the host wait
        for everything already queued on the GPU; an all-ones mask is the same as none, so it is left out."""
        mask = self.inputs.get("attention_mask")
        if mask is None or bool((self.lengths != self.seq_len).any()):
            return self.inputs
        return {key: value for key, value in self.inputs.items() if key != "attention_mask"}

    def to(self, device: torch.device | str) -> Batch:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.inputs.items()}
        return Batch(moved, self.texts, self.lengths, self.images, self.meta)

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, rows: Sequence[int] | torch.Tensor) -> Batch:
        """The sub-batch of ``rows`` (still left-padded to the full width, so positions stay valid)."""
        index = torch.as_tensor(rows, dtype=torch.long)
        size = len(self)
        picked = {k: v[index] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size else v
                  for k, v in self.inputs.items()}
        images = [self.images[i] for i in index.tolist()] if self.images is not None else None
        return Batch(picked, [self.texts[i] for i in index.tolist()], self.lengths[index], images, self.meta)


def _with_position_ids(inputs: dict[str, Any], model: nn.Module | None) -> dict[str, Any]:
    """Text models: position ids that skip left padding (multimodal models compute their own)."""
    if "pixel_values" in inputs or "position_ids" in inputs:
        return inputs
    if model is not None and hasattr(model.config, "vision_config"):
        return inputs
    mask = inputs["attention_mask"]
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return {**inputs, "position_ids": position_ids}


def encode_prompts(
    processor: Any,
    prompts: Sequence[str] | str,
    *,
    chat: bool = False,
    system: str | None = None,
    assistant_prefix: str | None = None,
    add_special_tokens: bool | None = None,
    model: nn.Module | None = None,
) -> Batch:
    """Tokenise text prompts into a left-padded :class:`Batch`.

    Args:
        processor: a tokenizer (or a processor with a ``.tokenizer``).
        prompts: one prompt or several.
        chat: wrap each prompt as a user turn through the tokenizer's chat template, with the generation prompt.
        system: an optional system turn (``chat`` only).
        assistant_prefix: text that starts the assistant's answer (``chat`` only), e.g. ``"An image of"``.
        add_special_tokens: default True for raw prompts, False after a chat template (it adds them itself).
        model: if given, used to decide on ``position_ids`` (text models get them; see module docstring).

    Example:
        >>> batch = encode_prompts(tokenizer, ["The capital of France is", "2+2="])
        >>> logits = model(**batch.inputs).logits[:, -1]
    """
    tokenizer = _tokenizer(processor)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise InputError("no prompts given: pass at least one prompt")
    if chat:
        if getattr(tokenizer, "chat_template", None) is None:
            raise InputError("this tokenizer has no chat template: call with chat=False (raw prompts)")
        texts = []
        for prompt in prompts:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            texts.append(_render_chat(tokenizer, messages, assistant_prefix))
        add_special_tokens = False if add_special_tokens is None else add_special_tokens
    else:
        texts = prompts
        add_special_tokens = True if add_special_tokens is None else add_special_tokens
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    try:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = pad
    inputs = _with_position_ids(dict(encoded), model)
    return Batch(inputs, texts, encoded["attention_mask"].sum(-1))


def encode_images(
    processor: Any,
    images: Sequence[Any],
    prompts: Sequence[str] | str = DEFAULT_CAPTION_PROMPT,
    *,
    chat: bool = True,
    assistant_prefix: str | None = None,
    device: torch.device | str | None = None,
) -> Batch:
    """Images (PIL) + text prompts through a vision-language model's processor, left-padded.

    Args:
        processor: the model's processor (it must have an image processor).
        images: one PIL image per row.
        prompts: one prompt for all rows or one per row. With ``chat`` each is a user turn holding the image.
        assistant_prefix: text that starts the answer, e.g. ``"An image of"`` (Pan et al.'s captioning prefix).
        device: where a torchvision image processor (transformers' default backend when torchvision is installed)
            resizes and normalises, e.g. the model's GPU: the pixels are made there, with no host-side work and no
            copy (5-6 images at 336 px: 1.6-3.5 ms on an H200, against 16-27 ms for the PIL processor). The
            interpolation then runs on that device, whose kernels are not the host's: the pixels are not promised
            bit for bit equal to the host's. Ignored by PIL image processors, which work on the host.

    Example:
        >>> batch = encode_images(processor, [image], assistant_prefix="An image of")
    """
    if getattr(processor, "image_processor", None) is None:
        raise InputError(
            "this model has no image processor (a text-only model?): images need a vision-language model such as "
            "LLaVA; for text use encode_prompts"
        )
    images = list(images)
    prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    if len(prompts) != len(images):
        raise InputError(f"{len(images)} images but {len(prompts)} prompts: give one prompt, or one per image")
    if chat:
        texts = []
        for prompt in prompts:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            texts.append(_render_chat(processor, messages, assistant_prefix, content="parts"))
    else:
        texts = [prompt + (assistant_prefix or "") for prompt in prompts]
    tokenizer = _tokenizer(processor)
    side = tokenizer.padding_side
    try:
        tokenizer.padding_side = "left"
        where = {"device": str(device)} if device is not None and makes_pixels_on_device(processor) else {}
        encoded = processor(images=images, text=texts, return_tensors="pt", padding=True, **where)
    finally:
        tokenizer.padding_side = side
    return Batch(dict(encoded), texts, encoded["attention_mask"].sum(-1), images)


def makes_pixels_on_device(processor: Any) -> bool:
    """Whether ``processor``'s image processor takes ``device=`` (transformers' torchvision backend)."""
    try:
        from transformers.image_processing_backends import TorchvisionBackend
    except ImportError:  # a transformers without backends: its fast processors are not told apart here
        return False
    return isinstance(getattr(processor, "image_processor", None), TorchvisionBackend)


@dataclass
class Generation:
    """Greedy generation with the positions that produced each token.

    ``tokens [batch, steps]`` are the new tokens; ``token k`` was produced by the logits at position
    ``prompt_len - 1 + k`` of ``sequences`` (so it can be scored at that position in a re-forward or during the
    generation itself with positions ``"last"``). Rows that stopped early are padded with ``pad_token_id``.
    """

    sequences: torch.Tensor
    prompt_len: int
    texts: list[str]

    @property
    def tokens(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_len:]

    def producing_positions(self) -> torch.Tensor:
        """``[steps]`` positions whose logits produced each generated token."""
        return torch.arange(self.tokens.shape[1]) + self.prompt_len - 1


def _input_device(model: nn.Module) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device
    except AttributeError:
        return next(model.parameters()).device


def to_model(batch: Batch, model: nn.Module) -> Batch:
    """Move a batch to the model's input device and its floating-point inputs (pixel values) to the model's dtype
    (a bf16 model is fed bf16 pixels)."""
    moved = batch.to(_input_device(model))
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        moved.inputs = {key: value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point()
                        else value for key, value in moved.inputs.items()}
    return moved


@torch.no_grad()
def generate(model: nn.Module, processor: Any, batch: Batch, max_new_tokens: int = 20, **kwargs: Any) -> Generation:
    """Greedy decoding of a left-padded batch; returns the new tokens, their texts and their positions."""
    tokenizer = _tokenizer(processor)
    inputs = {k: v for k, v in to_model(batch, model).inputs.items() if k != "position_ids"}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                               **kwargs)
    prompt_len = batch.seq_len
    texts = tokenizer.batch_decode(sequences[:, prompt_len:], skip_special_tokens=True)
    return Generation(sequences, prompt_len, [text.strip() for text in texts])


def prompt_batch(processor: Any, prompts: Sequence[str] | str | Batch, model: nn.Module, chat: bool = False) -> Batch:
    """A :class:`Batch` on the model's input device: prompts are encoded (left-padded), batches are moved."""
    batch = prompts if isinstance(prompts, Batch) else encode_prompts(processor, prompts, chat=chat, model=model)
    return to_model(batch, model)


def extend_batch(batch: Batch, tokens: torch.Tensor | Sequence[Sequence[int]]) -> Batch:
    """``batch`` with ``tokens [batch, steps]`` appended to every row, ready for one teacher-forced forward.

    The attention mask grows with ones; text position ids (where the batch has them) are recomputed so they skip
    the left padding; other per-token inputs (Qwen2-VL's ``mm_token_type_ids`` ...) are extended with zeros, i.e.
    as text. The appended token ``k`` of a row sits at position ``batch.seq_len + k``, so the logits that produce
    it are at ``batch.seq_len - 1 + k`` (:meth:`Generation.producing_positions`).

    Example:
        >>> full = extend_batch(batch, generation.tokens)      # prompt + caption, one forward
    """
    ids = batch.input_ids
    extra = torch.as_tensor(tokens, dtype=ids.dtype, device=ids.device).reshape(len(batch), -1)
    inputs = dict(batch.inputs)
    for key, value in batch.inputs.items():
        if not isinstance(value, torch.Tensor) or value.shape[:2] != ids.shape or key == "position_ids":
            continue
        if key == "input_ids":
            inputs[key] = torch.cat([value, extra], 1)
        elif key == "attention_mask":
            inputs[key] = torch.cat([value, torch.ones_like(extra, dtype=value.dtype)], 1)
        else:
            inputs[key] = torch.cat([value, value.new_zeros(len(batch), extra.shape[1])], 1)
    mask = inputs["attention_mask"]
    if "position_ids" in batch.inputs:
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return Batch(inputs, batch.texts, mask.sum(-1).cpu(), batch.images, batch.meta)
