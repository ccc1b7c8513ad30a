"""Reduced versions of the six experiments on the real SmolLM2-135M-Instruct: the DIRECTION of each effect.

Each runs a handful of queries (seconds to tens of seconds on CPU); the full runs are in RESULTS.md.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]


def test_qrnca_suppressing_key_neurons_hurts_more_than_random(smollm2, shared_dir, tmp_path):
    from neuronscope.workflows.papers.qrnca import run_qrnca_domains

    metrics = run_qrnca_domains(tmp_path / "qrnca", model=smollm2, limit=2, domains=["geography", "chemistry"],
                                data_dir=shared_dir / "data",
                                method="contribution", n_random=2, n_unrelated=2)
    assert (tmp_path / "qrnca" / "report.html").exists()
    suppress = metrics["pcr"]["qrnca.suppress"]
    boost = metrics["pcr"]["qrnca.boost"]
    assert suppress["own"]["mean"] < suppress["random_own"]["mean"]
    assert boost["own"]["mean"] > boost["random_own"]["mean"]


def test_knowledge_neurons_suppress_and_enhance_beat_random(smollm2, shared_dir, tmp_path):
    from neuronscope.workflows.papers.knowledge_neurons import run_knowledge_neurons

    metrics = run_knowledge_neurons(tmp_path / "kn", model=smollm2, limit=3, steps=4, n_random=2, n_unrelated=2,
                                    data_dir=shared_dir / "data")
    assert metrics["n_facts"] == 3
    assert metrics["suppress"]["own"]["mean"] < metrics["suppress"]["random_own"]["mean"]
    assert metrics["enhance"]["own"]["mean"] > metrics["enhance"]["random_own"]["mean"]


def test_lpi_top_neurons_drop_the_answer_more_than_random(smollm2, shared_dir, tmp_path):
    from neuronscope.workflows.papers.lpi_facts import run_lpi_facts

    metrics = run_lpi_facts(tmp_path / "lpi", model=smollm2, limit=3, top_ks=(10,), top_heads=(1,), n_random=2,
                            n_candidates=50, data_dir=shared_dir / "data")
    top = metrics["summary"]["ffn_neurons.top10"]
    assert top["probability_drop_mean"] > top["random_probability_drop_mean"]
    assert top["rank_after_mean"] >= top["random_rank_after_mean"]


def test_arithmetic_top_head_hurts_more_than_random_heads(smollm2, tmp_path):
    from neuronscope.workflows.papers.arithmetic import run_arithmetic

    metrics = run_arithmetic(tmp_path / "arith", model=smollm2, limit=4, top_heads=(1,), top_neurons=(10,),
                             n_random=3, head_layers=[13, 14, 15])  # 27 of 270 heads, for time
    head = metrics["heads"]["top1"]
    assert head["probability"] < head["random_probability"]
    neurons = metrics["cna_neurons"]["top10"]
    assert neurons["probability"] <= neurons["random_probability"]


def test_bias_edit_shrinks_the_gap_more_than_random(smollm2, tmp_path):
    from neuronscope.workflows.papers.bias import run_bias

    metrics = run_bias(tmp_path / "bias", model=smollm2, limit=4, top_k=10, n_random=2)
    gap = metrics["test"]["mean_abs_gap"]
    assert gap["after"] < gap["before"]
    assert gap["after"] < gap["random_after"]["mean"]


def test_fact_edit_is_reliable_and_random_edits_are_not(smollm2, tmp_path):
    from neuronscope.workflows.papers.fact_editing import run_fact_editing

    metrics = run_fact_editing(tmp_path / "edit", model=smollm2, limit=1, n_random=1, optimise_steps=10,
                               max_new_tokens=2)
    closed = metrics["summary"]["closed_form.reliability"]
    assert closed["before"] == 0.0 and closed["edited"] == 1.0
    assert closed["random"] < 1.0
