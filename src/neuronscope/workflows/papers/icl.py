"""Experiment 7: in-context heads (Yu & Ananiadou, EMNLP 2024) on k-shot sentence classification; docs/ICL.md says
what each figure is and which readings were chosen.

1. ICL accuracy with natural labels (negative/positive) and unrelated ones (foo/bar) on balanced prompts in random
   order; the label kind the mechanism is studied on is the one with the higher accuracy on the locate prompts
   (``--label-kind auto``), or the one asked for;
2. in-context heads on the locate prompts: LPI of each head's last-position output for the predicted label, and
   last-position ablation, per predicted class ("foo-heads", "bar-heads") and combined;
3. on evaluation prompts (queries disjoint from the locate prompts): accuracy with the top ``--fractions`` of the
   heads of each ranking zeroed at the last position, against as many random heads (``--draws`` draws); the
   accuracy of the other label kind;
4. per-demonstration projection (attention, logit minus, LPI at each label position) of the top LPI heads, the two
   towers (attention vs query/key and embedding similarity) and the shallow merge into label positions;
5. majority-label bias (3:1 label mixes, each query once with each class favoured) and recency bias (label-sorted
   and reverse-sorted orders of the same demonstrations), before and after re-weighting the top heads' attention to
   the label positions, against the same re-weighting of random heads;
6. ICL accuracy on the other data set (AG News for SST-2 and vice versa), unless ``--n-other-dataset 0``.

The data folder is the ``data/`` of a checkout's ``../shared`` (``--data ../shared/data``, which holds
``icl/sst2_872.tsv`` and ``icl/agnews_test_7600.tsv``) or that ``icl/`` folder itself. Files: ``metrics.json``
(every figure, the wall time of each step), one JSON per result (``heads_lpi.json``, ``heads_ablation.json``,
``positions.json``, ``towers.json``, ``merge.json``, ``bias_majority.json``, ``bias_recency.json``; read back with
``load_result``), ``prompts.json``, ``heads.safetensors``, ``tables/*.csv``, ``plots/<topic>/*.png`` and
``report.html`` (see :mod:`.icl_files`).

Run: ``neuronscope recipe icl --data ../shared/data --out runs/icl [--limit N]``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from neuronscope.workflows.papers.common import (
    Stopwatch,
    default_model,
    finish_run,
    model_name,
    open_run,
    run_paper,
)
from neuronscope.workflows.papers.icl_data import (
    balanced_counts,
    check_data,
    icl_data_folder,
    majority_mixes,
    other_dataset_name,
    template_for,
)
from neuronscope.workflows.result import RunResult
from neuronscope.workflows.specs.papers import ICL_DATASETS, ICLOptions


@dataclass
class ICLRun:
    """What the steps share: the settings, the model, the data, the results folder, the figures and the clock."""

    options: ICLOptions
    model: Any
    tokenizer: Any
    data: Any
    template: Any
    run: Any
    watch: Stopwatch = field(default_factory=Stopwatch)
    metrics: dict[str, Any] = field(default_factory=dict)
    prompts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    generator: torch.Generator = field(default_factory=torch.Generator)

    @property
    def sizes(self) -> tuple[int, int]:
        from neuronscope.models.adapter import get_adapter

        adapter = get_adapter(self.model)
        return adapter.n_layers, adapter.n_heads

    @property
    def balanced(self) -> list[int]:
        return balanced_counts(self.options.shots, len(self.data.classes))

    def words(self, kind: str) -> list[str]:
        from neuronscope.inputs.icl import label_words_for

        return label_words_for(self.data, kind)

    def encode(self, prompts: list, name: str | None = None) -> Any:
        """Encode prompts ordered by token length (each chunk of a batch is padded little); recorded as ``name``."""
        from neuronscope.inputs.icl import encode_icl

        ordered = sorted(prompts, key=lambda p: len(self.tokenizer(p.text)["input_ids"]))
        if name is not None:
            self.prompts[name] = [{"text": p.text, "query_class": p.query_class, "demo_classes": list(p.demo_classes),
                                   "label_words": list(p.label_words)} for p in ordered]
        return encode_icl(self.tokenizer, ordered, model=self.model)

    def sample(self, kind: str, n: int, seed: int, name: str, exclude: Any = ()) -> Any:
        from neuronscope.inputs.icl import sample_prompts

        return self.encode(sample_prompts(self.data, n_prompts=n, counts=self.balanced, label_words=self.words(kind),
                                          template=self.template, seed=seed, exclude=exclude), name)


def _probability_of_truth(log_probs: torch.Tensor, classes: torch.Tensor) -> float:
    return float(log_probs.softmax(-1).gather(1, classes[:, None]).mean())


def choose_label_kind(state: ICLRun) -> tuple[str, Any]:
    """Step 1: accuracy of both label kinds on the locate prompts; the kind to study and its locate prompts."""
    from neuronscope.attribute.icl_heads import accuracy_from_log_probabilities, label_log_probabilities

    options, sets, accuracy = state.options, {}, {}
    for kind in ("natural", "unrelated"):
        sets[kind] = state.sample(kind, options.n_locate, options.seed + 1, f"locate_{kind}")
        scores = label_log_probabilities(state.model, sets[kind])["clean"]
        accuracy[kind] = accuracy_from_log_probabilities(scores, sets[kind].query_classes,
                                                         state.words(kind)).as_dict()
    kind = options.label_kind if options.label_kind != "auto" else max(accuracy, key=lambda k: accuracy[k]["accuracy"])
    state.metrics.update(locate_accuracy=accuracy, label_kind=kind)
    return kind, sets[kind]


def locate(state: ICLRun, prompts: Any) -> tuple[Any, Any]:
    """Step 2: in-context heads by LPI and by last-position ablation."""
    from neuronscope.attribute.icl_heads import head_count, locate_in_context_heads

    with state.watch("locate_lpi"):
        by_lpi = locate_in_context_heads(state.model, prompts, method="lpi")
    with state.watch("locate_ablation"):
        by_ablation = locate_in_context_heads(state.model, prompts, method="ablation", chunk_size=16)
    by_lpi.save(state.run.file("heads_lpi.json"))
    by_ablation.save(state.run.file("heads_ablation.json"))
    most = max(head_count(f, *state.sizes) for f in state.options.fractions)
    n_classes = len(state.data.classes)
    state.metrics["heads"] = {
        "lpi_top": by_lpi.top(most).tolist(), "ablation_top": by_ablation.top(most).tolist(),
        "lpi_per_label_top": [by_lpi.top(3, label=c).tolist() for c in range(n_classes)],
        "ablation_per_label_top": [by_ablation.top(3, label=c).tolist() for c in range(n_classes)],
        "counts_per_label": by_lpi.counts,
    }
    return by_lpi, by_ablation


def ablate(state: ICLRun, kind: str, rankings: dict[str, Any], used: list[int]) -> None:
    """Step 3: accuracy with the top heads zeroed at the last position vs random heads; the other label kind."""
    from neuronscope.attribute.icl_heads import (
        ablation_condition,
        accuracy_from_log_probabilities,
        head_count,
        label_log_probabilities,
        random_heads,
    )

    options, model = state.options, state.model
    evaluation = state.sample(kind, options.n_eval, options.seed + 2, f"evaluate_{kind}", exclude=used)
    conditions = {"clean": lambda chunk: contextlib.nullcontext()}
    counts = list(dict.fromkeys(head_count(f, *state.sizes) for f in options.fractions))
    for n in counts:
        for name, ranking in rankings.items():
            conditions[f"{name}_top_{n}"] = ablation_condition(model, ranking.top(n))
        exclude = torch.cat([ranking.top(n) for ranking in rankings.values()])
        for draw in range(options.draws):
            heads = random_heads(n, *state.sizes, state.generator, exclude=exclude)
            conditions[f"random_{n}_{draw}"] = ablation_condition(model, heads)
    scores = label_log_probabilities(model, evaluation, conditions, chunk_size=16)
    figures = {}
    for name, value in scores.items():
        accuracy = accuracy_from_log_probabilities(value, evaluation.query_classes, state.words(kind), name)
        figures[name] = {"accuracy": accuracy.accuracy, "predicted_share": accuracy.predicted_share,
                         "p_true": _probability_of_truth(value, evaluation.query_classes)}
    for n in counts:
        randoms = [figures[f"random_{n}_{d}"]["accuracy"] for d in range(options.draws)]
        figures[f"random_{n}_summary"] = {"mean": sum(randoms) / len(randoms), "min": min(randoms),
                                          "max": max(randoms)}
    state.metrics.update(ablation=figures, eval_accuracy={kind: figures["clean"]["accuracy"]}, head_counts=counts)
    if options.n_eval_other:
        other = "unrelated" if kind == "natural" else "natural"
        other_set = state.sample(other, options.n_eval_other, options.seed + 2, f"evaluate_{other}", exclude=used)
        value = label_log_probabilities(model, other_set)["clean"]
        accuracy = accuracy_from_log_probabilities(value, other_set.query_classes, state.words(other))
        state.metrics["eval_accuracy"][other] = accuracy.accuracy
        state.metrics["eval_accuracy_detail"] = {other: accuracy.as_dict()}


def mechanism(state: ICLRun, prompts: Any, top: torch.Tensor) -> None:
    """Step 4: per-demonstration projection, two towers, shallow merge."""
    from neuronscope.attribute.icl_projection import attribute_head_positions
    from neuronscope.attribute.icl_towers import label_merge, two_towers

    options = state.options
    with state.watch("projection"):
        attribution = attribute_head_positions(state.model, prompts.select(range(min(options.n_attribution,
                                                                                   len(prompts)))), top)
    attribution.save(state.run.file("positions.json"))
    state.metrics["positions"] = {"heads": attribution.heads, "mean_by_class": attribution.mean_by_class,
                                  "label_share": attribution.label_share,
                                  "mass_output_correlation": attribution.mass_output_correlation}
    with state.watch("towers_merge"):
        towers = two_towers(state.model, prompts, top)
        merge = label_merge(state.model, prompts.select(range(min(options.n_merge, len(prompts)))))
    towers.save(state.run.file("towers.json"))
    merge.save(state.run.file("merge.json"))
    state.metrics["towers"] = {"heads": towers.heads, "correlation": towers.correlation,
                               "same_label_attention": towers.same_label_attention,
                               "other_label_attention": towers.other_label_attention}
    state.metrics["merge"] = merge.as_dict()


def bias(state: ICLRun, kind: str, calibration_prompts: Any, top: torch.Tensor, used: list[int]) -> None:
    """Step 5: majority-label and recency bias before/after re-weighting the top heads, vs random heads."""
    from neuronscope.attribute.icl_bias import (
        label_attention,
        majority_classes,
        majority_factors,
        measure_bias,
        recency_factors,
        recent_classes,
    )
    from neuronscope.attribute.icl_heads import random_heads
    from neuronscope.inputs.icl import reorder, sample_prompts

    options, model, (layers, heads) = state.options, state.model, state.sizes
    n_classes, words = len(state.data.classes), state.words(kind)
    with state.watch("bias_majority"):
        calibration = label_attention(model, calibration_prompts)[0].view(len(calibration_prompts), layers, heads, -1)
        controls = [random_heads(len(top), layers, heads, state.generator, exclude=top) for _ in range(options.draws)]
        mixed = []
        for mix in majority_mixes(options.shots, n_classes):  # the same queries under every mix
            mixed += sample_prompts(state.data, n_prompts=options.n_bias, counts=mix, label_words=words,
                                    template=state.template, seed=options.seed + 3, exclude=used)
        majority = state.encode(mixed, "bias_majority")
        result = measure_bias(model, majority, majority_classes(majority.demo_classes, n_classes), top,
                              kind="majority", factors_for=lambda h: majority_factors(majority, h),
                              control_heads=controls)
    result.save(state.run.file("bias_majority.json"))
    state.metrics["bias"] = {"majority": result.as_dict()}
    with state.watch("bias_recency"):
        base = sample_prompts(state.data, n_prompts=options.n_bias, counts=state.balanced, label_words=words,
                              order="sorted", template=state.template, seed=options.seed + 4, exclude=used)
        recency = state.encode(base + [reorder(p, "reverse_sorted", state.template) for p in base], "bias_recency")
        result = measure_bias(model, recency, recent_classes(recency.demo_classes), top, kind="recency",
                              factors_for=lambda h: recency_factors(calibration, h, len(recency)),
                              control_heads=controls)
    result.save(state.run.file("bias_recency.json"))
    state.metrics["bias"]["recency"] = result.as_dict()


def other_dataset(state: ICLRun, folder: Path) -> None:
    """Step 6: ICL accuracy (both label kinds) on the other data set, balanced demonstrations."""
    from neuronscope.attribute.icl_heads import accuracy_from_log_probabilities, label_log_probabilities
    from neuronscope.inputs.icl import label_words_for, read_icl_dataset, sample_prompts

    name = other_dataset_name(state.options.dataset)
    data = read_icl_dataset(icl_data_folder(folder, name), name)
    counts = balanced_counts(state.options.shots, len(data.classes))
    entry: dict[str, Any] = {"name": name}
    for kind in ("natural", "unrelated"):
        words = label_words_for(data, kind)
        icl = state.encode(sample_prompts(data, n_prompts=state.options.n_other_dataset, counts=counts,
                                          label_words=words, template=template_for(name),
                                          seed=state.options.seed + 5), f"{name}_{kind}")
        value = label_log_probabilities(state.model, icl)["clean"]
        entry[kind] = accuracy_from_log_probabilities(value, icl.query_classes, words).as_dict()
    state.metrics["other_dataset"] = entry


def run_icl(
    out_dir: str | Path,
    *,
    model: Any = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    dataset: str = "sst2",
    shots: int = 4,
    label_kind: str = "auto",
    n_locate: int = 32,
    n_eval: int = 80,
    n_bias: int = 40,
    n_eval_other: int = 48,
    n_attribution: int = 16,
    n_merge: int = 12,
    n_other_dataset: int = 32,
    fractions: tuple[float, ...] | list[float] = (0.01, 0.02),
    mitigate_fraction: float = 0.02,
    draws: int = 5,
) -> dict[str, Any]:
    """Run experiment 7 (see the module docstring) and write its results folder; returns the metrics.

    The settings are those of :class:`~neuronscope.workflows.specs.papers.ICLOptions` (checked the same way);
    ``limit`` caps every prompt count, for a quick run.
    """
    from neuronscope.attribute.icl_heads import head_count
    from neuronscope.inputs.icl import read_icl_dataset
    from neuronscope.workflows.papers.icl_files import write_icl_files

    sizes = dict(n_locate=n_locate, n_eval=n_eval, n_bias=n_bias, n_eval_other=n_eval_other,
                 n_attribution=n_attribution, n_merge=n_merge, n_other_dataset=n_other_dataset)
    if limit is not None:
        sizes = {name: min(value, limit) for name, value in sizes.items()}
    options = ICLOptions(data=Path(data_dir) if data_dir is not None else None, out=Path(out_dir), seed=seed,
                         limit=limit, dataset=dataset, shots=shots, label_kind=label_kind, fractions=list(fractions),
                         mitigate_fraction=mitigate_fraction, draws=draws, **sizes)
    folder = check_data(options)
    data = read_icl_dataset(folder, options.dataset)
    loaded = model or default_model()
    torch.manual_seed(options.seed)
    config = {"experiment": "in_context_heads", **options.recorded(), "model": model_name(loaded),
              "data": str(folder), "n_classes": ICL_DATASETS[options.dataset]}
    state = ICLRun(options, loaded.model, loaded.tokenizer, data, template_for(options.dataset),
                   open_run(out_dir, config), generator=torch.Generator().manual_seed(options.seed))
    kind, prompts = choose_label_kind(state)
    by_lpi, by_ablation = locate(state, prompts)
    used = sorted({data.texts.index(p.query) for p in prompts.prompts})  # no locate query is used again
    with state.watch("ablation"):
        ablate(state, kind, {"lpi": by_lpi, "ablation": by_ablation}, used)
    top = by_lpi.top(head_count(options.mitigate_fraction, *state.sizes))
    mechanism(state, prompts, top)
    bias(state, kind, prompts, top, used)
    if options.n_other_dataset:
        with state.watch("other_dataset"):
            other_dataset(state, options.data)
    state.metrics["wall_time"] = state.watch.as_dict()
    state.metrics["machine"] = f"{next(state.model.parameters()).device.type}, torch {torch.__version__}, " \
                               f"{torch.get_num_threads()} thread(s)"
    write_icl_files(state, by_lpi, by_ablation)
    title = f"In-context heads ({options.dataset}, {options.shots} shots, {_short_name(loaded)})"
    eval_accuracy = state.metrics["eval_accuracy"][kind]
    return finish_run(state.run, {"title": title, **state.metrics},
                      f"ICL on {options.dataset} with {kind} labels: accuracy {eval_accuracy:.1%} on "
                      f"{options.n_eval} evaluation prompts; in-context heads located on {options.n_locate} "
                      "prompts by LPI and by ablation; bias measured before and after re-weighting the top heads.")


def _short_name(loaded: Any) -> str:
    """The model's folder or GGUF file name, for titles."""
    info = loaded.describe() if callable(getattr(loaded, "describe", None)) else {}
    source = info.get("gguf_file") or info.get("model") if isinstance(info, dict) else None
    return Path(str(source)).name if source else type(loaded.model).__name__


def icl(options: ICLOptions, *, loaded: Any = None) -> RunResult:
    """``recipe icl``: :func:`run_icl` with the options' settings (see the module docstring); the data folder is
    checked before the model is loaded."""
    check_data(options)
    return run_paper(run_icl, options, loaded, "recipe icl")
