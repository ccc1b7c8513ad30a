"""QRNCA on the bundled model's own multiple-choice questions (``source="shapes"``): it answers them, and
suppressing a query's key neurons lowers its answer more than random neurons of the same layers do."""

from __future__ import annotations

import pytest

from neuronscope.errors import InputError
from neuronscope.workflows.papers.qrnca import run_qrnca_domains, shapes_candidates

pytestmark = pytest.mark.integration


def test_candidates_are_the_worlds_held_out_prompt_variants():
    candidates = shapes_candidates(3, n_variants=2, seed=1, domains=["geography", "animals"])
    assert [domain for _, domain, _ in candidates] == ["geography"] * 3 + ["animals"] * 3
    for _, _, variants in candidates:
        assert len(variants) == 2
        for prompt, letter in variants:
            assert prompt.endswith("Answer:") and letter in "ABCD"


def test_qrnca_on_the_shapes_world_beats_random_neurons(tmp_path):
    metrics = run_qrnca_domains(tmp_path / "qrnca", source="shapes", limit=3, domains=["colours", "geography"],
                                method="contribution", n_random=2, n_unrelated=2, min_correct=2)
    assert (tmp_path / "qrnca" / "report.html").exists()
    assert metrics["n_queries"] >= 4, metrics["screening"]  # the model answers its own MCQA
    suppress = metrics["pcr"]["qrnca.suppress"]
    assert suppress["own"]["mean"] < suppress["random_own"]["mean"]


def test_unknown_source_is_refused(tmp_path):
    with pytest.raises(InputError, match="source must be one of"):
        run_qrnca_domains(tmp_path / "x", source="imagenet")
