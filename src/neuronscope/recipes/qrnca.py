"""Experiment 1: QRNCA / NA-ICA key neurons of MMLU domain questions (Chen, Dejl & Toni 2024) on SmolLM2.

Steps (hyper-parameters fixed from the paper, never tuned on these queries):
1. the domain MCQA set (:mod:`neuronscope.recipes.mmlu_domains`): 3 prompt variants per question; only the
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

Run: ``python -m neuronscope.recipes.qrnca --out runs/qrnca [--limit N]``.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from neuronscope.aggregate.qrnca import qrnca_na_only, qrnca_without_common_removal, run_qrnca
from neuronscope.attribute import get_method
from neuronscope.bundled.world import DOMAINS as SHAPES_DOMAINS
from neuronscope.evaluate.prediction import domain_specific_neurons, neuron_based_prediction
from neuronscope.inputs import encode_prompts
from neuronscope.inputs.targets import word_targets
from neuronscope.models.adapter import get_adapter
from neuronscope.recipes.common import (
    LastTokenScorer,
    Stopwatch,
    default_model,
    finish_run,
    model_name,
    open_run,
    pcr_vs_random,
    recipe_main,
    write_table,
)
from neuronscope.recipes.mmlu_domains import DOMAINS, read_domain_items, screen_queries, screen_variants

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
    ``n_variants`` prompt variants in the held-out wordings (``world.mcqa_dataset("test")``)."""
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
    options = {"steps": steps, "batch_size": 160} if method == "integrated_gradients" else {}
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
        source: ``"mmlu"`` (default: MMLU test questions from ``../shared``, SmolLM2 by default) or ``"shapes"``
            (the bundled shapes model's own multiple-choice questions in five domains, on its held-out wordings;
            default model: the bundled model).
    """
    if source not in SOURCES:
        from neuronscope.errors import InputError

        raise InputError(f"source must be one of {sorted(SOURCES)}, got {source!r}")
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
    config = {"experiment": "qrnca_domains", "source": source, "model": model_name(loaded), "seed": seed,
              "per_domain_screened": per_domain_screened, "max_per_domain": cap, "n_variants": n_variants,
              "min_correct": min_correct, "method": method, "steps": steps, "grid": "dai", "top_v": top_v,
              "attr_threshold": 0.2, "common_threshold": 0.3, "n_random": n_random, "n_unrelated": n_unrelated,
              "leading_space": leading_space, "domains": domain_list,
              "hyper_parameters": "fixed from the paper (t=0.2, u=0.3, v=10); not tuned on these queries"}
    run = open_run(out_dir, config)

    with watch("screen"):
        if source == "mmlu":
            items = read_domain_items(per_domain_screened, seed=seed, domains=domain_list)
            queries, screen_stats = screen_queries(lm, tokenizer, items, n_variants=n_variants,
                                                   min_correct=min_correct, seed=seed, leading_space=leading_space)
        else:
            candidates = shapes_candidates(per_domain_screened, n_variants=n_variants, seed=seed, domains=domain_list)
            queries, screen_stats = screen_variants(lm, tokenizer, candidates, min_correct=min_correct,
                                                    leading_space=leading_space)
        kept: list = []
        for domain in domain_list:
            kept += [q for q in queries if q.domain == domain][:cap]
    run.write_json("screening.json", screen_stats)
    if len({q.domain for q in kept}) < 2:
        raise_msg = f"only {len(kept)} queries kept: screen more questions (per_domain_screened)"
        from neuronscope.errors import NeuronscopeError

        raise NeuronscopeError(raise_msg)

    with watch("attribute"):
        na_per_query = []
        for query in kept:
            na_per_query.append(torch.stack([
                _attribute(lm, tokenizer, prompt, letter, method, steps, leading_space)
                for prompt, letter in zip(query.prompts, query.answer_letters, strict=True)]))
    run.write_tensors("na_scores.safetensors", {f"q{i}": na for i, na in enumerate(na_per_query)})

    ids = [q.id for q in kept]
    labels = [q.domain for q in kept]
    results = {name: function(na_per_query, query_ids=ids, top_v=top_v) for name, function in VARIANTS.items()}
    results["qrnca"].save(run.path / "qrnca")

    # rows of the PCR scorer: every kept prompt variant
    prompts, targets, owner = [], [], []
    for number, query in enumerate(kept):
        for prompt, letter in zip(query.prompts, query.answer_letters, strict=True):
            prompts.append(prompt)
            targets.append((" " if leading_space else "") + letter)
            owner.append(number)
    scorer = LastTokenScorer(lm, tokenizer, prompts, targets)
    rng = random.Random(seed)
    own_rows = [[r for r, o in enumerate(owner) if o == q] for q in range(len(kept))]
    unrelated_rows = []
    for q in range(len(kept)):
        others = [r for r, o in enumerate(owner) if labels[o] != labels[q]]
        unrelated_rows.append(sorted(rng.sample(others, min(n_unrelated, len(others)))))

    pcr: dict[str, Any] = {}
    per_group_rows = []
    with watch("pcr"):
        for name, result in results.items():
            groups = [{"name": ids[q], "neurons": result.key_neurons[q], "own": own_rows[q],
                       "unrelated": unrelated_rows[q]} for q in range(len(kept))]
            located = result.all_key_neurons()
            for mode, factor in (("boost", 2.0), ("suppress", 0.0)):
                report = pcr_vs_random(scorer, groups, factor=factor, n_random=n_random, seed=seed,
                                       exclude=located)
                for row in report.pop("per_group"):
                    per_group_rows.append({"variant": name, "mode": mode, **row})
                pcr[f"{name}.{mode}"] = report
    write_table(run, "tables/pcr_per_query.csv", per_group_rows)

    with watch("predict"):
        activations = scorer.last_activations()
        per_query = torch.stack([activations[rows].mean(0) for rows in own_rows])
        prediction = _prediction(per_query, labels, results["qrnca"].key_neurons, adapter.n_layers, adapter.d_ff,
                                 seed, top=50)

    by_domain = {d: torch.cat([results["qrnca"].key_neurons[q] for q in range(len(kept)) if labels[q] == d]
                              or [torch.zeros(0, 2, dtype=torch.long)])
                 for d in domain_list}
    layer_counts = {d: torch.bincount(n[:, 0], minlength=adapter.n_layers).tolist() for d, n in by_domain.items()}
    from neuronscope.report.plots import layer_histogram_figure

    run.write_png("plots/layers.png", layer_histogram_figure({d: n for d, n in by_domain.items() if len(n)}, adapter.n_layers,
                                    "QRNCA key neurons per layer, by domain"))
    write_table(run, "tables/key_neurons.csv", [
        {"query": ids[q], "domain": labels[q], "rank": r, "layer": int(n[0]), "index": int(n[1]),
         "naica": float(results["qrnca"].key_scores[q][r])}
        for q in range(len(kept)) for r, n in enumerate(results["qrnca"].key_neurons[q].tolist())])

    table = {}
    for key, report in pcr.items():
        table[key] = {kind: (report[kind]["mean"] if report[kind] else None)
                      for kind in ("own", "unrelated", "random_own", "random_unrelated")}
    metrics = {
        "title": f"QRNCA / NA-ICA on {TITLES[source]} ({model_name(loaded)})",
        "n_queries": len(kept), "n_prompts": len(prompts),
        "queries_per_domain": dict(Counter(labels)),
        "screening": screen_stats,
        "n_common_neurons": int(len(results["qrnca"].common_neurons)),
        "pcr_mean": table,
        "pcr": pcr,
        "prediction": prediction,
        "layer_counts": layer_counts,
        "wall_time": watch.as_dict(),
    }
    summary = (f"{len(kept)} {TITLES[source]} questions the model answers right in >= {min_correct} of {n_variants} variants; "
               f"QRNCA key neurons (top-{top_v}); PCR under boost x2 / suppress x0 vs random same-layer sets.")
    return finish_run(run, metrics, summary)


def main(argv: list[str] | None = None) -> None:
    recipe_main(run_qrnca_domains, "QRNCA / NA-ICA on MMLU domains", argv)


if __name__ == "__main__":
    main()
