"""Peers side by side on the same model: neuronscope, nnsight and TransformerLens (its TransformerBridge).

1. Direct-logit contribution ``a_i · <w_i, u_t>`` of every neuron of every layer at the last position of one
   prompt, to the model's predicted token: ours ``contribution(...)``; nnsight: save the down-projection input of
   every layer in one trace, then the same product; TransformerLens: ``run_with_cache`` of ``mlp.hook_post`` (the
   same tensor), then the same product. Agreement: the largest difference over the largest score.
2. An intervention during generation: 64 fixed neurons zeroed at every position of every call of a greedy
   generation of 20 tokens: ours ``intervene(model, suppress(neurons, positions="all"))`` around ``generate``;
   nnsight: ``generate`` with the assignment in ``for step in tracer.iter[:20]``; TransformerLens: ``generate``
   inside ``hooks(fwd_hooks=...)``. Agreement: the fraction of generated tokens equal to ours.

Each peer gets the same weights (TransformerLens boots on a deep copy, since it switches its model to eager
attention). ``without_hooks_same_as_hf_fraction``: TransformerLens's own generation without any hook against
Hugging Face's, to tell its disagreement from the intervention's: with its KV cache (the default) TransformerLens
4.3 does not reproduce Hugging Face's greedy tokens on SmolLM2 under transformers 5.24 (without the cache it does),
so it is timed both ways. Timings are best-of-repeats after a warm-up; ``over_ours`` is the
peer's time over ours.

    python benchmarks/bench_peers.py OUT                 # CUDA: Llama-2-7B shape, random bf16
    python benchmarks/bench_peers.py OUT --smollm2       # CPU: the real SmolLM2-135M-Instruct, 1 thread
    python benchmarks/bench_peers.py OUT --tiny
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from typing import Any

import torch
from common import LLAMA2_7B, TINY, build_llama, device, free, load_smollm2, main, measure, strip, text_batch

NEW_TOKENS = 20


def word_tokenizer(vocab: int):
    """A word-level tokenizer over ``w0 .. w{vocab}`` for random models (nothing to download)."""
    import transformers as T
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab - 4)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in words[:4]])
    tokenizer = T.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                          bos_token="<s>", eos_token="</s>")
    folder = tempfile.mkdtemp(prefix="word-tokenizer-")  # TransformerLens reloads a tokenizer from its path
    tokenizer.save_pretrained(folder)
    return T.AutoTokenizer.from_pretrained(folder)


def _projections(model, token: int) -> list[torch.Tensor]:
    """``W_down^T u_t`` per layer ``[d_ff]`` in float32."""
    from neuronscope.models import get_adapter

    adapter = get_adapter(model)
    u = adapter.unembedding()[token]
    return [(adapter.value_vectors(layer) @ u.to(adapter.value_vectors(layer).dtype)).float()
            for layer in range(adapter.n_layers)]


def contribution_rows(model, tokenizer, ids: torch.Tensor, where: torch.device, repeats: int,
                      bridge) -> dict[str, Any]:
    from neuronscope.attribute.contribution import contribution
    from neuronscope.inputs.targets import token_targets

    batch = text_batch(ids)
    with torch.no_grad():
        token = int(model(**batch.inputs).logits[0, -1].argmax())
    layers = model.config.num_hidden_layers
    out: dict[str, Any] = {"prompt_tokens": ids.shape[1], "token": token}
    ours = measure(lambda: contribution(model, batch, token_targets(batch, token)).values[0, 0], where, repeats)
    reference = ours.pop("result").float()
    out["neuronscope"] = strip(ours)

    def peer(name: str, function) -> None:
        try:
            got = measure(function, where, repeats)
        except Exception as error:  # noqa: BLE001 - a peer that cannot run here is reported
            out[name] = {"error": f"{type(error).__name__}: {error}"[:400]}
            return
        scores = got.pop("result")
        out[name] = {**strip(got), "over_ours": got["seconds"] / out["neuronscope"]["seconds"],
                     "max_abs_diff_over_max": float((scores - reference).abs().max() / reference.abs().max())}

    try:
        from nnsight import LanguageModel

        wrapped = LanguageModel(model, tokenizer=tokenizer)

        def nnsight_scores():
            saved = []
            with wrapped.trace(ids):
                for layer in range(layers):
                    saved.append(wrapped.model.layers[layer].mlp.down_proj.input[0, -1].save())
            projections = _projections(model, token)
            return torch.stack([a.float() * p for a, p in zip(saved, projections, strict=True)]).cpu()

        peer("nnsight", nnsight_scores)
    except ImportError as error:
        out["nnsight"] = {"error": f"not installed: {error}"}
    if bridge is not None:
        names = [f"blocks.{layer}.mlp.hook_post" for layer in range(layers)]

        @torch.no_grad()
        def lens_scores():
            _, cache = bridge.run_with_cache(ids, names_filter=lambda name: name in names)
            projections = _projections(model, token)
            return torch.stack([cache[name][0, -1].float() * p for name, p in zip(names, projections,
                                                                                  strict=True)]).cpu()

        peer("transformer_lens", lens_scores)
    return out


def generation_rows(model, tokenizer, ids: torch.Tensor, where: torch.device, repeats: int, bridge,
                    neurons: torch.Tensor) -> dict[str, Any]:
    from neuronscope.trace import intervene, suppress

    by_layer = {layer: neurons[neurons[:, 0] == layer, 1] for layer in neurons[:, 0].unique().tolist()}
    out: dict[str, Any] = {"prompt_tokens": ids.shape[1], "new_tokens": NEW_TOKENS, "neurons": len(neurons)}
    mask = torch.ones_like(ids)

    @torch.no_grad()
    def plain():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              do_sample=False, pad_token_id=0)[0, ids.shape[1]:].cpu()

    @torch.no_grad()
    def ours():
        with intervene(model, suppress(neurons, positions="all")):
            return plain()

    unchanged = measure(plain, where, repeats)
    untouched = unchanged.pop("result")
    out["generate_without_intervention"] = strip(unchanged)
    measured = measure(ours, where, repeats)
    reference = measured.pop("result")
    out["neuronscope"] = strip(measured)
    out["neuronscope"]["tokens_changed_by_the_intervention"] = float((reference != untouched).float().mean())

    def peer(name: str, function) -> None:
        try:
            got = measure(function, where, repeats)
        except Exception as error:  # noqa: BLE001
            out[name] = {"error": f"{type(error).__name__}: {error}"[:400]}
            return
        tokens = got.pop("result").reshape(-1)[:NEW_TOKENS]
        same = float((tokens == reference[: tokens.numel()]).float().mean()) if tokens.numel() else 0.0
        out[name] = {**strip(got), "over_ours": got["seconds"] / out["neuronscope"]["seconds"],
                     "same_tokens_fraction": same}

    try:
        from nnsight import LanguageModel

        wrapped = LanguageModel(model, tokenizer=tokenizer)

        def nnsight_generate():
            with wrapped.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                  pad_token_id=0) as tracer:
                for _ in tracer.iter[:NEW_TOKENS]:
                    for layer, index in by_layer.items():
                        wrapped.model.layers[layer].mlp.down_proj.input[:, :, index] = 0
                result = tracer.result.save()
            return result[0, ids.shape[1]:].cpu()

        peer("nnsight", nnsight_generate)
    except ImportError as error:
        out["nnsight"] = {"error": f"not installed: {error}"}
    if bridge is not None:
        def zero(index):
            def hook(tensor, hook):
                tensor[..., index.to(tensor.device)] = 0
                return tensor
            return hook

        hooks = [(f"blocks.{layer}.mlp.hook_post", zero(index)) for layer, index in by_layer.items()]

        def lens_generate(cache: bool):
            @torch.no_grad()
            def generate_with_hooks():
                with bridge.hooks(fwd_hooks=hooks):
                    tokens = bridge.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, stop_at_eos=False,
                                             verbose=False, return_type="tokens", use_past_kv_cache=cache)
                return tokens[0, ids.shape[1]:].cpu()

            return generate_with_hooks

        # its default (KV cache) and without the cache (a full forward per token), which on transformers 5.24 is
        # the one that reproduces Hugging Face's own generation (see without_hooks_same_as_hf_fraction)
        for name, cache in (("transformer_lens", True), ("transformer_lens_no_kv_cache", False)):
            peer(name, lens_generate(cache))
            if "same_tokens_fraction" in out[name]:  # the same generation without the hooks, against HF's
                with torch.no_grad():
                    alone = bridge.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, stop_at_eos=False,
                                            verbose=False, return_type="tokens",
                                            use_past_kv_cache=cache)[0, ids.shape[1]:].cpu()
                out[name]["without_hooks_same_as_hf_fraction"] = float((alone == untouched).float().mean())
    return out


def _bridge(model, tokenizer, name: str, where: torch.device) -> tuple[Any, dict[str, Any]]:
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as error:
        return None, {"error": f"not installed: {error}"}
    try:
        twin = copy.deepcopy(model)
        twin.config._name_or_path = twin.config._name_or_path or name  # random models have no hub name
        bridge = TransformerBridge.boot_transformers(name, hf_model=twin, tokenizer=tokenizer,
                                                     device=str(where), dtype=next(model.parameters()).dtype)
        return bridge, {"booted_as": name}
    except Exception as error:  # noqa: BLE001
        return None, {"error": f"{type(error).__name__}: {error}"[:400]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    where = torch.device("cpu") if args.tiny or args.smollm2 else device()
    if args.smollm2:
        model, tokenizer = load_smollm2()
        name, shape, prompt, repeats = "HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct (float32)", 32, 5
    elif args.tiny:
        model, tokenizer = build_llama(TINY, torch.float32, where), word_tokenizer(TINY["vocab_size"])
        name, shape, prompt, repeats = "meta-llama/Llama-2-7b-hf", "tiny", 12, 1
    else:
        model = getattr(args, "shared_model", None) or build_llama(LLAMA2_7B, torch.bfloat16, where)
        tokenizer = word_tokenizer(model.config.vocab_size)
        name, shape, prompt, repeats = "meta-llama/Llama-2-7b-hf", "Llama-2-7B (random, bf16)", 128, 3
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, model.config.vocab_size, (1, prompt), generator=generator).to(where)
    layers, d_ff = model.config.num_hidden_layers, model.config.intermediate_size
    neurons = torch.stack([torch.randint(0, layers, (64,), generator=generator),
                           torch.randint(0, d_ff, (64,), generator=generator)], dim=1)
    bridge, boot = _bridge(model, tokenizer, name, where)
    table = {"table": "peers", "model": shape, "transformer_lens_boot": boot,
             "contribution": contribution_rows(model, tokenizer, ids, where, repeats, bridge),
             "generation_intervention": generation_rows(model, tokenizer, ids, where, repeats, bridge, neurons)}
    del bridge
    free()
    return table


if __name__ == "__main__":
    main("peers", run, __doc__.splitlines()[0])
