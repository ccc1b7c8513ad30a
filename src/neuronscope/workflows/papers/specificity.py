"""Specific neurons of ROME known facts on SmolLM2 (issue 16): the plain selection beside the specific one.

Steps (every setting is chosen on facts disjoint from the facts the figures are reported on):

1. screen the known facts (``known_1000.json``, file order): keep those whose answer's first token is the model's
   top-1 next token; keep templates with at least three kept facts and deal each template's facts in turn to three
   disjoint roles: **eval** (the figures), **background** (the contrast set of the specific selection) and **dev**
   (the settings are chosen on these), at most ``n_facts`` / ``n_facts`` / ``n_facts // 2`` facts;
2. per method (contribution, integrated gradients, log-probability increase), score every FFN neuron of every fact
   for its answer's first token at the last position;
3. per fact, the plain selection (its top-``top_k`` neurons) and the specific ones (:mod:`neuronscope.aggregate.
   specific`, the background facts as background, each for its own answer) over the strengths tried;
4. zero the selection at the last position: the change of the fact's own answer probability and of every other
   fact's answer probability (other facts with the same answer token apart — their answer *is* the fact's —, then
   same template / other templates), and ``n_random`` random same-layer sets for both
   (:func:`~neuronscope.measure.specificity.neuron_specificity`);
5. on the dev facts, choose each method's setting: among those keeping >= 80 % of the plain selection's median
   own-answer drop, the one with the smallest median drop of the other facts (if none keeps 80 %, the one keeping
   the most); report plain and chosen on the eval facts, with the whole trade-off curve (sizes ``ks`` x settings).

Figures: "own" = median over the eval facts of the relative change of the fact's own answer probability; "others" =
median over every (fact, other eval fact with another answer token) pair of the relative change of the other fact's
answer probability ("same answer": the pairs that share the answer token, reported apart);
random = the same for random same-layer sets, pooled over facts, draws and prompts.

``source="shapes"``: the bundled shapes model's concept neurons measured the same way (:mod:`.specificity_shapes`).

Run: ``neuronscope recipe specificity --data ../shared/data --out runs/specificity [--limit N]``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from neuronscope.aggregate.specific import SpecificSelection, select_specific
from neuronscope.errors import NothingProcessedError
from neuronscope.inputs import encode_prompts
from neuronscope.inputs.targets import first_token, token_targets
from neuronscope.measure.probability import BatchedPrefixScorer
from neuronscope.measure.specificity import neuron_specificity, pooled
from neuronscope.models.adapter import get_adapter
from neuronscope.workflows.papers.common import (
    Stopwatch,
    default_model,
    finish_run,
    known_facts_path,
    model_name,
    open_run,
    read_known_facts,
    run_paper,
    write_table,
)
from neuronscope.workflows.result import RunResult
from neuronscope.workflows.specs.papers import SpecificityRecipeOptions

METHODS = ("contribution", "integrated_gradients", "log_probability_increase")
ROLES = ("eval", "background", "dev")
GOAL = {"kept_own_drop": 0.8, "others_median_drop": 0.15}


def facts_by_role(model: Any, tokenizer: Any, facts: Sequence[dict[str, Any]], n_eval: int, n_background: int,
                  n_dev: int, n_templates: int | None = None) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """The facts the model completes (answer's first token top-1), dealt per template to eval / background / dev
    (``n_templates``: only the templates with the most such facts, so that eval facts share templates).

    Returns ``({role: facts}, number of facts the model completes)``; each fact gains ``target_id`` and
    ``target`` (the answer's first token and its text).
    """
    ids = [first_token(tokenizer, " " + fact["attribute"]) for fact in facts]
    ranks = BatchedPrefixScorer(model, tokenizer, [fact["prompt"] for fact in facts], ids).ranks()
    by_template: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for fact, target_id, rank in zip(facts, ids, ranks.tolist(), strict=True):
        if rank == 0:
            by_template[fact.get("template", fact["prompt"])].append(
                {**fact, "target_id": target_id, "target": tokenizer.decode([target_id])})
    caps = {"eval": n_eval, "background": n_background, "dev": n_dev}
    roles: dict[str, list[dict[str, Any]]] = {role: [] for role in ROLES}
    templates = [t for t, kept in by_template.items() if len(kept) >= len(ROLES)]
    if n_templates is not None:  # the most completed facts first; ties in file order
        templates = sorted(templates, key=lambda t: -len(by_template[t]))[:n_templates]
    for turn in range(max((len(by_template[t]) for t in templates), default=0)):
        for template in templates:  # every template gives each role one fact per turn, while it has some
            kept = by_template[template]
            for role in ROLES[turn % len(ROLES):] + ROLES[:turn % len(ROLES)]:
                if kept and len(roles[role]) < caps[role]:
                    roles[role].append(kept.pop(0))
    return roles, sum(1 for rank in ranks.tolist() if rank == 0)


def attribute_facts(model: Any, tokenizer: Any, facts: Sequence[dict[str, Any]], method: str, *, steps: int = 20,
                    candidates: Sequence[int] | None = None) -> torch.Tensor:
    """``[facts, layers, d_ff]`` scores of every FFN neuron for each fact's answer token at the last position."""
    from neuronscope.attribute import get_method

    rows = []
    for fact in facts:
        batch = encode_prompts(tokenizer, [fact["prompt"]], model=model)
        targets = token_targets(batch, [fact["target_id"]], tokenizer)
        options: dict[str, Any] = {"steps": steps} if method == "integrated_gradients" else {}
        if method == "log_probability_increase" and candidates is not None:
            options["candidates"] = candidates
        rows.append(get_method(method).function(model, batch, targets, **options).dense()[0, 0].float())
    return torch.stack(rows)


def measure_selection(scorer: Any, facts: Sequence[dict[str, Any]], scores: torch.Tensor, background: torch.Tensor,
                      selection: SpecificSelection, *, top_k: int, n_random: int, seed: int, adapter: Any) -> Any:
    """Every fact's selection zeroed at the last position, measured on it and on the other facts (same template /
    other templates), pooled over the facts (:func:`~neuronscope.measure.specificity.pooled`)."""
    reports = []
    for i, fact in enumerate(facts):
        neurons = select_specific(scores[i:i + 1], background if selection.uses_background else None, selection,
                                  top_k=top_k)[0]
        answer = [j for j, other in enumerate(facts) if j != i and other["target_id"] == fact["target_id"]]
        same = [j for j, other in enumerate(facts)
                if j != i and j not in answer and other.get("template") == fact.get("template")]
        groups = {"same answer": answer, "same template": same,
                  "other templates": [j for j in range(len(facts)) if j != i and j not in same + answer]}
        reports.append(neuron_specificity(scorer, neurons, target_rows=[i], groups=groups, d_ff=adapter.d_ff,
                                          n_layers=adapter.n_layers, n_random=n_random, seed=seed + i))
    return pooled(reports, everything="all others", leave_out=("same answer",))


def settings(strengths: Sequence[float], common_thresholds: Sequence[float]) -> list[SpecificSelection]:
    """The specific selections tried: contrast at each strength, inverse frequency at each common threshold."""
    return ([SpecificSelection("contrast", float(s)) for s in strengths]
            + [SpecificSelection("inverse-frequency", float(u)) for u in common_thresholds])


def label(selection: SpecificSelection) -> str:
    return "plain" if selection.rule == "plain" else f"{selection.rule} {selection.strength:g}"


def figures(report: Any) -> dict[str, Any]:
    """The medians of a pooled report: own, same template, other templates, all others, and random."""
    def median(summary: dict[str, Any] | None) -> float | None:
        return summary["median"] if summary else None

    out = {"own": median(report.target), "random_own": median(report.random_target), "n_facts":
           report.target["n"] if report.target else 0, "mean_neurons": report.n_neurons}
    for group in ("same answer", "same template", "other templates", "all others"):
        key = group.replace(" ", "_")
        out[key] = median(report.background.get(group))
        out[f"random_{key}"] = median(report.random_background.get(group))
    return out


def choose(plain: dict[str, Any], tried: dict[str, dict[str, Any]]) -> str:
    """The dev choice (module docstring, step 5): a label of ``tried``."""
    drop = -plain["own"] if plain["own"] else 0.0

    def kept(row: dict[str, Any]) -> float:
        return -row["own"] / drop if drop > 0 and row["own"] is not None else 0.0

    meeting = [name for name, row in tried.items() if kept(row) >= GOAL["kept_own_drop"]]
    if meeting:
        return min(meeting, key=lambda name: (abs(tried[name]["all_others"] or 0.0), name))
    return max(tried, key=lambda name: (kept(tried[name]), name))


def run_specificity(
    out_dir: str | Path,
    *,
    model: Any = None,
    limit: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    source: str = "facts",
    n_facts: int = 30,
    methods: Sequence[str] = METHODS,
    top_k: int | None = None,
    steps: int = 20,
    n_random: int = 5,
    strengths: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    common_thresholds: Sequence[float] = (0.05, 0.1, 0.3),
    ks: Sequence[int] = (10, 20, 40),
    n_candidates: int | None = 200,
    n_images: int = 24,
    n_templates: int | None = None,
) -> dict[str, Any]:
    """Run the specificity recipe and write its results folder; returns the metrics (see the module docstring)."""
    if source == "shapes":
        from neuronscope.workflows.papers.specificity_shapes import run_concept_specificity

        return run_concept_specificity(out_dir, model=model, limit=limit, seed=seed, top_k=top_k or 300,
                                       n_random=n_random, strengths=strengths, n_images=n_images)
    top_k = top_k or 20
    watch = Stopwatch()
    loaded = model or default_model()
    lm, tokenizer = loaded.model, loaded.tokenizer
    adapter = get_adapter(lm)
    n_eval = limit if limit is not None else n_facts
    config = {"experiment": "specificity", "model": model_name(loaded), "seed": seed, "n_facts": n_eval,
              "methods": list(methods), "top_k": top_k, "steps": steps, "grid": "dai", "n_random": n_random,
              "strengths": list(strengths), "common_thresholds": list(common_thresholds), "ks": list(ks),
              "n_candidates": n_candidates, "n_templates": n_templates, "intervention": "x0 at the last position",
              "choice": f"on the dev facts: keep >= {GOAL['kept_own_drop']:.0%} of the plain own drop, then the "
                        "smallest median drop of the other facts"}
    run = open_run(out_dir, config)
    with watch("screen"):
        roles, completed = facts_by_role(lm, tokenizer, read_known_facts(known_facts_path(data_dir)), n_eval,
                                         n_eval, max(3, n_eval // 2), n_templates)
    if min(len(facts) for facts in roles.values()) < 2:
        raise NothingProcessedError(f"only {[len(f) for f in roles.values()]} facts per role: raise --limit")
    write_table(run, "tables/facts.csv", [{"role": role, **{key: fact[key] for key in (
        "known_id", "template", "prompt", "target")}} for role, facts in roles.items() for fact in facts])
    scorers = {role: BatchedPrefixScorer(lm, tokenizer, [f["prompt"] for f in roles[role]],
                                         [f["target_id"] for f in roles[role]]) for role in ("eval", "dev")}
    candidates = _candidates(lm, tokenizer, [f for facts in roles.values() for f in facts], n_candidates)
    results, curve = {}, []
    for method in methods:
        with watch(f"attribute_{method}"):
            scores = {role: attribute_facts(lm, tokenizer, facts, method, steps=steps, candidates=candidates)
                      for role, facts in roles.items()}
        with watch(f"measure_{method}"):
            results[method], rows = _method(scorers, roles, scores, adapter, method, top_k=top_k, ks=ks,
                                            n_random=n_random, seed=seed, tried=settings(strengths, common_thresholds))
        curve += rows
    write_table(run, "tables/tradeoff.csv", curve)
    metrics = {"title": f"Specific neurons of ROME known facts ({model_name(loaded)})",
               "facts_completed": completed, "facts_per_role": {role: len(f) for role, f in roles.items()},
               "goal": GOAL, "table": _table(results), "methods": results, "wall_time": watch.as_dict()}
    return finish_run(run, metrics, f"{len(roles['eval'])} eval facts ({len(roles['background'])} background, "
                                    f"{len(roles['dev'])} dev); top-{top_k} per fact zeroed at the last position, "
                                    f"plain vs specific, {n_random} random same-layer sets.")


def specificity(options: SpecificityRecipeOptions, *, loaded: Any = None) -> RunResult:
    """``recipe specificity``: :func:`run_specificity` with the options' settings (see the module docstring)."""
    return run_paper(run_specificity, options, loaded, "recipe specificity")


def _candidates(model: Any, tokenizer: Any, facts: Sequence[dict[str, Any]], n: int | None) -> list[int] | None:
    """The union of every fact's ``n`` most likely next tokens (LPI's log-softmax runs over them), or None."""
    if not n:
        return None
    logits = BatchedPrefixScorer(model, tokenizer, [f["prompt"] for f in facts], [0] * len(facts)).last_logits()
    return sorted(set(logits.topk(n, dim=-1).indices.reshape(-1).tolist()) | {f["target_id"] for f in facts})


def _method(scorers: dict[str, Any], roles: dict[str, list[dict[str, Any]]], scores: dict[str, torch.Tensor],
            adapter: Any, method: str, *, top_k: int, ks: Sequence[int], n_random: int, seed: int,
            tried: list[SpecificSelection]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One method: the dev curve and choice, plain and chosen on the eval facts (with random sets), the eval curve."""
    def measure(role: str, selection: SpecificSelection, k: int, draws: int) -> dict[str, Any]:
        return figures(measure_selection(scorers[role], roles[role], scores[role], scores["background"], selection,
                                         top_k=k, n_random=draws, seed=seed, adapter=adapter))

    plain = SpecificSelection("plain")
    dev = {label(s): measure("dev", s, top_k, 0) for s in tried}
    dev_plain = measure("dev", plain, top_k, 0)
    chosen = next(s for s in tried if label(s) == choose(dev_plain, dev))
    rows = [{"method": method, "facts": "dev", "k": top_k, "selection": name, **row}
            for name, row in {"plain": dev_plain, **dev}.items()]
    result = {"chosen": label(chosen), "plain": measure("eval", plain, top_k, n_random),
              "specific": measure("eval", chosen, top_k, n_random)}
    for k in ks:
        for selection in [plain, *tried]:
            same = k == top_k and selection in (plain, chosen)
            row = result["plain" if selection == plain else "specific"] if same else measure("eval", selection, k, 0)
            rows.append({"method": method, "facts": "eval", "k": k, "selection": label(selection), **row})
    return result, rows


def _table(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{method / selection: {column: value}}``, the issue's table with the specific selection beside the plain."""
    table = {}
    for method, result in results.items():
        for kind in ("plain", "specific"):
            row = result[kind]
            name = f"{method} / {kind}" + (f" ({result['chosen']})" if kind == "specific" else "")
            plain_drop = -result["plain"]["own"] if result["plain"]["own"] else None
            table[name] = {"own answer (median)": row["own"], "same answer": row["same_answer"],
                           "same template": row["same_template"],
                           "other templates": row["other_templates"], "all other facts": row["all_others"],
                           "random own": row["random_own"], "random others": row["random_all_others"],
                           "kept own drop": (-row["own"] / plain_drop) if plain_drop else None,
                           "mean neurons": row["mean_neurons"]}
    return table
