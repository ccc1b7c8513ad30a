"""Captioning and scoring of one batch of images (Pan et al. 2024, DESIGN §3.1).

1. **Caption**: the image and ``prompt`` go through the processor's chat template, the answer starts with
   ``assistant_prefix`` ("An image of"), and the model continues greedily (``max_new_tokens``).
2. **Capture during generation**: the neuron site is captured at the last position of every forward call of
   the greedy decoding (:func:`neuronscope.trace.decode.greedy_generate`: a static cache, and on a GPU each decode
   step replayed from a CUDA graph; a batch whose cache would not fit in the GPU's memory goes through a cache of
   a few images, :mod:`neuronscope.trace.slot_decode`), i.e. at exactly the position whose logits produce each
   generated token: no re-forward of the caption is needed.
3. **Targets**: the nouns of the generated caption (a part-of-speech tagger) or the words of a concept list;
   each scored at the first sub-token of its first occurrence (:mod:`.nouns`).
4. **Scores**: ``s[l, i] = a[l, i] · <w_i, u_t>`` for all ``layers × d_ff`` neurons
   (:func:`neuronscope.attribute.contribution.scores_from_activations`; optional frozen final-norm scaling);
   the top ``top_k`` per (image, target) are kept, sparse, selected on the device.

On a mixture-of-experts model the same steps run over its expert neurons (:mod:`.moe_scoring`): ``g_e · a_{e,i}
· <w_{e,i}, u_t>``, flat ids of its :class:`~neuronscope.models.moe.NeuronLayout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from neuronscope.aggregate.select import SparseTopK, sparse_top_k
from neuronscope.attribute.contribution import CONTRIBUTION_SITES, scores_from_activations
from neuronscope.errors import InputError
from neuronscope.inputs.batch import (
    DEFAULT_CAPTION_PREFIX,
    DEFAULT_CAPTION_PROMPT,
    Batch,
    Generation,
    _input_device,
    encode_images,
    to_model,
)
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.trace.slot_decode import buffered_decode
from neuronscope.workflows.multimodal.moe_scoring import Scorer, caption_experts, score_grid
from neuronscope.workflows.multimodal.nouns import ConceptSpec, Tagger, TargetWord, select_targets


def _stop_ids(model: nn.Module, processor: Any) -> set[int]:
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = {tokenizer.pad_token_id, tokenizer.eos_token_id}
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos is not None:
        ids.update(int(i) for i in generation_eos)
    return {int(i) for i in ids if i is not None}


def _cut(tokens: list[int], stop: set[int]) -> list[int]:
    for number, token in enumerate(tokens):
        if token in stop:
            return tokens[:number]
    return tokens


def pair_scores(
    adapter: ModelAdapter,
    activations: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    final_residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contribution scores of each (activation row, target token): ``[n, layers, d_ff]``.

    Args:
        adapter: the model's adapter.
        activations: ``[n, layers, d_ff]`` the neuron site at each target's producing position.
        token_ids: ``[n]`` the target tokens.
        final_residual: ``[n, d_model]`` the last layer's output at those positions; when given, scores are
            scaled by the final norm frozen there (``<w_i, g ⊙ u_t> / σ``, LayerNorm's centring included).
    """
    return scores_from_activations(adapter, activations, token_ids, list(range(adapter.n_layers)),
                                   final_residual=final_residual)


@torch.no_grad()
def caption_and_score(
    model: nn.Module,
    processor: Any,
    images: Sequence[Image.Image],
    *,
    prompt: str = DEFAULT_CAPTION_PROMPT,
    assistant_prefix: str | None = DEFAULT_CAPTION_PREFIX,
    concepts: ConceptSpec | None = None,
    tagger: Tagger | None = None,
    top_k: int = 10_000,
    site: str = "neuron",
    final_norm: bool = False,
    max_new_tokens: int = 20,
    compile: bool = False,
    keep: bool = False,
) -> tuple[Batch, torch.Tensor, list[dict[str, Any]], list[SparseTopK]]:
    """One batch: generate captions while capturing ``site``, pick targets, score and keep the top-k
    (``compile``: the prompt and decode steps through the compiled text decoder, dense models only; ``keep``: the dense
    decoding is kept for the next batch of the same shape, :func:`neuronscope.trace.decode.buffered_generate`).

    Returns:
        ``(batch, sequences, records, tops)``: the captioning batch, the generated sequences ``[B, T]``, per
        image a record (caption, generated ids, targets with their producing positions) and its
        :class:`SparseTopK` with ``values`` / ``flat_indices`` ``[n_targets, k]``.
    """
    if site not in CONTRIBUTION_SITES:
        raise InputError(f"the contribution score is defined at sites {CONTRIBUTION_SITES}, not {site!r}")
    adapter = get_adapter(model)
    # the pixels made on the model's device where the image processor can (torchvision's), then moved if not there
    batch = to_model(encode_captioning(processor, images, prompt, assistant_prefix, _input_device(model)), model)
    if adapter.moe is not None:  # expert neurons: the same steps with the expert axis
        if compile:
            raise InputError("compile applies to dense language models; this one has mixture-of-experts layers: "
                             "run without --compile")
        generation, steps, score = caption_experts(model, processor, batch, site=site, final_norm=final_norm,
                                                   max_new_tokens=max_new_tokens)
    else:
        generation, steps, score = _caption_dense(model, processor, batch, adapter, site, final_norm,
                                                  max_new_tokens, compile, keep)
    stop = _stop_ids(model, processor)
    tokens = generation.tokens.cpu()
    n_layers, d_ff = score_grid(adapter)
    k = min(top_k, n_layers * d_ff)
    records, chosen = [], []
    for row in range(len(images)):
        ids = _cut(tokens[row].tolist(), stop)
        ids = ids[:steps]  # a token needs the forward call that produced it
        caption, targets = select_targets(processor, ids, concepts=concepts, tagger=tagger)
        records.append({"caption": caption, "generated_ids": ids, "prompt_len": generation.prompt_len,
                        "targets": [_target_record(t, generation.prompt_len) for t in targets]})
        chosen.append(targets)
    return batch, generation.sequences.cpu(), records, score(chosen, k)


def _caption_dense(model: nn.Module, processor: Any, batch: Batch, adapter: ModelAdapter, site: str,
                   final_norm: bool, max_new_tokens: int, compile: bool = False,
                   keep: bool = False) -> tuple[Generation, int, Scorer]:
    """Generate while capturing the dense neuron site: ``(generation, steps captured, score(targets, k))``."""
    last = adapter.n_layers - 1
    # the site at the last position of every call, in device buffers (written by the CUDA-graph replays too): a few
    # MB, scored there, only the top-k leave the device
    sites = {site: range(adapter.n_layers), **({"resid_post": [last]} if final_norm else {})}
    generation, buffers = buffered_decode(model, processor, batch, sites, max_new_tokens,  # slots if it cannot fit
                                          compile=compile, keep=keep)
    score_device = adapter.unembedding().device
    produced = generation.tokens.shape[1]
    stacked = buffers.stack(site, produced, device=score_device)  # [B, P, L, d_ff]
    residual = buffers.get("resid_post", last)[:, :produced].to(score_device) if final_norm else None  # [B, P, d]

    def score(chosen: Sequence[Sequence[TargetWord]], k: int) -> list[SparseTopK]:
        tops = []
        for row, targets in enumerate(chosen):
            if targets:
                steps = torch.tensor([t.step for t in targets], device=score_device)
                scores = pair_scores(
                    adapter, stacked[row, steps], torch.tensor([t.token_id for t in targets]),
                    final_residual=None if residual is None else residual[row, steps],
                )
                top = sparse_top_k(scores, k)
                top = SparseTopK(top.values.float().cpu(), top.flat_indices.cpu(), top.n_layers, top.d_ff)
            else:
                top = SparseTopK(torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long), adapter.n_layers,
                                 adapter.d_ff)
            tops.append(top)
        return tops

    return generation, stacked.shape[1], score


def _target_record(target: TargetWord, prompt_len: int) -> dict[str, Any]:
    return {**target.to_dict(), "position": prompt_len - 1 + target.step}


def encode_captioning(processor: Any, images: Sequence[Image.Image], prompt: str, prefix: str | None,
                      device: torch.device | None = None) -> Batch:
    """The captioning batch of ``images`` (the prompt through the processor's chat template; ``device``: as
    :func:`~neuronscope.inputs.encode_images` takes it)."""
    try:
        return encode_images(processor, images, prompt, assistant_prefix=prefix, device=device)
    except ValueError as error:
        if "chat template" in str(error).lower() or "chat_template" in str(error):
            raise InputError(
                "the processor has no chat template: set processor.chat_template (a Jinja template that puts the "
                "image placeholder in the user turn), or load a processor that ships one"
            ) from None
        raise
