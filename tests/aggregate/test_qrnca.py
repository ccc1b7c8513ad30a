"""QRNCA on small hand-made cases whose clusters, occurrences, ICA, common and key neurons are worked out below."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from neuronscope.aggregate.qrnca import (
    QRNCAConfig,
    QRNCAResult,
    qrnca_from_clusters,
    qrnca_na_only,
    qrnca_without_common_removal,
    query_cluster,
    run_qrnca,
)
from neuronscope.errors import InputError, NeuronscopeError

# ---------------------------------------------------------------------------------------------------------
# Case 1: 3 queries, 2 layers x 4 neurons; A and B have 2 variants, C has 3 (its third is all zero).
#
# A v1: max 1.0, keep > 0.2: (0,0)=1.0 (0,2)=0.5 (1,0)=0.3          [(0,1)=0.1 dropped]
# A v2: max 2.0, keep > 0.4: (0,0)=2.0 (1,3)=1.0                    [(1,1)=0.4 dropped: strict >]
#   sums (0,0)=3.0 (0,2)=0.5 (1,0)=0.3 (1,3)=1.0, total 4.8
# B v1: max 4.0, keep > 0.8: (1,0)=4.0 (1,2)=1.0
# B v2: max 1.0, keep > 0.2: (1,0)=1.0                              [(1,3)=-5 dropped]
#   sums (1,0)=5.0 (1,2)=1.0, total 6
# C v1: (0,1)=3.0 ; C v2: max 1.0, keep > 0.2: (0,0)=0.5 (0,1)=1.0 ; C v3: max 0, keeps nothing
#   sums (0,0)=0.5 (0,1)=4.0, total 4.5
# occ: (0,0)=2 [A,C] (0,1)=1 (0,2)=1 (1,0)=2 [A,B] (1,2)=1 (1,3)=1, others 0. N = 3.
# ICA: occ 0 -> ln 3, occ 1 -> ln 1.5, occ 2 -> ln 1 = 0.
# ---------------------------------------------------------------------------------------------------------

NA_A = torch.tensor(
    [
        [[1.0, 0.1, 0.5, 0.0], [0.3, 0.0, 0.0, 0.0]],
        [[2.0, 0.0, 0.0, 0.0], [0.0, 0.4, 0.0, 1.0]],
    ]
)
NA_B = torch.tensor(
    [
        [[0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 1.0, 0.0]],
        [[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, -5.0]],
    ]
)
NA_C = torch.tensor(
    [
        [[0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
        [[0.5, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
        [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
    ]
)
CASE1 = [NA_A, NA_B, NA_C]
LN15 = math.log(1.5)


def as_dict(neurons: torch.Tensor, values: torch.Tensor) -> dict[tuple[int, int], float]:
    return {tuple(n): v for n, v in zip(neurons.tolist(), values.tolist(), strict=True)}


def test_case1_clusters_occurrences_ica_by_hand():
    result = run_qrnca(CASE1, query_ids=["A", "B", "C"], common_threshold=0.5)
    a, b, c = result.clusters
    assert a.neurons.tolist() == [[0, 0], [0, 2], [1, 0], [1, 3]]
    assert a.summed.tolist() == pytest.approx([3.0, 0.5, 0.3, 1.0])
    assert a.scores.tolist() == pytest.approx([3.0 / 4.8, 0.5 / 4.8, 0.3 / 4.8, 1.0 / 4.8])
    assert as_dict(b.neurons, b.scores) == pytest.approx({(1, 0): 5 / 6, (1, 2): 1 / 6})
    assert as_dict(c.neurons, c.scores) == pytest.approx({(0, 0): 1 / 9, (0, 1): 8 / 9})

    expected_occ = torch.tensor([[2, 1, 1, 0], [2, 0, 1, 1]])
    assert torch.equal(result.occurrences, expected_occ)
    ln = math.log
    expected_ica = torch.tensor(
        [[ln(3 / 3), ln(3 / 2), ln(3 / 2), ln(3 / 1)], [ln(3 / 3), ln(3 / 1), ln(3 / 2), ln(3 / 2)]],
        dtype=torch.float64,
    )
    assert torch.allclose(result.ica, expected_ica)

    assert as_dict(a.neurons, result.naica[0]) == pytest.approx(
        {(0, 0): 0.0, (0, 2): 0.5 / 4.8 * LN15, (1, 0): 0.0, (1, 3): 1.0 / 4.8 * LN15}
    )
    assert as_dict(b.neurons, result.naica[1]) == pytest.approx({(1, 0): 0.0, (1, 2): 1 / 6 * LN15})
    assert as_dict(c.neurons, result.naica[2]) == pytest.approx({(0, 0): 0.0, (0, 1): 8 / 9 * LN15})


def test_case1_common_and_key_neurons_by_hand():
    result = run_qrnca(CASE1, query_ids=["A", "B", "C"], common_threshold=0.5)
    # occ > 0.5 * 3 = 1.5: the two neurons with occ 2, equally frequent -> ascending (layer, index).
    assert result.common_neurons.tolist() == [[0, 0], [1, 0]]
    # Key: NAICA > 0, common removed, best first.
    assert result.key_neurons_of("A").tolist() == [[1, 3], [0, 2]]
    assert result.key_scores[0].tolist() == pytest.approx([1.0 / 4.8 * LN15, 0.5 / 4.8 * LN15])
    assert result.key_neurons_of("B").tolist() == [[1, 2]]
    assert result.key_neurons_of("C").tolist() == [[0, 1]]
    # top_v truncates.
    assert run_qrnca(CASE1, common_threshold=0.5, top_v=1).key_neurons[0].tolist() == [[1, 3]]


def test_case1_default_common_threshold_makes_every_clustered_neuron_common():
    # u = 0.3, N = 3: occ > 0.9, so every neuron of any cluster is common and no key neuron survives.
    result = run_qrnca(CASE1)
    assert sorted(map(tuple, result.common_neurons.tolist())) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 2),
        (1, 3),
    ]
    assert [k.numel() for k in result.key_neurons] == [0, 0, 0]
    # Most frequent first.
    assert result.common_neurons[:2].tolist() == [[0, 0], [1, 0]]


def test_case1_na_only_ablation_is_top_v_of_cluster():
    result = qrnca_na_only(CASE1, top_v=2)
    assert [k.tolist() for k in result.key_neurons] == [[[0, 0], [1, 3]], [[1, 0], [1, 2]], [[0, 1], [0, 0]]]
    assert result.key_scores[0].tolist() == pytest.approx([3.0 / 4.8, 1.0 / 4.8])
    assert result.config.use_ica is False and result.config.remove_common is False


# ---------------------------------------------------------------------------------------------------------
# Case 2: 5 queries x 1 variant, 1 layer x 3 neurons: common neurons with positive ICA.
# Q0 [1, .5, 0] -> n0 2/3, n1 1/3 ; Q1 [1, 0, 0] -> n0 ; Q2..Q4 [0, 0, 1] -> n2
# occ n0=2 n1=1 n2=3 ; ICA n0 ln(5/3)>0, n1 ln(5/2), n2 ln(5/4)>0 ; common (occ > 1.5): n2 (3), n0 (2)
# NAICA Q0: n0 2/3 ln(5/3) = 0.3405 > n1 1/3 ln(5/2) = 0.3054
# ---------------------------------------------------------------------------------------------------------

CASE2 = [
    torch.tensor([[[1.0, 0.5, 0.0]]]),
    torch.tensor([[[1.0, 0.0, 0.0]]]),
    torch.tensor([[[0.0, 0.0, 1.0]]]),
    torch.tensor([[[0.0, 0.0, 1.0]]]),
    torch.tensor([[[0.0, 0.0, 1.0]]]),
]


def test_case2_common_removal_and_its_ablation():
    result = run_qrnca(CASE2)
    assert result.common_neurons.tolist() == [[0, 2], [0, 0]]
    assert [k.tolist() for k in result.key_neurons] == [[[0, 1]], [], [], [], []]
    assert result.key_scores[0].tolist() == pytest.approx([1 / 3 * math.log(5 / 2)])

    kept = qrnca_without_common_removal(CASE2)
    assert [k.tolist() for k in kept.key_neurons] == [
        [[0, 0], [0, 1]],
        [[0, 0]],
        [[0, 2]],
        [[0, 2]],
        [[0, 2]],
    ]
    assert kept.key_scores[0].tolist() == pytest.approx([2 / 3 * math.log(5 / 3), 1 / 3 * math.log(5 / 2)])
    # The common neurons are still reported in their own field.
    assert kept.common_neurons.tolist() == [[0, 2], [0, 0]]
    assert kept.all_key_neurons().tolist() == [[0, 0], [0, 1], [0, 2]]
    assert result.all_key_neurons().tolist() == [[0, 1]]


def test_single_query_has_no_key_neurons():
    result = run_qrnca([NA_A])
    assert result.ica.max().item() == pytest.approx(math.log(1 / 1))  # occ 0 -> ln(1/1) = 0
    assert result.key_neurons[0].numel() == 0


# ---------------------------------------------------------------------------------------------------------
# streaming, files, errors
# ---------------------------------------------------------------------------------------------------------


def test_streaming_clusters_equal_batch_run():
    clusters = [query_cluster(na) for na in CASE1]
    config = QRNCAConfig(common_threshold=0.5)
    streamed = qrnca_from_clusters(clusters, query_ids=["A", "B", "C"], config=config)
    batch = run_qrnca(CASE1, query_ids=["A", "B", "C"], common_threshold=0.5)
    assert torch.equal(streamed.occurrences, batch.occurrences)
    for left, right in zip(streamed.key_neurons, batch.key_neurons, strict=True):
        assert torch.equal(left, right)


def test_save_writes_separate_files_and_round_trips(tmp_path):
    result = run_qrnca(CASE2, query_ids=[f"q{i}" for i in range(5)])
    out = result.save(tmp_path / "qrnca")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "qrnca_config.json",
            "common_neurons.json",
            "key_neurons.json",
            "key_neurons.csv",
            "clusters.csv",
            "occurrences.csv",
        ]
    )  # no temporary files left behind
    common = json.loads((out / "common_neurons.json").read_text())
    assert common["common_neurons"] == [[0, 2], [0, 0]] and common["occurrences"] == [3, 2]
    keys = json.loads((out / "key_neurons.json").read_text())
    assert keys["queries"][0] == {"query_id": "q0", "neurons": [[0, 1]], "scores": [1 / 3 * math.log(5 / 2)]}
    with (out / "key_neurons.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["query_id", "rank", "layer", "index", "score"] and rows[1][:4] == ["q0", "0", "0", "1"]

    loaded = QRNCAResult.load(out)
    assert loaded.query_ids == result.query_ids and loaded.config == result.config
    assert torch.equal(loaded.occurrences, result.occurrences)
    assert torch.equal(loaded.ica, result.ica)
    assert torch.equal(loaded.common_neurons, result.common_neurons)
    for left, right in zip(loaded.clusters, result.clusters, strict=True):
        assert torch.equal(left.neurons, right.neurons)
        assert torch.equal(left.scores, right.scores) and torch.equal(left.summed, right.summed)
    for left, right in zip(loaded.naica + loaded.key_scores, result.naica + result.key_scores, strict=True):
        assert torch.equal(left, right)
    for left, right in zip(loaded.key_neurons, result.key_neurons, strict=True):
        assert torch.equal(left, right)


def test_errors_are_actionable(tmp_path):
    with pytest.raises(InputError, match="unsqueeze"):
        run_qrnca([torch.zeros(2, 4)])
    with pytest.raises(InputError, match="one \\[variants, layers, d_ff\\] tensor per query"):
        run_qrnca(torch.zeros(3, 2, 2, 4))
    with pytest.raises(InputError, match="same model"):
        run_qrnca([torch.zeros(1, 2, 4), torch.zeros(1, 2, 5)])
    with pytest.raises(InputError, match="unique"):
        run_qrnca(CASE2, query_ids=["a", "a", "b", "c", "d"])
    with pytest.raises(InputError, match="one id per query"):
        run_qrnca(CASE2, query_ids=["a"])
    with pytest.raises(NeuronscopeError, match="top_v"):
        run_qrnca(CASE2, top_v=0)
    with pytest.raises(NeuronscopeError, match="common_threshold"):
        run_qrnca(CASE2, common_threshold=1.2)
    with pytest.raises(InputError, match="not a QRNCA result folder"):
        QRNCAResult.load(tmp_path)
    with pytest.raises(InputError, match="unknown query id"):
        run_qrnca(CASE2).key_neurons_of("nope")
