"""``icl-bias``: the bias step of ``recipe icl`` on heads a user names — majority-label bias (3:1 label mixes, each
query once with each class favoured) and recency bias (label-sorted and reverse-sorted orders of the same
demonstrations), before and after re-weighting the heads' attention from the last position to the label positions
(docs/ICL.md §2; :mod:`neuronscope.attribute.icl_bias`), against the same re-weighting of ``--draws`` random head
sets. The heads come from ``--heads layer.head,...`` or the top heads of a ``recipe icl`` folder
(``--heads-from``, whose model and label kind are then the defaults); the recency prior of each head is its mean
attention per demonstration slot on ``--n-calibration`` balanced prompts (queries never used for the bias
prompts), as in the recipe.

Files: ``bias_majority.json`` / ``bias_recency.json`` (:class:`~neuronscope.attribute.icl_bias.ICLBias`,
``load_result`` reads them), ``prompts.json`` (calibration and bias prompts), ``tables/bias.csv``,
``plots/5_bias/*.png``, ``metrics.json`` and ``report.html``.

Example:
    >>> icl_bias(ICLBiasOptions(data=Path("../shared/data"), heads_from=Path("runs/icl"),
    ...                         out=Path("runs/icl-bias")))                         # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neuronscope.workflows.common import SMOLLM2, finish_run, load, with_model_of
from neuronscope.workflows.head_interventions import fit_heads, read_icl_run
from neuronscope.workflows.options import parse_heads
from neuronscope.workflows.papers.common import open_run
from neuronscope.workflows.papers.icl import ICLRun, bias
from neuronscope.workflows.papers.icl_data import icl_data_folder, template_for
from neuronscope.workflows.papers.icl_files import write_bias_files
from neuronscope.workflows.result import RunResult
from neuronscope.workflows.specs.papers import ICLBiasOptions, ICLOptions


def icl_bias(options: ICLBiasOptions, *, loaded: Any = None) -> RunResult:
    """Run ``icl-bias`` (see the module docstring)."""
    from neuronscope.inputs.icl import read_icl_dataset
    from neuronscope.models.adapter import get_adapter
    from neuronscope.runs.folder import RunDir

    recipe = read_icl_run(options.heads_from) if options.heads_from else None
    folder = icl_data_folder(options.data, options.dataset)
    RunDir.check(options.out, overwrite=options.overwrite)
    heads = recipe.top(options.head_ranking, options.top_heads) if recipe else \
        torch.tensor(parse_heads(options.heads), dtype=torch.long)
    kind = options.label_kind or (recipe.label_kind if recipe else "natural")
    options = with_model_of(options, recipe.model if recipe else {})
    loaded = load(options, loaded, default=SMOLLM2)
    adapter = get_adapter(loaded.model)
    heads = fit_heads(heads, adapter.n_layers, adapter.n_heads)
    data = read_icl_dataset(folder, options.dataset)
    sizes = {"n_bias": options.n_bias, "n_locate": options.n_calibration}
    if options.limit is not None:
        sizes = {name: min(value, options.limit) for name, value in sizes.items()}
    settings = ICLOptions(data=options.data, out=options.out, seed=options.seed, dataset=options.dataset,
                          shots=options.shots, label_kind=kind, draws=options.draws, n_other_dataset=0,
                          **sizes)
    config = {"experiment": "icl_bias", **options.recorded(), "label_kind": kind, "data": str(folder),
              "heads": [f"{layer}.{head}" for layer, head in heads.tolist()],
              "heads_from": str(options.heads_from) if options.heads_from else None}
    state = ICLRun(settings, loaded.model, loaded.tokenizer, data, template_for(options.dataset),
                   open_run(options.out, config), generator=torch.Generator().manual_seed(options.seed))
    torch.manual_seed(options.seed)
    calibration = state.sample(kind, sizes["n_locate"], options.seed + 1, "calibration")
    used = sorted({data.texts.index(p.query) for p in calibration.prompts})  # the bias queries are other ones
    bias(state, kind, calibration, heads, used)
    state.run.write_json("prompts.json", state.prompts)
    write_bias_files(state.run, state.metrics["bias"])
    metrics = {"title": f"ICL bias on {len(heads)} heads ({options.dataset}, {kind} labels)", "label_kind": kind,
               "heads": config["heads"], "bias": state.metrics["bias"], "wall_time": state.watch.as_dict()}
    finish_run(state.run, metrics, _summary(state.metrics["bias"], len(heads)))
    return RunResult("icl-bias", str(options.out), metrics,
                     [*_summary(state.metrics["bias"], len(heads)).splitlines(),
                      f"results in {options.out} (report: {Path(options.out) / 'report.html'})"])


def _summary(results: dict[str, Any], n_heads: int) -> str:
    lines = []
    for kind, result in results.items():
        randoms = [value for value in result["random_reduction"] if value == value]  # NaN: no bias to reduce
        random = f"; random heads {sum(randoms) / len(randoms):+.1%}" if randoms else ""
        lines.append(f"{kind} bias (p(favoured) - 1/C): {result['before']['probability']:.4f} -> "
                     f"{result['mitigated']['probability']:.4f} with {n_heads} heads re-weighted "
                     f"(reduction {result['reduction']:+.1%}{random})")
    return "\n".join(lines)
