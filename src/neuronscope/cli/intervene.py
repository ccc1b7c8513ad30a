"""``neuronscope intervene``: suppress (×0) or amplify (×k) a neuron set on prompts; target probabilities
before / after and the probability change ratio PCR = (P_after − P_before) / P_before (Chen, Dejl & Toni 2024).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from neuronscope.cli import common
from neuronscope.cli.common import (
    BatchSizeOpt,
    ConfigOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    GgufOpt,
    ModelOpt,
    NeuronsOpt,
    OutOpt,
    OverwriteOpt,
    RunOpt,
)
from neuronscope.cli.explain import model_options_from_run
from neuronscope.cli.prompts import PromptItem, encode, read_items, resolve_targets, target_set
from neuronscope.errors import InputError

MODES = ("suppress", "amplify")


@torch.no_grad()
def probabilities(
    loaded: Any, items: Sequence[PromptItem], token_ids: Sequence[int | None], interventions: Any = None,
    *, chat: bool = False, batch_size: int = 8, fixed_targets: Sequence[int] | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """The softmax probability ``[n]`` (float64) of each prompt's target at its last position, under
    ``interventions`` (a list of :class:`~neuronscope.trace.Intervention`, or None), and the target ids used.

    ``prediction`` targets are the unmodified model's prediction: pass ``fixed_targets`` (the ids returned by the
    run without interventions) so that the same token is measured after the intervention.
    """
    from neuronscope.runs.batching import AdaptiveBatcher
    from neuronscope.trace import intervene as intervening

    model, processor = loaded.model, loaded.processor
    ids = list(fixed_targets) if fixed_targets is not None else list(token_ids)
    rows = list(zip(range(len(items)), items, ids, strict=True))
    device = common.model_device(model)
    out_p, out_ids = [0.0] * len(items), [0] * len(items)

    def run(chunk: list[tuple[int, PromptItem, int | None]]) -> tuple[torch.Tensor, list[int]]:
        batch = encode(processor, [item.prompt for _, item, _ in chunk], model, chat, device)
        targets = target_set(model, processor, batch, [token for _, _, token in chunk],
                             [item.target for _, item, _ in chunk])
        if interventions:
            with intervening(model, interventions):
                logits = model(**batch.inputs).logits[:, -1]
        else:
            logits = model(**batch.inputs).logits[:, -1]
        probs = logits.double().softmax(-1).cpu()
        chosen = targets.token_ids[:, 0]
        return probs.gather(-1, chosen[:, None])[:, 0], chosen.tolist()

    for chunk, (p, chosen) in AdaptiveBatcher(batch_size).map(rows, run):
        for (index, _, _), value, token in zip(chunk, p.tolist(), chosen, strict=True):
            out_p[index], out_ids[index] = value, token
    return torch.tensor(out_p, dtype=torch.float64), out_ids


def interventions_for(neurons: torch.Tensor, mode: str, factor: float, positions: str, site: str) -> list[Any]:
    """The intervention list of a mode: ``suppress`` (×0) or ``amplify`` (×factor)."""
    from neuronscope.trace import amplify, suppress

    if mode == "suppress":
        return suppress(neurons, positions=positions, site=site)
    if mode == "amplify":
        return amplify(neurons, factor=factor, positions=positions, site=site)
    raise InputError(f"unknown mode '{mode}': use {', '.join(MODES)} or both")


def pcr_summary(before: torch.Tensor, after: torch.Tensor) -> dict[str, Any]:
    """Mean / std / min / max / n of PCR over prompts, and the mean probabilities before and after."""
    from neuronscope.evaluate import probability_change_ratio, summarise

    ratios = probability_change_ratio(before, after)
    return {"pcr": summarise(ratios).as_dict(), "p_before_mean": float(before.mean()),
            "p_after_mean": float(after.mean())}


def modes_of(text: str) -> list[str]:
    if text == "both":
        return list(MODES)
    if text not in MODES:
        raise InputError(f"--mode {text!r}: use suppress, amplify or both")
    return [text]


def intervene(
    ctx: typer.Context,
    neurons: NeuronsOpt = None,
    run: RunOpt = None,
    prompts: Annotated[Path | None, typer.Option(
        "--prompts", help="JSONL prompts (default: the --run's prompts).")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="A prompt (repeatable).")] = None,
    target: Annotated[list[str] | None, typer.Option(
        "--target", help="Target: a word, id:N or 'prediction' (default); one for all or one per prompt.")] = None,
    leading_space: Annotated[bool, typer.Option(help="Target words get a leading space.")] = True,
    chat: Annotated[bool, typer.Option(help="Wrap prompts in the chat template.")] = False,
    mode: Annotated[str, typer.Option(help="suppress (x0), amplify (x factor) or both.")] = "both",
    factor: Annotated[float, typer.Option(help="Amplification factor.")] = 2.0,
    positions: Annotated[str, typer.Option(help="Positions changed: last or all.")] = "last",
    site: Annotated[str | None, typer.Option(help="Neuron site (default: the run's, else neuron).")] = None,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    dtype: DtypeOpt = "fp32",
    device_map: DeviceMapOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    batch_size: BatchSizeOpt = 8,
) -> None:
    """Suppress or amplify neurons on prompts: target probabilities before / after and PCR.

    Neurons from --neurons or a locate run (--run: its model, prompts and site are the defaults).
    With --out, writes tables/intervene.csv, metrics.json and a report.

    \b
    Example:
      neuronscope intervene --run runs/paris --mode both --out runs/paris-intervene
      neuronscope intervene --model ./tiny-llama --neurons 3:17,5:2 --prompt "The capital of France is" \\
          --target Paris --mode suppress
    """
    from neuronscope.models import get_adapter
    from neuronscope.report import build_report
    from neuronscope.runs import RunDir

    options = common.settings(ctx, config)
    selected, run_config = common.neurons_from(options)
    options = model_options_from_run(options, run_config)
    common.require(options, "model")
    if options["positions"] not in ("last", "all"):
        raise InputError(f"--positions {options['positions']!r}: use last or all")
    chosen_modes = modes_of(options["mode"])
    items = read_items(options, fallback=run_config)
    site_name = options.get("site") or run_config.get("site") or "neuron"
    loaded = common.load(options)
    adapter = get_adapter(loaded.model)
    common.check_neurons_fit(selected, adapter.n_layers, adapter.d_ff)
    token_ids = resolve_targets(loaded.processor, items, adapter.vocab_size,
                                options.get("leading_space", run_config.get("leading_space", True)))
    results = RunDir(options["out"], overwrite=options["overwrite"]) if options.get("out") else None
    before, fixed = probabilities(loaded, items, token_ids, chat=options["chat"], batch_size=options["batch_size"])
    table = [{"id": it.id, "prompt": it.prompt, "target": it.target, "token_id": t, "p_before": float(p)}
             for it, t, p in zip(items, fixed, before.tolist(), strict=True)]
    metrics: dict[str, Any] = {"neurons": int(len(selected)), "prompts": len(items), "site": site_name}
    for name in chosen_modes:
        changes = interventions_for(selected, name, options["factor"], options["positions"], site_name)
        after, _ = probabilities(loaded, items, token_ids, changes, chat=options["chat"],
                                 batch_size=options["batch_size"], fixed_targets=fixed)
        summary = pcr_summary(before, after)
        metrics[name] = summary
        for row, p in zip(table, after.tolist(), strict=True):
            row[f"p_{name}"] = p
            row[f"pcr_{name}"] = (p - row["p_before"]) / row["p_before"] if row["p_before"] > 0 else float("nan")
        typer.echo(f"{name}: mean PCR {summary['pcr']['mean']:+.4f} (sd {summary['pcr']['std']:.4f}, "
                   f"n {summary['pcr']['n']}); mean P {summary['p_before_mean']:.4g} -> {summary['p_after_mean']:.4g}")
    if results is None:
        return
    results.write_config(common.recorded_config(options, "intervene"))
    results.write_meta({"runtime": common.runtime_record(options)})
    columns = ["id", "prompt", "target", "token_id", "p_before"] + [f"{k}_{m}" for m in chosen_modes
                                                                    for k in ("p", "pcr")]
    results.write_csv("tables/intervene.csv", table, columns)
    results.write_json("metrics.json", metrics)
    build_report(results.path)
    typer.echo(f"results in {results.path}")
