"""``neuronscope locate``: score every neuron with a registered attribution method on prompts and select the top.

Steps: read and check the prompts and targets, load the model, open the results folder (refusing to touch an
earlier run unless ``--resume`` or ``--overwrite``), score this process's share of the prompts in batches
(resumable; the batch halves on out-of-memory), then rank 0 merges every shard and writes:

    scores.safetensors / scores.json   NeuronScores [prompts, 1, layers, d_ff] (layers = the --layers scored)
    neurons.json / neurons.csv         the selected neurons (layer, index, score), best first
    top_tokens.json                    each selected neuron's top tokens (W_U w_i)
    plots/layers.png, plots/scores.png layer histogram of the selection, distribution of the mean scores
    metrics.json, summary.txt, config.json, meta.json, report.html

Selection: the scores are averaged over prompts into ``[layers, d_ff]``; ``--threshold f`` keeps the neurons
above ``f`` times the maximum of that average, ``--top-k k`` keeps the ``k`` best (of those above the threshold,
when both are given; 20 when neither is).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from tqdm import tqdm

from neuronscope.cli import common
from neuronscope.cli.common import (
    BatchSizeOpt,
    ConfigOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    GgufOpt,
    ModelOpt,
    OutOpt,
    OverwriteOpt,
    ResumeOpt,
)
from neuronscope.cli.prompts import PromptItem, encode, read_items, resolve_targets, target_set
from neuronscope.errors import InputError
from neuronscope.trace import NEURON_SITES

DEFAULT_TOP_K = 20



def parse_layers(text: str | None) -> list[int] | None:
    """``None`` / ``"all"`` → None; ``"0,2,5"`` → ``[0, 2, 5]``; ``"1-3"`` → ``[1, 2, 3]``.

    Example:
        >>> parse_layers("0,2-4")
        [0, 2, 3, 4]
    """
    if text is None or str(text).strip().lower() in ("", "all"):
        return None
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                low, high = part.split("-", 1) if not part.startswith("-") else (part, "")
                out.extend(range(int(low), int(high) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise InputError(f"--layers {text!r}: write layer numbers and ranges, e.g. '0,2,5' or '4-7'") from None
    return out


def method_kwargs(function: Any, site: str, layers: list[int] | None, options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments for a method: site, layers and ``--option`` values the method accepts."""
    params = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [name for name, p in params.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY or (p.default is not inspect.Parameter.empty)]
    kwargs: dict[str, Any] = {}
    if "site" in params or takes_any:
        kwargs["site"] = site
    elif site != "neuron":
        raise InputError(f"method '{function.__name__}' has no site option; drop --site {site}")
    if "layers" in params or takes_any:
        kwargs["layers"] = layers
    elif layers is not None:
        raise InputError(f"method '{function.__name__}' scores every layer; drop --layers")
    unknown = sorted(set(options) - set(accepted)) if not takes_any else []
    if unknown:
        raise InputError(f"--option {', '.join(unknown)}: not an option of this method; it accepts "
                         f"{', '.join(a for a in accepted if a not in ('site', 'layers')) or 'none'}")
    kwargs.update(options)
    return kwargs


def score_chunk(
    model: torch.nn.Module, processor: Any, method: Any, kwargs: dict[str, Any],
    chunk: list[tuple[int, PromptItem, int | None]], chat: bool, keep_top: int | None = None,
) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """Score one batch of prompts; per prompt, its tensors and its record.

    Tensors: ``{"scores": [1, layers, d_ff]}``, or with ``keep_top`` only the ``keep_top`` best (signed) neurons:
    ``{"values": [1, k], "indices": [1, k]}`` (flat indices ``layer_row * d_ff + i``).
    """
    device = common.model_device(model)
    batch = encode(processor, [item.prompt for _, item, _ in chunk], model, chat, device)
    targets = target_set(model, processor, batch, [token for _, _, token in chunk],
                         [item.target for _, item, _ in chunk])
    scores = method(model, batch, targets, **kwargs)
    dense = scores.dense().detach().cpu()
    if keep_top is not None:
        flat = dense.flatten(2)
        top = flat.topk(min(keep_top, flat.shape[-1]), dim=-1)
    out = []
    for row, (_index, item, _) in enumerate(chunk):
        record = {"id": item.id, "prompt": item.prompt, "target": item.target,
                  "token_id": int(targets.token_ids[row, 0]), "token": targets.labels[row][0],
                  "layers": scores.meta.get("layers")}
        if keep_top is None:
            tensors = {"scores": dense[row].contiguous()}
        else:
            tensors = {"values": top.values[row].contiguous(), "indices": top.indices[row].contiguous()}
        out.append((tensors, record))
    return out


def select_neurons(
    mean_scores: torch.Tensor, layer_list: list[int], threshold: float | None, top_k: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neurons ``[n, 2]`` (actual layer numbers) and scores ``[n]``, best first (ties: lower layer, index).

    Example:
        >>> select_neurons(torch.tensor([[1.0, 3.0], [2.0, 0.5]]), [4, 7], 0.4, None)[0].tolist()
        [[4, 1], [7, 0]]
    """
    from neuronscope.aggregate import mask_to_neurons, threshold_relative_mask

    if threshold is None and top_k is None:
        top_k = DEFAULT_TOP_K
    if threshold is not None:
        candidates = mask_to_neurons(threshold_relative_mask(mean_scores, threshold))
    else:
        candidates = mask_to_neurons(torch.ones_like(mean_scores, dtype=torch.bool))
    values = mean_scores[candidates[:, 0], candidates[:, 1]]
    order = torch.sort(values, descending=True, stable=True).indices
    if top_k is not None:
        order = order[:top_k]
    chosen = candidates[order]
    layers = torch.tensor(layer_list, dtype=torch.long)[chosen[:, 0]] if len(chosen) else chosen[:, 0]
    return torch.stack([layers, chosen[:, 1]], dim=1), values[order]


def write_selection(run: Any, model: torch.nn.Module, processor: Any, neurons: torch.Tensor, values: torch.Tensor,
                    n_layers: int, explain_k: int) -> list[dict[str, Any]]:
    """neurons.json / neurons.csv / top_tokens.json and the layer plot; returns the rows written."""
    from neuronscope.explain import top_tokens
    from neuronscope.report.plots import layer_histogram_figure

    explained = top_tokens(model, neurons, processor, k=explain_k) if len(neurons) else None
    rows = []
    tokens: dict[str, list[list[Any]]] = {}
    for rank, ((layer, index), value) in enumerate(zip(neurons.tolist(), values.tolist(), strict=True)):
        rows.append({"rank": rank + 1, "layer": layer, "index": index, "score": float(value)})
        if explained is not None:
            tokens[f"{layer}:{index}"] = [[token, round(float(v), 4)] for token, v
                                          in zip(explained.tokens[rank], explained.values[rank].tolist(), strict=True)]
    run.write_json("neurons.json", {"neurons": rows, "n_layers": n_layers})
    run.write_csv("neurons.csv", rows, ["rank", "layer", "index", "score"])
    run.write_json("top_tokens.json", tokens)
    figure = layer_histogram_figure(neurons, n_layers)
    run.write_png("plots/layers.png", figure)
    _close(figure)
    return rows


def _close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


def finish(run: Any, options: dict[str, Any], items: list[PromptItem], loaded: Any, layer_list: list[int]) -> None:
    """Rank 0, once every example is done: merge, save scores, select, explain, plot, report."""
    from neuronscope.models import get_adapter
    from neuronscope.report import build_report
    from neuronscope.report.plots import score_histogram_figure
    from neuronscope.results.scores import NeuronScores
    from neuronscope.runs import merge_shards

    merged = merge_shards(run, expected=len(items))
    merged_tensors = run.file("merged.safetensors")
    if merged_tensors.exists():
        merged_tensors.unlink()  # scores.safetensors below holds the same values
    adapter = get_adapter(loaded.model)
    meta = {"method": options["method"], "site": options["site"], "layers": layer_list,
            "model": {**loaded.describe(), **adapter.describe()},
            "targets": [{"id": r["id"], "target": r["target"], "token_id": r["token_id"], "token": r["token"]}
                        for r in merged.records],
            "method_options": common.parse_key_values(options.get("option") or [])}
    grid = (len(layer_list), adapter.d_ff)
    if "scores" in merged.tensors:
        values = merged.tensors["scores"]  # [N, 1, layers, d_ff]
        scores = NeuronScores(values, meta=meta)
        mean_scores = values.double().mean(dim=(0, 1))
    else:  # --keep-top: a neuron outside an example's top-k counts as 0 in the mean
        values, indices = merged.tensors["values"], merged.tensors["indices"]  # [N, 1, k]
        scores = NeuronScores(values, indices, grid, {**meta, "top_k_kept": options["keep_top"]})
        total = torch.zeros(grid[0] * grid[1], dtype=torch.float64)
        total.index_add_(0, indices.reshape(-1), values.reshape(-1).double())
        mean_scores = (total / (values.shape[0] * values.shape[1])).view(grid)
    scores.save(run.file("scores"))
    neurons, chosen = select_neurons(mean_scores, layer_list, options.get("threshold"), options.get("top_k"))
    rows = write_selection(run, loaded.model, loaded.processor, neurons, chosen, adapter.n_layers,
                           options["explain_k"])
    figure = score_histogram_figure(mean_scores, title="Mean score of every neuron", log_count=True)
    run.write_png("plots/scores.png", figure)
    _close(figure)
    metrics = {"prompts": len(items), "neurons_scored": int(mean_scores.numel()), "neurons_selected": len(rows),
               "max_mean_score": float(mean_scores.max()), "min_mean_score": float(mean_scores.min())}
    run.write_json("metrics.json", metrics)
    run.write_text("summary.txt", f"{options['method']} scores of {mean_scores.numel()} neurons of "
                   f"{options['model']} over {len(items)} prompts; {len(rows)} selected "
                   f"(threshold {options.get('threshold')}, top-k {options.get('top_k') or ''}).\n")
    build_report(run.path)


def locate(
    ctx: typer.Context,
    model: ModelOpt = None,
    prompts: Annotated[Path | None, typer.Option(
        "--prompts", help="JSONL file, one {\"prompt\", \"target\"?, \"id\"?} per line.")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="A prompt (repeatable).")] = None,
    target: Annotated[list[str] | None, typer.Option(
        "--target", help="Target: a word, id:N, or 'prediction' (default); one for all prompts or one per prompt.")]
    = None,
    leading_space: Annotated[bool, typer.Option(
        help="Target words get a leading space (' Paris'); --no-leading-space for bare tokens ('A').")] = True,
    chat: Annotated[bool, typer.Option(help="Wrap prompts in the tokenizer's chat template.")] = False,
    method: Annotated[str, typer.Option(help="Attribution method (see 'neuronscope models').")] = "contribution",
    site: Annotated[str, typer.Option(help="Neuron site: neuron (default), act, up, gate, pre.")] = "neuron",
    layers: Annotated[str | None, typer.Option(help="Layers to score, e.g. '0,2,5' or '4-7' (default all).")]
    = None,
    threshold: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Keep neurons above this fraction of the maximum mean score.")] = None,
    top_k: Annotated[int | None, typer.Option(min=0, help=f"Keep the k best neurons (default {DEFAULT_TOP_K} "
                                                          "when no --threshold).")] = None,
    option: Annotated[list[str] | None, typer.Option(
        "--option", help="Method option name=value (repeatable), e.g. --option steps=20.")] = None,
    explain_k: Annotated[int, typer.Option(min=1, help="Top tokens shown per selected neuron.")] = 10,
    keep_top: Annotated[int | None, typer.Option(
        min=1, help="Store only each prompt's k best neurons (sparse; for big models and datasets).")] = None,
    gguf_file: GgufOpt = None,
    dtype: DtypeOpt = "fp32",
    device_map: DeviceMapOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    batch_size: BatchSizeOpt = 8,
) -> None:
    """Score every neuron with an attribution method on prompts and select the top ones.

    Writes scores (safetensors), the selected neurons (JSON, CSV), their top tokens, plots and a report into
    --out. Resumable (--resume); data-parallel when launched with torchrun (each process scores its shard).

    \b
    Example:
      neuronscope locate --model ./tiny-llama --prompt "The capital of France is" \\
          --target Paris --method contribution --top-k 20 --out runs/paris
      torchrun --nproc-per-node 2 -m neuronscope.cli.main locate --model M \\
          --prompts prompts.jsonl --out runs/x
    """
    from neuronscope.attribute import get_method
    from neuronscope.models import get_adapter
    from neuronscope.runs import RunDir
    from neuronscope.runs.batching import AdaptiveBatcher
    from neuronscope.runs.parallel import barrier, process_group

    options = common.settings(ctx, config)
    common.require(options, "model", "out")
    items = read_items(options)
    info = get_method(options["method"])
    layer_request = parse_layers(options.get("layers"))
    method_options = common.parse_key_values(options.get("option") or [])
    kwargs = method_kwargs(info.function, options["site"], layer_request, method_options)
    loaded = common.load(options)
    adapter = get_adapter(loaded.model)
    layer_list = adapter.resolve_layers(layer_request)
    token_ids = resolve_targets(loaded.processor, items, adapter.vocab_size, options["leading_space"])
    if options["site"] not in NEURON_SITES:
        raise InputError(f"--site {options['site']!r}: use one of {', '.join(NEURON_SITES)}")
    encode(loaded.processor, [items[0].prompt], loaded.model, options["chat"], common.model_device(loaded.model))
    with process_group() as proc:
        if proc.rank > 0:
            barrier()  # rank 0 checks and prepares the folder first
        run = RunDir(options["out"], resume=options["resume"], overwrite=options["overwrite"], rank=proc.rank,
                     world=proc.world)
        run.write_config(common.recorded_config(options, "locate"))
        run.write_meta({"runtime": common.runtime_record(options)})
        if proc.rank == 0:
            barrier()
        done = run.done_indices()
        from neuronscope.runs import shard_indices

        pending = [(index, items[index], token_ids[index])
                   for index in shard_indices(len(items), proc.rank, proc.world) if index not in done]
        batcher = AdaptiveBatcher(options["batch_size"], on_backoff=lambda old, new: typer.echo(
            f"out of memory at batch size {old}; going on with {new}", err=True))
        progress = tqdm(total=len(pending), desc=f"rank {proc.rank}" if proc.world > 1 else "prompts",
                        unit="prompt", disable=not sys.stderr.isatty())
        for chunk, results in batcher.map(pending, lambda chunk: score_chunk(
                loaded.model, loaded.processor, info.function, kwargs, chunk, options["chat"],
                options.get("keep_top"))):
            for (index, _, _), (tensors, record) in zip(chunk, results, strict=True):
                run.write_example(index, tensors, record)
            progress.update(len(chunk))
        progress.close()
        barrier()
        if proc.rank != 0:
            return
        finish(run, options, items, loaded, layer_list)
    typer.echo(f"{len(items)} prompts scored with {options['method']}; results in {run.path} "
               f"(report: {run.path / 'report.html'})")
    selected = run.read_json("neurons.json")["neurons"]
    tokens = run.read_json("top_tokens.json")
    for row in selected[:10]:
        key = f"{row['layer']}:{row['index']}"
        shown = " ".join(repr(token) for token, _ in tokens.get(key, [])[:5])
        typer.echo(f"  {key:>10}  {row['score']:+.4g}  {shown}")

