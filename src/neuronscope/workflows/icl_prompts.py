"""``icl-prompts``: write k-shot classification prompts of an ICL data set as a prompts JSONL file, so that every
prompt workflow runs on in-context learning: ``locate`` the neurons behind the predicted label, ``evaluate`` them
against random neurons, ``intervene`` on neurons or heads (``--heads-from`` a ``recipe icl`` run), ``routing`` on
a mixture-of-experts model.

The prompts are those of ``recipe icl`` (same sampler, templates and label words): ``--shots`` demonstrations
balanced over the classes, or ``--counts 3,1`` for a label imbalance, in ``--order`` (``sorted`` /
``reverse_sorted`` for recency), queries balanced over the classes and never among their own demonstrations. Each
line is ``{"id", "prompt", "target"}`` (the target is the query's true label word, scored with a leading space
after ``Sentiment:`` / ``Topic:``) plus the record of the prompt: ``query_class``, ``demo_classes``,
``label_words``, ``label_spans`` (character spans of every demonstration's label in ``prompt``). No model is loaded.

Example:
    >>> icl_prompts(ICLPromptsOptions(data=Path("../shared/data"), counts=[3, 1], out=Path("p.jsonl")))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from typing import Any

from neuronscope.errors import RunFolderError
from neuronscope.workflows.result import RunResult
from neuronscope.workflows.specs.papers import ICLPromptsOptions


def prompt_rows(prompts: list[Any], dataset: str) -> list[dict[str, Any]]:
    """The JSONL records of :class:`~neuronscope.inputs.icl.ICLPrompt` s (see the module docstring)."""
    return [{"id": f"{dataset}-{number}", "prompt": p.text, "target": p.label_words[p.query_class],
             "query_class": p.query_class, "demo_classes": list(p.demo_classes), "label_words": list(p.label_words),
             "label_spans": [list(span) for span in p.label_spans]} for number, p in enumerate(prompts)]


def icl_prompts(options: ICLPromptsOptions, *, loaded: Any = None) -> RunResult:
    """Run ``icl-prompts`` (see the module docstring); ``loaded`` is not used (no model)."""
    from neuronscope.inputs.icl import label_words_for, read_icl_dataset, sample_prompts
    from neuronscope.results.io import atomic_write_text
    from neuronscope.workflows.papers.icl_data import balanced_counts, icl_data_folder, template_for

    if options.out.exists() and not options.overwrite:
        raise RunFolderError(f"{options.out} exists; pass --overwrite to replace it or choose another --out file")
    data = read_icl_dataset(icl_data_folder(options.data, options.dataset), options.dataset)
    counts = list(options.counts) or balanced_counts(options.shots, len(data.classes))
    prompts = sample_prompts(data, n_prompts=options.n, counts=counts,
                             label_words=label_words_for(data, options.label_kind), order=options.order,
                             template=template_for(options.dataset), seed=options.seed)
    rows = prompt_rows(prompts, options.dataset)
    atomic_write_text(options.out, "".join(json.dumps(row) + "\n" for row in rows))
    per_class = [sum(row["query_class"] == c for row in rows) for c in range(len(data.classes))]
    metrics = {"prompts": len(rows), "dataset": options.dataset, "counts": counts, "order": options.order,
               "label_words": rows[0]["label_words"] if rows else [], "queries_per_class": per_class}
    lines = [f"{len(rows)} {options.dataset} prompts of {sum(counts)} demonstrations ({':'.join(map(str, counts))}, "
             f"{options.order} order; labels {', '.join(metrics['label_words'])}) written to {options.out}",
             f"next: neuronscope locate -m MODEL --prompts {options.out} --out runs/icl-neurons"]
    return RunResult("icl-prompts", str(options.out), metrics, lines)
