"""Collect the recipes' small result files into the repository's ``results/`` and print the RESULTS.md rows.

``python -m neuronscope.workflows.papers.summary --runs DIR --results results`` copies, for every recipe folder
``DIR/<name>/``, its ``config.json``, ``metrics.json`` and ``tables/*.csv`` (small JSON / CSV only: no tensors,
plots or HTML) into ``results/<name>/`` and prints one Markdown table row per headline metric.

Example:
    >>> rows = headline_rows({"knowledge_neurons": {"suppress": {...}, ...}})   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

MAX_COPY_BYTES = 2_000_000


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, (int, float)):
        return f"{100 * value:+.1f}%" if percent else f"{value:.3g}"
    return str(value)


def _mean(report: dict[str, Any] | None, kind: str) -> float | None:
    entry = (report or {}).get(kind)
    return entry.get("mean") if isinstance(entry, dict) else None


def headline_rows(all_metrics: dict[str, dict[str, Any]]) -> list[list[str]]:
    """``[experiment, metric, paper, ours, random]`` rows from each recipe's metrics."""
    rows: list[list[str]] = []
    q = all_metrics.get("qrnca")
    if q:
        for variant in ("qrnca", "na_only", "no_common_removal"):
            for mode in ("boost", "suppress"):
                report = q["pcr"].get(f"{variant}.{mode}")
                rows.append(["1 QRNCA", f"PCR {mode} own prompts ({variant})", "", _fmt(_mean(report, "own"), True),
                             _fmt(_mean(report, "random_own"), True)])
                rows.append(["1 QRNCA", f"PCR {mode} other domains ({variant})", "",
                             _fmt(_mean(report, "unrelated"), True), _fmt(_mean(report, "random_unrelated"), True)])
        for rule, result in q["prediction"].items():
            rows.append(["1 QRNCA", f"domain prediction accuracy ({rule})", "",
                         _fmt(result["accuracy"]), f"majority {_fmt(result['majority_baseline'])}"])
    kn = all_metrics.get("knowledge_neurons")
    if kn:
        rows.append(["2 knowledge neurons", "mean probability change, suppress ×0", "−29.0% (BERT)",
                     _fmt(_mean(kn["suppress"], "own"), True), _fmt(_mean(kn["suppress"], "random_own"), True)])
        rows.append(["2 knowledge neurons", "mean probability change, enhance ×2", "+31.2% (BERT)",
                     _fmt(_mean(kn["enhance"], "own"), True), _fmt(_mean(kn["enhance"], "random_own"), True)])
        rows.append(["2 knowledge neurons", "suppress: other facts", "",
                     _fmt(_mean(kn["suppress"], "unrelated"), True),
                     _fmt(_mean(kn["suppress"], "random_unrelated"), True)])
    lpi = all_metrics.get("lpi_facts")
    if lpi:
        for key, entry in lpi["summary"].items():
            rows.append(["3 LPI", f"probability drop, zero {key}", ">95% (Llama-7B, GPT-2)" if "ffn" in key else "",
                         _fmt(entry["probability_drop_mean"], True), _fmt(entry["random_probability_drop_mean"], True)])
            rows.append(["3 LPI", f"mean rank after, {key}", "", _fmt(entry["rank_after_mean"]),
                         _fmt(entry["random_rank_after_mean"])])
    ar = all_metrics.get("arithmetic")
    if ar:
        rows.append(["4 arithmetic", "test accuracy / P(answer), no ablation", "",
                     f"{_fmt(ar['test_base']['accuracy'])} / {_fmt(ar['test_base']['probability'])}", ""])
        for key, entry in ar["heads"].items():
            rows.append(["4 arithmetic", f"test accuracy / P(answer), ablate {key} heads {entry['heads']}", "",
                         f"{_fmt(entry['accuracy'])} / {_fmt(entry['probability'])}",
                         f"{_fmt(entry['random_accuracy'])} / {_fmt(entry['random_probability'])}"])
        for key, entry in ar["cna_neurons"].items():
            rows.append(["4 arithmetic", f"test accuracy / P(answer), zero {key} CNA neurons", "",
                         f"{_fmt(entry['accuracy'])} / {_fmt(entry['probability'])}",
                         f"{_fmt(entry['random_accuracy'])} / {_fmt(entry['random_probability'])}"])
    bias = all_metrics.get("bias")
    if bias:
        gap = bias["test"]["mean_abs_gap"]
        rows.append(["5 bias", "mean |P(occ|female) − P(occ|male)|, test wordings (before → after)", "",
                     f"{_fmt(gap['before'])} → {_fmt(gap['after'])}",
                     f"→ {_fmt((gap.get('random_after') or {}).get('mean'))}"])
        rows.append(["5 bias", "unrelated prompts: top-1 agreement / KL", "",
                     f"{_fmt(bias['test']['unrelated_top1_agreement'])} / {_fmt(bias['test']['unrelated_kl'])}",
                     f"{_fmt(_mean(bias['test'], 'random_unrelated_top1_agreement'))} / "
                     f"{_fmt(_mean(bias['test'], 'random_unrelated_kl'))}"])
    edit = all_metrics.get("fact_editing")
    if edit:
        for key, entry in edit["summary"].items():
            rows.append(["6 fact editing", f"{key} (before → edited)", "",
                         f"{_fmt(entry['before'])} → {_fmt(entry['edited'])}", _fmt(entry["random"])])
    return rows


def collect(runs: Path, results: Path) -> dict[str, dict[str, Any]]:
    """Copy the small files of every recipe folder under ``runs`` into ``results``; returns the metrics."""
    collected = {}
    for folder in sorted(p for p in runs.iterdir() if (p / "metrics.json").exists()):
        target = results / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for path in [folder / "config.json", folder / "metrics.json", *sorted((folder / "tables").glob("*.csv"))]:
            if path.exists() and path.stat().st_size <= MAX_COPY_BYTES:
                shutil.copyfile(path, target / path.name)
        collected[folder.name] = json.loads((folder / "metrics.json").read_text())
    return collected


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Copy recipe results into results/ and print RESULTS.md rows")
    parser.add_argument("--runs", required=True)
    parser.add_argument("--results", default="results")
    args = parser.parse_args(argv)
    metrics = collect(Path(args.runs), Path(args.results))
    print("| experiment | metric | paper | ours | random baseline |")
    print("| --- | --- | --- | --- | --- |")
    for row in headline_rows(metrics):
        print("| " + " | ".join(row) + " |")
    for name, entry in metrics.items():
        print(f"{name}: wall time {entry.get('wall_time', {}).get('total_s')} s")


if __name__ == "__main__":
    main()
