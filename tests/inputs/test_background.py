"""Background prompts (inputs/background.py): the built-in set grouped against the target prompts, files' groups."""

from __future__ import annotations

import json
from pathlib import Path

from neuronscope.inputs.background import (
    DEFAULT_TEMPLATES,
    OTHER,
    SAME,
    background_groups,
    default_background,
    matches_template,
)
from neuronscope.workflows.specificity import background_for


def test_templates_match_instances_only() -> None:
    assert matches_template("The capital of France is", "The capital of {} is")
    assert matches_template("  the capital of New South Wales is ", "The capital of {} is")
    assert not matches_template("The capital of is", "The capital of {} is")
    assert not matches_template("The capital of France was", "The capital of {} is")
    assert matches_template("Gold is located in the continent of", "{} is located in the continent of")


def test_default_background_groups_against_the_targets_and_leaves_the_targets_out() -> None:
    records = default_background(["The capital of France is", "The capital of Italy is"])
    by_template = {}
    for record in records:
        by_template.setdefault(record.extra["template"], set()).add(record.extra["group"])
    assert by_template.pop("The capital of {} is") == {SAME}
    assert all(groups == {OTHER} for groups in by_template.values())
    prompts = [record.prompt for record in records]
    assert "The capital of Italy is" not in prompts and "The capital of Japan is" in prompts
    assert len(records) == sum(len(subjects) for _, subjects in DEFAULT_TEMPLATES) - 1
    assert "The chemical symbol for gold is" in prompts and "Windows was developed by" in prompts
    assert {record.target for record in records} == {"prediction"}
    assert set(background_groups(default_background(["2 + 2 ="]))) == {OTHER}


def test_a_background_file_keeps_its_groups_and_targets(tmp_path: Path) -> None:
    path = tmp_path / "background.jsonl"
    rows = [{"prompt": "a b", "group": "mine"}, {"prompt": "c d", "target": "e"}, {"prompt": "f g", "group": "mine"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    class Options:
        background = path

    records = background_for(Options(), ["x"])
    assert background_groups(records) == {"mine": [0, 2], "background": [1]}
    assert [record.target for record in records] == ["prediction", "e", "prediction"]
    # the run's recorded background is the default of a later command
    assert [r.prompt for r in background_for(object(), ["x"], {"background": str(path)})] == ["a b", "c d", "f g"]
