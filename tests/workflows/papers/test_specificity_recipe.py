"""The specificity recipe end to end on a tiny Llama (the pipeline, not the figures): known facts written so that
the model completes every one (their answers are its own top-1 words), three roles dealt per template, every table
and the pooled figures of each selection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from helpers.word_models import save_tiny_llama
from neuronscope.models import load_model
from neuronscope.workflows.papers.specificity import run_specificity

TEMPLATES = {"the capital of {} is": ["france", "rome", "berlin", "madrid", "city", "country", "red", "blue", "green"],
             "the colour of the {} is": ["sky", "grass", "cat", "dog"],
             "{} and the dog": ["the cat", "a cat", "the sky", "a dog"]}


def test_recipe_reports_plain_and_specific_on_the_eval_facts(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    loaded = load_model(save_tiny_llama(tmp_path / "llama", seed=1))
    facts = []
    for template, subjects in TEMPLATES.items():
        for subject in subjects:
            prompt = template.format(subject)
            with torch.no_grad():
                ids = loaded.tokenizer(prompt, return_tensors="pt")
                best = int(loaded.model(**ids).logits[0, -1].argmax())
            facts.append({"known_id": len(facts), "prompt": prompt, "template": template, "subject": subject,
                          "attribute": loaded.tokenizer.convert_ids_to_tokens(best)})
    (tmp_path / "data" / "facts").mkdir(parents=True)
    (tmp_path / "data" / "facts" / "known_1000.json").write_text(json.dumps(facts))
    out = tmp_path / "run"
    metrics = run_specificity(out, model=loaded, data_dir=tmp_path / "data", limit=3, methods=["contribution"],
                              top_k=3, n_random=1, strengths=(1.0,), common_thresholds=(0.5,), ks=(2, 3),
                              n_candidates=0)
    assert metrics["facts_per_role"] == {"eval": 3, "background": 3, "dev": 3}
    roles = [line.split(",")[0] for line in (out / "tables" / "facts.csv").read_text().splitlines()[1:]]
    assert sorted(roles) == ["background"] * 3 + ["dev"] * 3 + ["eval"] * 3
    result = metrics["methods"]["contribution"]
    assert result["chosen"] in ("contrast 1", "inverse-frequency 0.5")
    for kind in ("plain", "specific"):
        row = result[kind]
        assert row["n_facts"] == 3 and math.isfinite(row["own"]) and math.isfinite(row["all_others"])
    assert result["plain"]["random_own"] is not None
    assert set(metrics["table"]) == {"contribution / plain", f"contribution / specific ({result['chosen']})"}
    curve = (out / "tables" / "tradeoff.csv").read_text().splitlines()
    assert len(curve) == 1 + 3 + 2 * 3  # header, the dev rows (plain + 2 tried), eval rows (2 sizes x 3)
    assert (out / "report.html").exists() and (out / "metrics.json").exists()
    # one template only: every other eval fact is of the same template
    metrics = run_specificity(tmp_path / "one", model=loaded, data_dir=tmp_path / "data", limit=3, n_templates=1,
                              methods=["contribution"], top_k=3, n_random=0, strengths=(1.0,), common_thresholds=(),
                              ks=(3,), n_candidates=0)
    plain = metrics["methods"]["contribution"]["plain"]
    assert plain["other_templates"] is None and plain["same_template"] == plain["all_others"]
    templates = {line.split(",")[2] for line in (tmp_path / "one" / "tables" / "facts.csv").read_text().splitlines()[1:]}
    assert len(templates) == 1
