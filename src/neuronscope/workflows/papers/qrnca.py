"""Experiment 1: QRNCA / NA-ICA key neurons of MMLU domain questions (Chen, Dejl & Toni 2024) on SmolLM2.

Steps (hyper-parameters fixed from the paper, never tuned on these queries):
1. the domain MCQA set (:mod:`neuronscope.workflows.papers.mmlu_domains`): 3 prompt variants per question; only the
   variants the model answers right are kept and attributed (per variant, as the paper keeps prompts the model
   gets right; SmolLM2-135M is near chance on MMLU, so requiring all variants right keeps almost nothing);
2. NA of every FFN neuron (integrated gradients, Dai grid, ``steps`` steps; target = the answer-letter token at
   the last position) per prompt variant;
3. QRNCA (t = 0.2, u = 0.3, top-v = 10) and the paper's two ablations: NA without ICA, ICA without common-neuron
   removal;
4. PCR under boosting (×2) and suppressing (×0) each query's key neurons at the last position, on the query's own
   prompts and on prompts of other domains, against random sets with the same neurons per layer;
5. per-domain layer distribution of the key neurons (plot);
6. neuron-based domain prediction (2-fold: domain neurons from one half of the queries predict the other half's
   domain from their last-position activations), against the majority class.

Run: ``neuronscope recipe qrnca --out runs/qrnca --data ../shared/data [--limit N]``.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from neuronscope.aggregate.qrnca import qrnca_na_only, qrnca_without_common_removal, run_qrnca
from neuronscope.attribute import get_method
from neuronscope.bundled.knowledge import DOMAINS as SHAPES_DOMAINS
from neuronscope.errors import InputError, NothingProcessedError
from neuronscope.inputs import encode_prompts
from neuronscope.inputs.targets import word_targets
from neuronscope.measure.pcr import NeuronGroup, pcr_against_random
from neuronscope.measure.prediction import domain_specific_neurons, neuron_based_prediction
from neuronscope.measure.probability import PrefixCacheScorer
from neuronscope.models.adapter import get_adapter
from neuronscope.workflows.papers.common import (
    Stopwatch,
    default_model,
    finish_run,
    model_name,
    open_run,
    run_paper,
    write_table,
)
from neuronscope.workflows.papers.mmlu_domains import (
    DOMAINS,
    read_domain_items,
    screen_queries,
    screen_variants,
)
from neuronscope.workflows.result import RunResult
from neuronscope.workflows.specs.papers import QRNCAOptions

VARIANTS = {"qrnca": run_qrnca, "na_only": qrnca_na_only, "no_common_removal": qrnca_without_common_removal}
SOURCES: dict[str, tuple[str, ...]] = {"mmlu": tuple(DOMAINS), "shapes": SHAPES_DOMAINS}
TITLES = {"mmlu": "MMLU domains", "shapes": "the shapes world's domains"}


def shapes_model() -> Any:
    """The bundled shapes model as a ``LoadedModel`` (its language model answers text-only prompts)."""
    from neuronscope.bundled import SHAPES_VLM_PATH, load_shapes_vlm
    from neuronscope.models.loading import LoadedModel

    model, processor = load_shapes_vlm()
    return LoadedModel(model, processor, source=str(SHAPES_VLM_PATH))


def shapes_candidates(per_domain: int, *, n_variants: int = 3, seed: int = 0,
                      domains: Any = None) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """``per_domain`` multiple-choice questions per domain of the bundled world, drawn at random (seeded), each with
    ``n_variants`` prompt variants in the held-out wordings (``knowledge.mcqa_dataset("test")``)."""
    from neuronscope.bundled import mcqa_dataset

    records = mcqa_dataset("test", n_variants=n_variants, seed=seed)
    rng = random.Random(seed)
    chosen = []
    for domain in domains or SOURCES["shapes"]:
        mine = [r for r in records if r.domain == domain]
        chosen += rng.sample(mine, min(per_domain, len(mine)))
    return [(r.id, r.domain, list(zip(r.sentences, r.obj_label, strict=True))) for r in chosen]


def _attribute(model: Any, tokenizer: Any, prompt: str, letter: str, method: str, steps: int,
               leading_space: bool) -> torch.Tensor:
    """NA ``[layers, d_ff]`` of one prompt for its answer letter."""
    batch = encode_prompts(tokenizer, [prompt], model=model)
    targets = word_targets(tokenizer, batch, letter, leading_space=leading_space)
    options = {"steps": steps} if method == "integrated_gradients" else {}
    scores = get_method(method).function(model, batch, targets, **options)
    return scores.dense()[0, 0].float() if hasattr(scores, "dense") else scores.values[0, 0].float()


def _prediction(activations: torch.Tensor, labels: list[str], key_neurons: list[torch.Tensor], n_layers: int,
                d_ff: int, seed: int, top: int) -> dict[str, Any]:
    """2-fold neuron-based domain prediction; activations standardised per neuron over all queries (label-free)."""
    order = list(range(len(labels)))
    random.Random(seed).shuffle(order)
    folds = [sorted(order[::2]), sorted(order[1::2])]
    standardised = (activations - activations.mean(0)) / activations.std(0).clamp_min(1e-6)
    out: dict[str, Any] = {}
    for name, acts in (("raw_mean", activations), ("standardised_mean", standardised)):
        predicted, gold, train_majority = [None] * len(labels), list(labels), []
        for held, train in ((folds[0], folds[1]), (folds[1], folds[0])):
            neurons = domain_specific_neurons([key_neurons[i] for i in train], [labels[i] for i in train],
                                              n_layers, d_ff, top=top)
            report = neuron_based_prediction(acts[held], [labels[i] for i in held], neurons)
            for i, label in zip(held, report.predictions, strict=True):
                predicted[i] = label
            train_majority += [labels[i] for i in train]
        accuracy = sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)
        majority = Counter(gold).most_common(1)[0][1] / len(gold)
        out[name] = {"accuracy": accuracy, "majority_baseline": majority, "chance": 1 / len(set(gold)),
                     "n": len(gold)}
    return out


def run_qrnca_domains(
    out_dir: str | Path,
    *,
    model: Any = None,
    limit: int | None = None,
    seed: int = 0,
    per_domain_screened: int = 12,
    max_per_domain: int = 5,
    n_variants: int = 3,
    min_correct: int = 1,
    method: str = "integrated_gradients",
    steps: int = 10,
    top_v: int = 10,
    n_random: int = 3,
    n_unrelated: int = 4,
    leading_space: bool = True,
    domains: list[str] | None = None,
    source: str = "mmlu",
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run experiment 1 and write its results folder; returns the metrics.

    Args:
        out_dir: results folder.
        model: a ``LoadedModel`` (default SmolLM2-135M-Instruct).
        limit: at most this many kept queries per domain (overrides ``max_per_domain``; for quick runs).
        seed: seed of the question draw, prompt variants, unrelated rows and random neurons.
        per_domain_screened: questions drawn per domain and screened for correct answers.
        max_per_domain: kept queries per domain attributed (CPU budget).
        n_variants, min_correct: prompt variants per question; keep questions right in >= min_correct variants.
        method: attribution method name (``"integrated_gradients"``: NA of the paper).
        steps: IG steps (default 10 to fit CPU time; the paper uses 20).
        top_v: key neurons per query (paper: 10-20).
        n_random: random neuron sets per query for the PCR baseline.
        n_unrelated: prompts of other domains per query for the "unrelated" PCR.
        leading_space: target the letter token as written after "Answer:" (``" A"``); False: bare ``"A"``.
        domains: a subset of the domains (MMLU: six; shapes: ``neuronscope.bundled.DOMAINS``).
        data_dir: the data folder holding ``mmlu/`` (``source="mmlu"``), e.g. ``../shared/data``.
        source: ``"mmlu"`` (default: MMLU test questions from ``data_dir``, SmolLM2 by default) or ``"shapes"``
            (the bundled shapes model's own multiple-choice questions in five domains, on its held-out wordings;
            default model: the bundled model).
    """
    if source not in SOURCES:
        raise InputError(f"source must be one of {sorted(SOURCES)}, got {source!r}")
    if source == "mmlu" and data_dir is not None and not (Path(data_dir) / "mmlu").is_dir():
        raise InputError(f"{Path(data_dir) / 'mmlu'} not found: pass --data the folder that holds mmlu/ (e.g. "
                         "../shared/data of a neuronscope checkout)")
    watch = Stopwatch()
    loaded = model or (default_model() if source == "mmlu" else shapes_model())
    lm, tokenizer = loaded.model, loaded.tokenizer
    if source == "shapes":
        leading_space = False  # its word-level tokenizer has one token per letter
    adapter = get_adapter(lm)
    cap = limit if limit is not None else max_per_domain
    if limit is not None:
        per_domain_screened = min(per_domain_screened, 2 * limit)
    domain_list = list(domains or SOURCES[source])
    run = open_run(out_dir, {
        "experiment": "qrnca_domains", "source": source, "model": model_name(loaded), "seed": seed,
        "per_domain_screened": per_domain_screened, "max_per_domain": cap, "n_variants": n_variants,
        "min_correct": min_correct, "method": method, "steps": steps, "grid": "dai", "top_v": top_v,
        "attr_threshold": 0.2, "common_threshold": 0.3, "n_random": n_random, "n_unrelated": n_unrelated,
        "leading_space": leading_space, "domains": domain_list,
        "hyper_parameters": "fixed from the paper (t=0.2, u=0.3, v=10); not tuned on these queries"})

    with watch("screen"):
        kept, screen_stats = _screen(lm, tokenizer, source, data_dir, domain_list, per_domain_screened, cap,
                                     n_variants, min_correct, seed, leading_space)
    run.write_json("screening.json", screen_stats)
    if len({q.domain for q in kept}) < 2:
        raise NothingProcessedError(f"only {len(kept)} queries kept: screen more questions (per_domain_screened)")
    with watch("attribute"):
        na_per_query = [torch.stack([_attribute(lm, tokenizer, prompt, letter, method, steps, leading_space)
                                     for prompt, letter in zip(query.prompts, query.answer_letters, strict=True)])
                        for query in kept]
    run.write_tensors("na_scores.safetensors", {f"q{i}": na for i, na in enumerate(na_per_query)})

    ids, labels = [q.id for q in kept], [q.domain for q in kept]
    results = {name: function(na_per_query, query_ids=ids, top_v=top_v) for name, function in VARIANTS.items()}
    results["qrnca"].save(run.path / "qrnca")

    scorer, own_rows, unrelated_rows = _pcr_rows(lm, tokenizer, kept, labels, leading_space, n_unrelated, seed)
    with watch("pcr"):
        pcr, per_group_rows = _pcr_of_variants(scorer, results, ids, own_rows, unrelated_rows, adapter, n_random,
                                               seed)
    write_table(run, "tables/pcr_per_query.csv", per_group_rows)

    with watch("predict"):
        activations = scorer.last_activations()
        per_query = torch.stack([activations[rows].mean(0) for rows in own_rows])
        prediction = _prediction(per_query, labels, results["qrnca"].key_neurons, adapter.n_layers, adapter.d_ff,
                                 seed, top=50)
    layer_counts = _write_key_neurons(run, results["qrnca"], ids, labels, domain_list, adapter.n_layers)
    metrics = {
        "title": f"QRNCA / NA-ICA on {TITLES[source]} ({model_name(loaded)})",
        "n_queries": len(kept), "n_prompts": len(scorer), "queries_per_domain": dict(Counter(labels)),
        "screening": screen_stats, "n_common_neurons": int(len(results["qrnca"].common_neurons)),
        "pcr_mean": {key: {kind: (report[kind]["mean"] if report[kind] else None)
                           for kind in ("own", "unrelated", "random_own", "random_unrelated")}
                     for key, report in pcr.items()},
        "pcr": pcr, "prediction": prediction, "layer_counts": layer_counts, "wall_time": watch.as_dict(),
    }
    summary = (f"{len(kept)} {TITLES[source]} questions the model answers right in >= {min_correct} of "
               f"{n_variants} variants; QRNCA key neurons (top-{top_v}); PCR under boost x2 / suppress x0 vs random "
               "same-layer sets.")
    return finish_run(run, metrics, summary)


def qrnca(options: QRNCAOptions, *, loaded: Any = None) -> RunResult:
    """``recipe qrnca``: :func:`run_qrnca_domains` with the options' settings (see the module docstring)."""
    return run_paper(run_qrnca_domains, options, loaded, "recipe qrnca")


def _screen(lm: Any, tokenizer: Any, source: str, data_dir: Any, domain_list: list[str], per_domain_screened: int,
            cap: int, n_variants: int, min_correct: int, seed: int, leading_space: bool) -> tuple[list, dict]:
    """The queries the model answers right (at most ``cap`` per domain) and the screening figures."""
    if source == "mmlu":
        folder = Path(data_dir) / "mmlu" if data_dir is not None else None
        items = read_domain_items(per_domain_screened, seed=seed, domains=domain_list, folder=folder)
        queries, screen_stats = screen_queries(lm, tokenizer, items, n_variants=n_variants,
                                               min_correct=min_correct, seed=seed, leading_space=leading_space)
    else:
        candidates = shapes_candidates(per_domain_screened, n_variants=n_variants, seed=seed, domains=domain_list)
        queries, screen_stats = screen_variants(lm, tokenizer, candidates, min_correct=min_correct,
                                                leading_space=leading_space)
    kept: list = []
    for domain in domain_list:
        kept += [q for q in queries if q.domain == domain][:cap]
    return kept, screen_stats


def _pcr_rows(lm: Any, tokenizer: Any, kept: list, labels: list[str], leading_space: bool, n_unrelated: int,
              seed: int) -> tuple[PrefixCacheScorer, list[list[int]], list[list[int]]]:
    """The scorer of every kept prompt variant, each query's own rows and its unrelated rows (other domains)."""
    prompts, targets, owner = [], [], []
    for number, query in enumerate(kept):
        for prompt, letter in zip(query.prompts, query.answer_letters, strict=True):
            prompts.append(prompt)
            targets.append((" " if leading_space else "") + letter)
            owner.append(number)
    scorer = PrefixCacheScorer(lm, tokenizer, prompts, targets)
    rng = random.Random(seed)
    own_rows = [[r for r, o in enumerate(owner) if o == q] for q in range(len(kept))]
    unrelated_rows = []
    for q in range(len(kept)):
        others = [r for r, o in enumerate(owner) if labels[o] != labels[q]]
        unrelated_rows.append(sorted(rng.sample(others, min(n_unrelated, len(others)))))
    return scorer, own_rows, unrelated_rows


def _pcr_of_variants(scorer: PrefixCacheScorer, results: dict[str, Any], ids: list[str], own_rows: list[list[int]],
                     unrelated_rows: list[list[int]], adapter: Any, n_random: int,
                     seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """PCR of every variant's key neurons, boosted and suppressed, vs random sets; and the per-query rows."""
    pcr: dict[str, Any] = {}
    per_group_rows = []
    for name, result in results.items():
        groups = [NeuronGroup(result.key_neurons[q], own=own_rows[q], unrelated=unrelated_rows[q], name=ids[q])
                  for q in range(len(ids))]
        located = result.all_key_neurons()
        for mode, factor in (("boost", 2.0), ("suppress", 0.0)):
            report = pcr_against_random(scorer, groups, factor=factor, d_ff=adapter.d_ff, n_layers=adapter.n_layers,
                                        n_random=n_random, seed=seed, exclude=located).as_dict()
            for row in report.pop("per_group"):
                per_group_rows.append({"variant": name, "mode": mode, **row})
            pcr[f"{name}.{mode}"] = report
    return pcr, per_group_rows


def _write_key_neurons(run: Any, result: Any, ids: list[str], labels: list[str], domain_list: list[str],
                       n_layers: int) -> dict[str, list[int]]:
    """``tables/key_neurons.csv`` and ``plots/layers.png``; the per-domain layer counts."""
    from neuronscope.report.plots import layer_histogram_figure

    by_domain = {d: torch.cat([result.key_neurons[q] for q in range(len(ids)) if labels[q] == d]
                              or [torch.zeros(0, 2, dtype=torch.long)])
                 for d in domain_list}
    run.write_png("plots/layers.png", layer_histogram_figure({d: n for d, n in by_domain.items() if len(n)},
                                                             n_layers, "QRNCA key neurons per layer, by domain"))
    write_table(run, "tables/key_neurons.csv", [
        {"query": ids[q], "domain": labels[q], "rank": r, "layer": int(n[0]), "index": int(n[1]),
         "naica": float(result.key_scores[q][r])}
        for q in range(len(ids)) for r, n in enumerate(result.key_neurons[q].tolist())])
    return {d: torch.bincount(n[:, 0], minlength=n_layers).tolist() for d, n in by_domain.items()}
