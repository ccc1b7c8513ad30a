"""Correctness of the fast paths on the machine that runs the benchmarks (the tests run on CPUs only): each fast
path against its plain oracle, in float32 (TF32 off) on small random models, on the benchmark's device.

- IG: ``"sequence"`` (4-D mask over a shared prefix cache; sdpa and eager attention) and ``"packed"`` against
  ``"plain"``, several layers, both grids; the largest difference over the largest score.
- IG on CUDA graphs: replays against eager calls of the same prompts (several prompts per graph, two prefix
  buckets, one and two chunks, after an in-place weight edit; no graph under eager attention).
- contribution: the device-selected top-k (both selectors) against the top-k of the dense grid.
- greedy decoding: CUDA-graph replays and eager static decoding against ``model.generate`` (tokens equal), and
  the streaming multimodal scores with graphs against without.
- LPI log-sum-exp: every kernel (plain, compiled, Triton) against ``torch.logsumexp`` of the materialised float64
  values, with and without soft-cap, float32 and bf16 deltas.

    python benchmarks/bench_checks.py OUT
"""

from __future__ import annotations

import argparse
import contextlib
import gc
from typing import Any

import torch
from common import TINY, build_llama, device, main, text_batch

SMALL = dict(hidden_size=256, intermediate_size=688, num_attention_heads=8, num_key_value_heads=4, vocab_size=1024,
             num_hidden_layers=4)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / scale if scale else 0.0


def ig_checks(where: torch.device, shape: dict) -> list[dict[str, Any]]:
    from neuronscope.attribute.integrated_gradients import integrated_gradients
    from neuronscope.inputs.targets import token_targets

    out = []
    for attention in ("sdpa", "eager"):
        model = build_llama(shape, torch.float32, where, seed=3)
        model.set_attn_implementation(attention)
        ids = torch.randint(3, shape["vocab_size"], (1, 24), device=where)
        batch = text_batch(ids)
        targets = token_targets(batch, 5)
        for grid in ("dai", "linspace"):
            plain = integrated_gradients(model, batch, targets, steps=8, grid=grid, method="plain").values
            for method in ("sequence", "packed"):
                fast = integrated_gradients(model, batch, targets, steps=8, grid=grid, method=method)
                out.append({"attention": attention, "grid": grid, "method": method, "path": fast.meta["path"],
                            "max_abs_diff_over_max": _relative(fast.values, plain), "ok": _relative(fast.values,
                                                                                                     plain) < 1e-3})
    return out


def ig_graph_checks(where: torch.device, shape: dict) -> list[dict[str, Any]]:
    """CUDA-graph replays of IG against eager calls of the same prompts: one graph per prefix bucket and chunking,
    replayed for other prompts of its bucket, and after an in-place weight edit (which a replay reads)."""
    from neuronscope.attribute import ig_graphs
    from neuronscope.attribute.integrated_gradients import integrated_gradients
    from neuronscope.inputs.targets import token_targets
    from neuronscope.trace.graphs import kept_graphs

    out = []
    lengths = [24, 24, 30, 28, 70, 70, 70, 24]  # prompts of 24-30 share bucket 32; 70 is bucket 96
    for attention in ("sdpa", "eager"):
        model = build_llama(shape, torch.float32, where, seed=5)
        model.set_attn_implementation(attention)
        prompts = {n: torch.randint(3, shape["vocab_size"], (1, n), device=where) for n in set(lengths)}
        rows = shape["num_hidden_layers"] * 8
        for chunk in (rows, rows // 2):
            ig_graphs.release_graphs(model)
            worst = 0.0
            for step, n in enumerate(lengths + [30]):
                if step == len(lengths):  # an in-place edit: the graph reads the weights where they are
                    with torch.no_grad():
                        model.model.layers[1].mlp.down_proj.weight.mul_(1.5)
                batch = text_batch(prompts[n])
                targets = token_targets(batch, 5)

                replayed, eager = (integrated_gradients(model, batch, targets, steps=8, batch_size=chunk,
                                                        graphs=graphs).values for graphs in (True, False))
                worst = max(worst, _relative(replayed, eager))
            kept = kept_graphs(model, "integrated_gradients")
            out.append({"ig_graphs": f"{attention}, {rows // chunk} chunk(s)", "max_abs_diff_over_max": worst,
                        "graphs_kept": kept,
                        "ok": worst < 1e-4 and (where.type != "cuda" or kept == (2 if attention == "sdpa" else 0))})
        ig_graphs.release_graphs(model)
        del model
    return out


def contribution_checks(where: torch.device, shape: dict) -> list[dict[str, Any]]:
    from neuronscope.attribute import selection
    from neuronscope.attribute.contribution import contribution
    from neuronscope.inputs.targets import TargetSet

    model = build_llama(shape, torch.float32, where, seed=4)
    ids = torch.randint(3, shape["vocab_size"], (2, 30), device=where)
    batch = text_batch(ids)
    targets = TargetSet(ids[:, 20:25].cpu(), torch.arange(19, 24)[None].expand(2, -1).clone(),
                        torch.ones(2, 5, dtype=torch.bool))
    dense = contribution(model, batch, targets).values.flatten(2)
    k = min(200, dense.shape[-1] // 2)
    out = []
    for mode in ("buffered", "running"):
        selection.SELECTOR = mode
        try:
            kept = contribution(model, batch, targets, top_k=k)
        finally:
            selection.SELECTOR = "auto"
        order = dense.topk(k, dim=-1).indices
        same = float((torch.sort(order, -1).values == torch.sort(kept.indices, -1).values).float().mean())
        diff = float((dense.gather(-1, order) - kept.values).abs().max())
        out.append({"selector": mode, "kept_set_equal_fraction": same, "max_abs_value_diff": diff,
                    "ok": same > 0.999 and diff < 1e-5 * float(dense.abs().max())})
    return out


def _left_padded_pair(shape: dict, length: int, targets: int, where: torch.device):
    """Two random rows of ``length`` (the second left-padded by 3) and ``targets`` targets each: its last tokens."""
    from neuronscope.inputs import Batch
    from neuronscope.inputs.targets import TargetSet

    ids = torch.randint(3, shape["vocab_size"], (2, length), device=where)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    batch = Batch({"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)},
                  ["?", "?"], mask.sum(-1).cpu())
    positions = torch.arange(length - targets - 1, length - 1)[None].expand(2, -1).clone()
    return batch, TargetSet(ids[:, -targets:].cpu(), positions, torch.ones(2, targets, dtype=torch.bool))


def contribution_graph_checks(where: torch.device, shape: dict) -> list[dict[str, Any]]:
    """The device-selected top-k replayed from CUDA graphs against eager calls of the same batches: one graph per
    length bucket, replayed for other lengths of its bucket and after an in-place weight edit; none under eager
    attention."""
    from neuronscope.attribute.contribution import contribution
    from neuronscope.trace.graphs import kept_graphs, release_graphs

    out = []
    lengths = [24, 24, 30, 28, 70, 70, 70, 24]  # 24-30 share bucket 32; 70 is bucket 96
    for attention in ("sdpa", "eager"):
        model = build_llama(shape, torch.float32, where, seed=6)
        model.set_attn_implementation(attention)
        for final_norm in (False, True):
            release_graphs(model)
            worst, same = 0.0, 1.0
            for step, n in enumerate(lengths + [30]):
                if step == len(lengths):  # an in-place edit: the graph reads the weights where they are
                    with torch.no_grad():
                        model.model.layers[1].mlp.down_proj.weight.mul_(1.5)
                batch, targets = _left_padded_pair(shape, n, 5, where)
                replayed, eager = (contribution(model, batch, targets, top_k=200, final_norm=final_norm,
                                                graphs=graphs) for graphs in (True, False))
                worst = max(worst, float((replayed.values - eager.values).abs().max() / eager.values.abs().max()))
                same = min(same, float((torch.sort(replayed.indices, -1).values
                                        == torch.sort(eager.indices, -1).values).float().mean()))
            kept = kept_graphs(model, "contribution")
            out.append({"contribution_graphs": f"{attention}, final_norm={final_norm}", "max_abs_diff_over_max": worst,
                        "kept_set_equal_fraction_min": same, "graphs_kept": kept,
                        "ok": worst < 1e-4 and same > 0.99
                        and (where.type != "cuda" or kept == (2 if attention == "sdpa" else 0))})
        release_graphs(model)
        del model
    return out


def lpi_graph_checks(where: torch.device, shape: dict) -> list[dict[str, Any]]:
    """LPI (neurons and heads) with its forward replayed from CUDA graphs against eager unpadded calls: two length
    buckets, a left-padded row, an in-place weight edit, a steady intervention (graph-safe hooks: its own graph);
    no graph under eager attention."""
    from neuronscope.attribute.log_probability_increase import (
        head_log_probability_increase,
        log_probability_increase,
    )
    from neuronscope.trace.graphs import kept_graphs, release_graphs
    from neuronscope.trace.intervene import Intervention, intervene

    out = []
    lengths = [24, 24, 30, 28, 70, 70, 70]  # 24-30 share bucket 32; 70 is bucket 96
    for attention in ("sdpa", "eager"):
        model = build_llama(shape, torch.float32, where, seed=7)
        model.set_attn_implementation(attention)
        for name, score in (("neurons", log_probability_increase), ("heads", head_log_probability_increase)):
            release_graphs(model)
            worst = 0.0
            for step, n in enumerate(lengths + [30, 30, 30]):
                if step == len(lengths):  # an in-place edit: the graph reads the weights where they are
                    with torch.no_grad():
                        model.model.layers[0].mlp.down_proj.weight.mul_(1.5)
                batch, targets = _left_padded_pair(shape, n, 3, where)
                steady = Intervention(site="neuron", layer=0, op="scale", value=2.0, positions="all")
                with intervene(model, steady) if step == len(lengths) + 2 else contextlib.nullcontext():
                    replayed, eager = (score(model, batch, targets, layers=[0, 1], graphs=graphs).values
                                       for graphs in (True, False))
                worst = max(worst, float((replayed - eager).abs().max() / eager.abs().max()))
            kept = kept_graphs(model, "rows")
            out.append({"lpi_graphs": f"{name}, {attention}", "max_abs_diff_over_max": worst, "graphs_kept": kept,
                        "ok": worst < 1e-4 and (where.type != "cuda" or kept == (2 if attention == "sdpa" else 0))})
        release_graphs(model)
        del model
    return out


def kernel_checks(where: torch.device) -> list[dict[str, Any]]:
    from neuronscope.attribute.kernels import shifted_logsumexp

    generator = torch.Generator().manual_seed(0)
    base = (torch.randn(32000, generator=generator) * 4).to(where)
    delta = (torch.randn(64, 32000, generator=generator) * 3).to(where)
    scale = torch.randn(64, generator=generator).to(where)
    out = []
    for softcap in (None, 30.0):
        for dtype in (torch.float32, torch.bfloat16):
            values = delta.to(dtype)
            z = base.double()[None] + scale.double()[:, None] * values.double()
            z = torch.tanh(z / softcap) * softcap if softcap else z
            expected = torch.logsumexp(z, -1)
            for backend in ("plain",) if where.type == "cpu" else ("plain", "compiled", "triton"):
                entry: dict[str, Any] = {"backend": backend, "delta_dtype": str(dtype).removeprefix("torch."),
                                         "softcap": softcap}
                try:
                    got = shifted_logsumexp(base, values, scale, softcap, backend=backend).double()
                    entry["max_abs_diff"] = float((got - expected).abs().max())
                    entry["ok"] = entry["max_abs_diff"] < 1e-4
                except Exception as error:  # noqa: BLE001 - a kernel that cannot build here is reported
                    entry["error"] = f"{type(error).__name__}: {error}"[:300]
                out.append(entry)
    return out


def decode_checks(where: torch.device, tiny: bool) -> list[dict[str, Any]]:
    """Greedy decoding: CUDA-graph replays (the default on a GPU) and eager static decoding against
    ``model.generate``, on a left-padded text batch and a LLaVA batch; then the streaming scores with and without
    graphs."""
    import bench_multimodal

    from neuronscope.attribute.streaming import caption_contributions
    from neuronscope.inputs import encode_images, generate
    from neuronscope.inputs.batch import Batch
    from neuronscope.trace.decode import greedy_generate, static_decode_blocker

    vlm, processor = bench_multimodal.build(True, where, torch.float32)
    images = bench_multimodal._images(3, 28)
    image_batch = encode_images(processor, images, "Describe the image in few words.", assistant_prefix="An image of")
    model = build_llama(TINY if tiny else SMALL, torch.float32, where, seed=5)
    ids = torch.randint(3, model.config.vocab_size, (3, 20), device=where)
    mask = torch.ones_like(ids)
    mask[1, :6] = mask[2, :2] = 0
    text = Batch({"input_ids": ids, "attention_mask": mask}, ["?"] * 3, mask.sum(-1).cpu())
    out = []
    for name, net, batch in (("text", model, text), ("llava", vlm, image_batch)):
        tokenizer = processor.tokenizer
        expected = generate(net, tokenizer, batch, max_new_tokens=12, min_new_tokens=12).sequences
        entry: dict[str, Any] = {"decode": name, "static": static_decode_blocker(net, batch, {}) is None}
        for graphs in (False, True) if where.type == "cuda" else (False,):
            try:
                got = greedy_generate(net, tokenizer, batch, max_new_tokens=12, min_new_tokens=12, graphs=graphs)
                entry[f"tokens_equal_generate_graphs_{graphs}"] = bool(torch.equal(got.sequences, expected))
            except Exception as error:  # noqa: BLE001 - reported, not fatal
                entry["error"] = f"graphs={graphs}: {type(error).__name__}: {error}"[:300]
        entry["ok"] = entry["static"] and all(v for k, v in entry.items() if k.startswith("tokens_equal"))
        out.append(entry)
    # rows that stop early: each row's eos is a token it generates (its 5th), so that the rows stop at different
    # steps and the last stop is read one step late on a GPU (trace.greedy_choice.StopFlags)
    free_run = generate(model, processor.tokenizer, text, max_new_tokens=12, min_new_tokens=12).sequences
    previous = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = sorted(set(free_run[:, 20 + 4].tolist()))
    try:
        expected = generate(model, processor.tokenizer, text, max_new_tokens=12).sequences
        for graphs in (False, True) if where.type == "cuda" else (False,):
            got = greedy_generate(model, processor.tokenizer, text, max_new_tokens=12, graphs=graphs).sequences
            out.append({"decode": f"text, rows stopping early at eos, graphs={graphs}", "steps": got.shape[1] - 20,
                        "expected_steps": expected.shape[1] - 20, "ok": bool(torch.equal(got, expected))})
    finally:
        model.generation_config.eos_token_id = previous
    if where.type == "cuda":  # graphed decoding calls leave nothing allocated behind (cuBLAS workspaces per stream)
        resident = []
        for _ in range(6):
            greedy_generate(model, processor.tokenizer, text, max_new_tokens=12, min_new_tokens=12, graphs=True)
            gc.collect()
            torch.cuda.synchronize()
            resident.append(torch.cuda.memory_allocated())
        out.append({"decode": "memory allocated after each of 6 graphed decoding calls (the first sets up)",
                    "bytes_after_first": [value - resident[0] for value in resident[1:]],
                    "ok": len(set(resident[1:])) == 1 and resident[1] == resident[0]})
    from neuronscope.trace import intervene, suppress
    from neuronscope.trace.hooks import foreign_hooks

    neurons = torch.tensor([[layer, index] for layer in range(model.config.num_hidden_layers) for index in (3, 9)])
    with intervene(model, suppress(neurons, positions="all")):  # declared graph-safe: greedy decoding replays
        steady = foreign_hooks(model) == 0
        expected = generate(model, processor.tokenizer, text, max_new_tokens=12, min_new_tokens=12).sequences
        got = greedy_generate(model, processor.tokenizer, text, max_new_tokens=12, min_new_tokens=12)
    out.append({"decode": "text under suppress(positions='all'), graphs by default vs generate",
                "graph_safe": steady, "tokens_equal": bool(torch.equal(got.sequences, expected)),
                "ok": steady and bool(torch.equal(got.sequences, expected))})
    kept = {}
    for graphs in (False, True) if where.type == "cuda" else (False,):
        kept[graphs] = caption_contributions(vlm, processor, image_batch, max_new_tokens=8, top_k=50,
                                             min_new_tokens=8, graphs=graphs)
    out.append({"decode": "hooks on the LLaVA model not declared graph-safe (0: graphs by default)",
                "foreign_hooks": foreign_hooks(vlm), "ok": foreign_hooks(vlm) == 0})
    if len(kept) == 2:
        a, b = kept[False], kept[True]
        diff = float((a.values - b.values).abs().max()) / float(a.values.abs().max())
        out.append({"decode": "streaming scores, graphs vs eager", "max_abs_diff_over_max": diff,
                    "indices_equal": bool(torch.equal(a.flat_indices, b.flat_indices)),
                    "ok": diff < 1e-5 and torch.equal(a.generation.sequences, b.generation.sequences)})
    for graphs in (False, True) if where.type == "cuda" else ():  # decode steps through the compiled decoder
        try:
            got = caption_contributions(vlm, processor, image_batch, max_new_tokens=8, top_k=50, min_new_tokens=8,
                                        graphs=graphs, slots=None, compile=True)
            a = kept[False]
            diff = float((a.values - got.values).abs().max()) / float(a.values.abs().max())
            same = bool(torch.equal(a.generation.sequences, got.generation.sequences))
            out.append({"decode": f"streaming scores, compiled decoder (graphs={graphs}) vs eager",
                        "tokens_equal": same, "max_abs_diff_over_max": diff,
                        "indices_equal": bool(torch.equal(a.flat_indices, got.flat_indices)),
                        "ok": same and diff < 1e-5})
        except Exception as error:  # noqa: BLE001 - reported, not fatal
            out.append({"decode": f"streaming scores, compiled decoder (graphs={graphs})",
                        "error": f"{type(error).__name__}: {error}"[:300]})
    if where.type == "cuda":  # the kept decoding's graph, replayed from the first step, against fresh calls
        from check_kept import kept_checks

        other = encode_images(processor, bench_multimodal._images(6, 28)[3:], "Describe the image in few words.",
                              assistant_prefix="An image of")
        out += kept_checks(vlm, processor, [image_batch, other, image_batch])
    return out


def slot_checks(where: torch.device, tiny: bool) -> list[dict[str, Any]]:
    """Slot decoding (``trace.slot_decode``: a cache of a few prompts, prefill chunks inside the decode calls), its
    calls replayed from a CUDA graph on a GPU and eager, against ``model.generate`` (a text batch whose rows stop
    early at eos; a LLaVA batch) and the streaming scores against the batched decoding's."""
    import bench_multimodal

    from neuronscope.attribute.streaming import caption_contributions
    from neuronscope.inputs import encode_images, generate
    from neuronscope.inputs.batch import Batch
    from neuronscope.trace.slot_decode import slot_buffered_generate

    out = []
    modes = (False, True) if where.type == "cuda" else (False,)
    model = build_llama(TINY if tiny else SMALL, torch.float32, where, seed=5)
    ids = torch.randint(3, model.config.vocab_size, (6, 20), device=where)
    mask = torch.ones_like(ids)
    mask[1, :6] = mask[2, :2] = mask[4, :11] = 0
    text = Batch({"input_ids": ids, "attention_mask": mask}, ["?"] * 6, mask.sum(-1).cpu())
    vlm, processor = bench_multimodal.build(True, where, torch.float32)
    tokenizer = processor.tokenizer
    free_run = generate(model, tokenizer, text, max_new_tokens=12, min_new_tokens=12).sequences
    previous = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = sorted(set(free_run[:, 20 + 4].tolist()))  # rows stop at their 5th
    try:
        expected = generate(model, tokenizer, text, max_new_tokens=12).sequences
        for graphs in modes:
            got, _ = slot_buffered_generate(model, tokenizer, text, {"neuron": [0]}, 12, slots=2, chunk=8,
                                            graphs=graphs)
            out.append({"slots": f"text, 6 rows through 2 slots, rows stopping early at eos, graphs={graphs}",
                        "ok": bool(torch.equal(got.sequences, expected))})
    finally:
        model.generation_config.eos_token_id = previous
    images = bench_multimodal._images(5, 28)
    batch = encode_images(processor, images, "Describe the image in few words.", assistant_prefix="An image of")
    expected = generate(vlm, tokenizer, batch, max_new_tokens=8, min_new_tokens=8).sequences
    batched = caption_contributions(vlm, processor, batch, max_new_tokens=8, top_k=50, min_new_tokens=8,
                                    graphs=False, slots=None)
    for graphs in modes:
        found = caption_contributions(vlm, processor, batch, max_new_tokens=8, top_k=50, min_new_tokens=8,
                                      graphs=graphs, slots=2)
        diff = float((found.values - batched.values).abs().max()) / float(batched.values.abs().max())
        same = bool(torch.equal(found.generation.sequences.cpu(), expected.cpu()))
        out.append({"slots": f"llava, 5 images through 2 slots, scores vs batched eager, graphs={graphs}",
                    "tokens_equal_generate": same, "max_abs_diff_over_max": diff,
                    "indices_equal": bool(torch.equal(found.flat_indices, batched.flat_indices)),
                    "ok": same and diff < 1e-5})
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    where = torch.device("cpu") if args.tiny or args.smollm2 else device()
    shape = TINY if args.tiny else SMALL
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        table = {"table": "checks", "device": str(where), "integrated_gradients": ig_checks(where, shape),
                 "ig_graphs": ig_graph_checks(where, shape),
                 "contribution_top_k": contribution_checks(where, shape),
                 "contribution_graphs": contribution_graph_checks(where, shape),
                 "lpi_graphs": lpi_graph_checks(where, shape), "log_sum_exp": kernel_checks(where),
                 "decode": decode_checks(where, args.tiny), "slots": slot_checks(where, args.tiny)}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
    rows = [row for name in ("integrated_gradients", "ig_graphs", "contribution_top_k", "contribution_graphs",
                             "lpi_graphs", "log_sum_exp", "decode", "slots") for row in table[name]]
    table["all_ok"] = all(row.get("ok", False) for row in rows if "error" not in row)
    table["errors"] = [row for row in rows if "error" in row]
    return table


if __name__ == "__main__":
    main("checks", run, __doc__.splitlines()[0])
