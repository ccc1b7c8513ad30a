"""Turn a folder of benchmark JSON (``run_all.py``'s output) into the Markdown tables of BENCHMARKS.md.

    python benchmarks/report.py OUT            # prints Markdown: goal / measured / ratio / met, per table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _s(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _x(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}×"


GOALS = {"on": True}  # the goals are the H200's: off for CPU runs


def _met(ok: bool | None) -> str:
    if not GOALS["on"]:
        return "CPU run"
    return "—" if ok is None else ("yes" if ok else "no")


def _ratio(best: float, pairs: dict | None, goal: float) -> str:
    """Best-of-runs ratio, and the paired median with its quartiles when measured (the goal is judged on the
    paired median: the host's speed drifts within a run)."""
    if not pairs:
        return f"{_x(best)} ({_met(best <= goal)})"
    median = pairs["ratio_median"]
    return (f"{_x(best)}; paired median {_x(median)} (quartiles {pairs['ratio_q1']:.2f}-{pairs['ratio_q3']:.2f}) "
            f"({_met(median <= goal)})")


def _agreement(agreement: dict[str, Any]) -> str:
    if "kept_set_equal_fraction" in agreement:  # runs before the replays
        return (f"{agreement['kept_set_equal_fraction']:.3f} of the kept sets equal, max value diff "
                f"{agreement['max_abs_value_diff']:.2g}")
    parts = {"replay_vs_dense": "replay", "eager_vs_dense": "eager",
             "replay_vs_eager_on_the_padded_batch": "replay vs eager on the padded batch"}
    return "; ".join(f"{label}: overlap {agreement[key]['kept_overlap']:.4f}, max diff "
                     f"{agreement[key]['max_abs_value_diff']:.2g}" for key, label in parts.items()
                     if key in agreement) + f" (scores up to {agreement['max_abs_score']:.2g})"


def contribution(table: dict[str, Any]) -> list[str]:
    lines = [f"### Contribution ({table['model']})", "",
             "| batch × tokens | forward | top-k on device (replayed where graphed) | ratio (goal ≤ 1.10×) | peak / weights "
             "(goal ≤ 1.10; capture included) | top-k, every call eager | shape's first / capture call | "
             "dense grid to host (before) | top-k vs the dense grid's top-k |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in table["rows"]:
        ratio, peak = row["top_k_over_forward"], row["top_k"].get("peak_over_weights")
        eager = row.get("top_k_eager")
        eager_text = "—" if eager is None else (
            f"{_s(eager['seconds'])}: {_ratio(row['top_k_eager_over_forward'], row.get('top_k_eager_over_forward_paired'), 1.10)}")
        phases = row["top_k"]
        first = (f"{_s(phases['first_of_shape_seconds'])} / {_s(phases['capture_call_seconds'])}"
                 if "capture_call_seconds" in phases else "—")
        if phases.get("graphs_kept") == 0:
            first += " (no graph: every call eager)"
        lines.append(f"| {row['batch']} × {row['length']} ({row['targets_per_row']} targets) | "
                     f"{_s(row['forward']['seconds'])} | {_s(row['top_k']['seconds'])} | "
                     f"{_ratio(ratio, row.get('top_k_over_forward_paired'), 1.10)} | {_x(peak, 3) if peak else '—'} "
                     f"({_met(None if peak is None else peak <= 1.10)}) | {eager_text} | {first} | "
                     f"{_x(row['dense_over_forward'])} | "
                     f"{_agreement(row['agreement'])} |")
    return lines


def _chunks(entry: dict[str, Any]) -> str:
    chunks = entry.get("chunks")
    return f" ({' + '.join(str(c) for c in chunks)} rows)" if chunks else ""


def _graph_phases(entry: dict[str, Any], loop: dict[str, Any]) -> list[str]:
    """The rows of a shape's first (eager) and second (captured) calls, when the entry has them."""
    lines = []
    for key, what in (("first_of_shape_seconds", "first call of the shape (eager)"),
                      ("capture_call_seconds", "second call (run, then captured)")):
        if key in entry:
            lines.append(f"| … {what} | {_s(entry[key])} | {_x(loop['seconds'] / entry[key], 1)} | |")
    return lines


def integrated_gradients(table: dict[str, Any]) -> list[str]:
    rows = table["rows"]
    loop, fast = rows["qrneuron_loop"], rows["sequence_planned"]
    peak = fast.get("peak_over_weights")
    speedup = fast["speedup_over_loop"]
    timed = f" (timed on {loop['timed_layers']} layers, scaled)" if "timed_layers" in loop else ""
    replay = ", steady state: a CUDA-graph replay" if "capture_call_seconds" in fast else ""
    lines = [f"### Integrated gradients ({table['model']}; m = {rows['steps']}, {rows['layers']} layers, "
             f"T = {rows['length']}: {rows['rows']} rows)", "",
             "| what | time | vs the loop | peak / weights |", "| --- | --- | --- | --- |",
             f"| qrneuron's per-layer loop{timed} | {_s(loop['seconds'])} | 1× | "
             f"{_x(loop.get('peak_over_weights'), 3)} |",
             f"| sequence path, planned rows{_chunks(fast)}{replay} (goal ≥ 100×, ≤ 1.3× weights) | "
             f"{_s(fast['seconds'])} | **{_x(speedup, 1)}** ({_met(speedup >= 100)}) | {_x(peak, 3)} "
             f"({_met(None if peak is None else peak <= 1.3)}) |"]
    lines += _graph_phases(fast, loop)
    eager = rows.get("sequence_planned_eager")
    if eager and "seconds" in eager:
        lines.append(f"| the same, every call eager (`graphs=False`) | {_s(eager['seconds'])} | "
                     f"{_x(eager['speedup_over_loop'], 1)} | {_x(eager.get('peak_over_weights'), 3)} |")
    if "first_call_seconds" in fast:
        lines.append(f"| the same, first call ever (sizes being tried) | {_s(fast['first_call_seconds'])} | "
                     f"{_x(loop['seconds'] / fast['first_call_seconds'], 1)} | |")
    uncapped = rows.get("sequence_planned_free_memory")
    if uncapped and "seconds" in uncapped:
        lines.append(f"| sequence path, chunks planned within 90 % of the free memory instead"
                     f"{_chunks(uncapped)}{replay} | {_s(uncapped['seconds'])} | "
                     f"{_x(uncapped['speedup_over_loop'], 1)} | {_x(uncapped.get('peak_over_weights'), 3)} |")
        lines += _graph_phases(uncapped, loop)
    for entry in rows["sequence_fixed_batch"]:
        if "seconds" in entry:
            lines.append(f"| sequence path, {entry['batch_size']} rows per chunk | {_s(entry['seconds'])} | "
                         f"{_x(loop['seconds'] / entry['seconds'], 1)} | {_x(entry.get('peak_over_weights'), 3)} |")
    packed = rows.get("packed_previous_default", {})
    if "seconds" in packed:
        lines.append(f"| packed path (previous default) | {_s(packed['seconds'])} | "
                     f"{_x(loop['seconds'] / packed['seconds'], 1)} | {_x(packed.get('peak_over_weights'), 3)} |")
    agreement = rows["agreement_with_loop"]
    lines += ["", f"Agreement with the loop in this run's dtype: largest difference {agreement['max_abs_diff_over_max']:.2g}"
              f" of the largest score, top-100 overlap {agreement['top100_overlap']:.2f}."]
    fp32 = table.get("fp32_agreement")
    if fp32:
        lines.append(f"float32 ({fp32['layers']}-layer model of the same width, T = {fp32['length']}, m = "
                     f"{fp32['steps']}, TF32 off): {fp32['max_abs_diff_over_max']:.2g} of the largest score "
                     f"(goal ≤ 1e-3: {_met(fp32['max_abs_diff_over_max'] <= 1e-3)}).")
    return lines


def _lpi_cpu(cpu: dict[str, Any]) -> list[str]:
    one, every, products = cpu["one_layer"], cpu["every_layer"], cpu["products_one_layer"]
    return [f"### Exact LPI over the full vocabulary ({cpu['model']})", "",
            "| what | time | note |", "| --- | --- | --- |",
            f"| every neuron of one layer (layer {cpu['layer']}: {cpu['neurons_per_layer']:,} neurons, V = "
            f"{cpu['vocab_size']:,}) | {_s(one['seconds'])} | {_x(cpu['one_layer_over_products'])} its "
            f"value-vector × unembedding products alone ({_s(products['seconds'])}, "
            f"{cpu['gflop_per_layer']:.0f} GFLOP) |",
            f"| every neuron of all {cpu['layers']} layers, one call | {_s(every['seconds'])} | one forward for all "
            "layers |"]


def lpi(table: dict[str, Any]) -> list[str]:
    if "cpu" in table:
        return _lpi_cpu(table["cpu"])
    lines = ["### Exact LPI of every neuron of one layer over the full vocabulary (bf16)", "",
             "| shape | chunk | kernel | forward | time | FLOP floor | ratio (goal ≤ 2×) | vs the products alone | "
             "scoring alone (no forward) / floor | peak above the model |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in table["rows"]:
        forward = {"graph": "CUDA graph", "eager": "eager (`graphs=False`)"}.get(row.get("forward", ""), "eager")
        if "error" in row:
            lines.append(f"| {row['shape']} | {row['chunk_size']} | {row['backend']} | {forward} | error: "
                         f"{row['error'][:80]} | | | | | |")
            continue
        peak = row.get("peak_above_model_gib")
        lines.append(f"| {row['shape']} | {row['chunk_size']} | {row['backend']} | {forward} | {_s(row['seconds'])} | "
                     f"{_s(row['flop_floor_s'])} | {_x(row['over_floor'])} ({_met(row['over_floor'] <= 2)}) | "
                     f"{_x(row['over_matmul_only'])} | {_x(row.get('scoring_only_over_floor'))} | "
                     f"{'—' if peak is None else f'{peak:.2f} GiB'} |")
    forwards = {row["shape"]: row["forward_s"] for row in table["rows"] if "forward_s" in row}
    for shape, seconds in forwards.items():
        lines.append(f"\n{shape}: each call includes one forward of the one-layer model, {_s(seconds)} on its own "
                     "(eager).")
    whole = table.get("all_layers")
    if whole:
        eager = whole.get("eager_forward_seconds")
        lines.append(f"\nEvery layer at once ({whole['layers']} layers of the whole model, one forward, chunk "
                     f"{whole['chunk_size']}, {whole['backend']}): {_s(whole['seconds'])} against a FLOP floor of "
                     f"{_s(whole['flop_floor_s'])}, **{_x(whole['over_floor'])}** ({_met(whole['over_floor'] <= 2)}); "
                     f"its forward alone {_s(whole['forward_s'])}"
                     + ("." if eager is None else f"; with the forward eager (`graphs=False`) {_s(eager)}, "
                        f"{_x(whole['eager_forward_over_floor'])}."))
    for entry in table["agreement"]:
        lines.append(f"\n{entry['shape']}: bf16 vs fp32 products, largest LPI difference "
                     f"{entry['max_abs_error_bf16_vs_fp32_compute']:.2g} on LPIs up to {entry['max_abs_lpi_fp32']:.2g}.")
    return lines


def _kept(row: dict[str, Any]) -> str:
    """A multimodal row's decoding: kept from the call before (tables since 2026-12-02 evening) or not; its
    prompt's forward compiled too or not (since 2026-12-02, 19:30 UTC)."""
    kept = {True: ", decoding kept from the call before", False: ", decoding not kept"}.get(row.get("kept"), "")
    return kept + {True: ", prompt compiled too", False: ", prompt eager"}.get(row.get("prompt_compiled"), "")


def multimodal(table: dict[str, Any]) -> list[str]:
    reference = table["reference"]["images_per_second"]
    lines = [f"### Multimodal neurons ({table['model']}; {table['caption_tokens']}-token captions, "
             f"{table['targets_per_caption']} targets each, top-{table['top_k']})", "",
             "| approach | images/s | vs reference (goal ≥ 25×) | peak / weights (goal ≤ 1.15) |",
             "| --- | --- | --- | --- |"]
    if "incomplete" in table:
        lines[1:1] = ["", f"**Cut short** ({table['incomplete']}): the rows measured before it."]
    def decoding(row: dict[str, Any]) -> str:  # which decoding the call took (rows of tables before slots: batched)
        return f" through {row['slots']} slots" if row.get("slots") else ""

    rows = [(row, "") for row in table.get("streaming", [])] + [(row, " (slots asked)") for row in table.get("slot_rows", [])]
    rows += [(row, " (batched asked)") for row in table.get("batched_rows", [])]
    rows += [(row, f", decode steps through the compiled decoder{_kept(row)} (first call, compiling: "
                   f"{row['first_call_seconds']:.0f} s)") for row in table.get("compiled_rows", [])]
    for row, asked in rows:
        peak = row.get("peak_over_weights")
        ratio = row["images_per_second"] / reference
        lines.append(f"| streaming, batch {row['batch']}{decoding(row)}{asked} | {row['images_per_second']:.2f} | "
                     f"{_x(ratio, 1)} ({_met(ratio >= 25)}) | {_x(peak, 3)} "
                     f"({_met(None if peak is None else peak <= 1.15)}) |")
    eager = table.get("streaming_eager_decode", {})
    if "images_per_second" in eager:
        lines.append(f"| streaming, batch {eager['batch']}, decode steps launched eagerly (no CUDA graph) | "
                     f"{eager['images_per_second']:.2f} | {_x(eager['images_per_second'] / reference, 1)} | "
                     f"{_x(eager.get('peak_over_weights'), 3)} |")
    now = table.get("pipeline_now", {})
    if "images_per_second" in now:
        lines.append(f"| pipeline as it is, batch {now['batch']} | {now['images_per_second']:.2f} | "
                     f"{_x(now['images_per_second'] / reference, 1)} | {_x(now.get('peak_over_weights'), 3)} |")
    lines.append(f"| reference strategy, batch 1 | {reference:.2f} | 1× | "
                 f"{_x(table['reference'].get('peak_over_weights'), 3)} |")
    for entry in table.get("paired", []):
        ratio = entry["over_reference_median"]
        compiled = f", compiled decoder{_kept(entry)}," if entry.get("compiled") else ""
        lines.append(f"\nStreaming at batch {entry['batch']}{compiled} over the reference in {entry['pairs']} alternating pairs "
                     f"(the goal's judge): **{_x(ratio, 1)}** median (quartiles {entry['over_reference_q1']:.1f}-"
                     f"{entry['over_reference_q3']:.1f}; {_met(ratio >= 25)}).")
    return lines


def peers(table: dict[str, Any]) -> list[str]:
    lines = [f"### Peers on the same model ({table['model']})", "", "| task | tool | time | over ours | agreement |",
             "| --- | --- | --- | --- | --- |"]
    for task, key, label in (("contribution", "max_abs_diff_over_max", "largest difference / largest score"),
                             ("generation_intervention", "same_tokens_fraction", "tokens equal to ours")):
        part = table[task]
        plain = part.get("generate_without_intervention")
        if plain:
            changed = part.get("neuronscope", {}).get("tokens_changed_by_the_intervention")
            lines.append(f"| {task} | Hugging Face generate, no intervention | {_s(plain['seconds'])} | "
                         f"{_x(plain['seconds'] / part['neuronscope']['seconds'])} | the intervention changes "
                         f"{changed:.2f} of the tokens |")
        for tool in ("neuronscope", "nnsight", "transformer_lens", "transformer_lens_no_kv_cache"):
            entry = part.get(tool)
            if entry is None:
                continue
            if "error" in entry:
                lines.append(f"| {task} | {tool} | error: {entry['error'][:80]} | | |")
                continue
            agreement = "—" if key not in entry else f"{entry[key]:.3g} ({label})"
            if "without_hooks_same_as_hf_fraction" in entry:
                agreement += f"; without hooks vs HF: {entry['without_hooks_same_as_hf_fraction']:.2f}"
            lines.append(f"| {task} | {tool} | {_s(entry['seconds'])} | {_x(entry.get('over_ours', 1.0))} | "
                         f"{agreement} |")
    return lines


def moe(table: dict[str, Any]) -> list[str]:
    lines = [f"### Mixture of experts: contribution of every expert neuron ({table.get('dtype', '?')}; "
             "`moe.json`)", "",
             "| model shape (layers) | tokens / targets | neurons per target | forward | capture | top-1000 per target "
             "selected on the device | ratio (goal ≤ 1.3×) | every score to the host | peak / weights (goal ≤ 1.15) "
             "| experts path |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in table.items():
        if not isinstance(row, dict) or "contribution" not in row:
            continue
        top = row.get("contribution_top_k", row["contribution"])
        ratio = row.get("contribution_top_k_over_forward", row["contribution_over_forward"])
        peak = top.get("peak_over_weights")
        lines.append(f"| {name} ({row['layers']}) | {row['tokens']} / {row['targets']} | "
                     f"{row['n_neurons_scored_per_target']:,} | {_s(row['forward']['seconds'])} | "
                     f"{_s(row['capture']['seconds'])} | {_s(top['seconds'])} | "
                     f"{_ratio(ratio, row.get('contribution_top_k_over_forward_paired'), 1.3)} | "
                     f"{_s(row['contribution']['seconds'])} ({_x(row['contribution_over_forward'])}) | "
                     f"{_x(peak, 3) if peak else '—'} ({_met(None if peak is None else peak <= 1.15)}; the forward "
                     f"alone {_x(row['forward'].get('peak_over_weights', 0), 3)}) | {row['experts_implementation']}, "
                     f"{row['activations']} |")
    return lines


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmark-results")
    env = _load(folder, "environment") or {}
    GOALS["on"] = "gpu_memory_gib" in env
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    out = [f"Machine: {env.get('device', '?')}; {versions}; {env.get('date', '?')}; CPU threads "
           f"{env.get('cpu_threads', '?')}.", ""]
    checks = _load(folder, "checks")
    if checks is not None:
        failed = [row for part in ("integrated_gradients", "ig_graphs", "contribution_top_k", "contribution_graphs",
                                   "log_sum_exp", "decode", "slots")
                  for row in checks.get(part, []) if not row.get("ok", False)]
        out += [f"Correctness on this device (`checks.json`, float32, each fast path against its plain oracle): "
                f"{'all equal within tolerance' if checks['all_ok'] else 'FAILURES'}; "
                f"{len(failed)} rows not ok (errors or differences): {failed[:4]}", ""]
    for name, render in (("contribution", contribution), ("integrated_gradients", integrated_gradients),
                         ("lpi", lpi), ("multimodal", multimodal), ("peers", peers), ("moe", moe)):
        table = _load(folder, name)
        if table is not None:
            out += render(table) + [""]
    run = _load(folder, "run")
    if run and (run.get("skipped") or run.get("errors")):
        out.append(f"Skipped: {run.get('skipped')}; errors in: {list(run.get('errors', {}))}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
