"""QRNCA results on disk: separate JSON and CSV files, each written atomically (:mod:`neuronscope.results.io`).

``qrnca_config.json`` (settings, ids, grid), ``common_neurons.json``, ``key_neurons.json`` and ``key_neurons.csv``
(query_id, rank, layer, index, score), ``clusters.csv`` (query_id, layer, index, summed_na, na, ica, naica),
``occurrences.csv`` (layer, index, occurrences, ica; neurons with occ > 0). Common and key neurons are kept in
files of their own (the reference code overwrites its common-neuron file with the key neurons).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from neuronscope.aggregate.qrnca import (
    QRNCAConfig,
    QRNCAResult,
    QueryCluster,
    _count_occurrences,
    _inverse_cluster_attribution,
)
from neuronscope.errors import InputError
from neuronscope.results.io import atomic_write_text, csv_text, to_json

FORMAT_VERSION = 1
CONFIG_FILE = "qrnca_config.json"
COMMON_FILE = "common_neurons.json"
KEY_FILE = "key_neurons.json"
KEY_TABLE = "key_neurons.csv"
CLUSTER_TABLE = "clusters.csv"
OCCURRENCE_TABLE = "occurrences.csv"


def save_qrnca(result: QRNCAResult, directory: str | os.PathLike[str]) -> Path:
    """Write the result as separate JSON / CSV files in ``directory`` (created if missing).

    Files (each written atomically: a temporary file in the same folder, then ``os.replace``):
    ``qrnca_config.json`` (settings, ids, grid), ``common_neurons.json``, ``key_neurons.json`` and
    ``key_neurons.csv`` (query_id, rank, layer, index, score), ``clusters.csv`` (query_id, layer, index,
    summed_na, na, ica, naica), ``occurrences.csv`` (layer, index, occurrences, ica; neurons with occ > 0).

    Returns:
        The directory path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = result.n_queries
    config = {
        "format_version": FORMAT_VERSION,
        "method": "qrnca",
        "citation": "Chen, Dejl & Toni 2024, arXiv:2406.10868",
        **asdict(result.config),
        "n_queries": n,
        "n_layers": result.n_layers,
        "d_ff": result.d_ff,
        "query_ids": list(result.query_ids),
        "files": [COMMON_FILE, KEY_FILE, KEY_TABLE, CLUSTER_TABLE, OCCURRENCE_TABLE],
        **({"extra": result.extra} if result.extra else {}),
    }
    atomic_write_text(directory / CONFIG_FILE, to_json(config) + "\n")

    common_occ = [int(result.occurrences[layer, index]) for layer, index in result.common_neurons.tolist()]
    common = {
        "common_threshold": result.config.common_threshold,
        "rule": "occurrences > common_threshold * n_queries",
        "n_queries": n,
        "common_neurons": result.common_neurons.tolist(),
        "occurrences": common_occ,
    }
    atomic_write_text(directory / COMMON_FILE, to_json(common) + "\n")

    keys = {
        "score": "na_ica" if result.config.use_ica else "na",
        "queries": [
            {"query_id": qid, "neurons": neurons.tolist(), "scores": scores.tolist()}
            for qid, neurons, scores in zip(
                result.query_ids, result.key_neurons, result.key_scores, strict=True
            )
        ],
    }
    atomic_write_text(directory / KEY_FILE, to_json(keys) + "\n")

    key_rows = [
        [qid, rank, layer, index, score]
        for qid, neurons, scores in zip(result.query_ids, result.key_neurons, result.key_scores, strict=True)
        for rank, ((layer, index), score) in enumerate(
            zip(neurons.tolist(), scores.tolist(), strict=True)
        )
    ]
    atomic_write_text(
        directory / KEY_TABLE, csv_text(key_rows, ["query_id", "rank", "layer", "index", "score"])
    )

    cluster_rows = []
    for qid, cluster, naica in zip(result.query_ids, result.clusters, result.naica, strict=True):
        ica = result.ica.reshape(-1)[cluster.flat_indices()].tolist()
        for (layer, index), summed, score, ica_n, naica_n in zip(
            cluster.neurons.tolist(),
            cluster.summed.tolist(),
            cluster.scores.tolist(),
            ica,
            naica.tolist(),
            strict=True,
        ):
            cluster_rows.append([qid, layer, index, summed, score, ica_n, naica_n])
    atomic_write_text(
        directory / CLUSTER_TABLE,
        csv_text(cluster_rows, ["query_id", "layer", "index", "summed_na", "na", "ica", "naica"]),
    )

    occurring = torch.nonzero(result.occurrences > 0, as_tuple=False).tolist()
    occ_rows = [
        [layer, index, int(result.occurrences[layer, index]), float(result.ica[layer, index])]
        for layer, index in occurring
    ]
    atomic_write_text(
        directory / OCCURRENCE_TABLE, csv_text(occ_rows, ["layer", "index", "occurrences", "ica"])
    )
    return directory


def load_qrnca(directory: str | os.PathLike[str]) -> QRNCAResult:
    """Read a result written by `save` (exact round trip of every field)."""
    directory = Path(directory)
    try:
        config_json = json.loads((directory / CONFIG_FILE).read_text())
        common_json = json.loads((directory / COMMON_FILE).read_text())
        key_json = json.loads((directory / KEY_FILE).read_text())
        cluster_rows = _read_csv(directory / CLUSTER_TABLE)
    except FileNotFoundError as error:
        raise InputError(
            f"{error.filename} is missing: {directory} is not a QRNCA result folder (write one with save())"
        ) from None
    config = QRNCAConfig(**{name: config_json[name] for name in QRNCAConfig.__dataclass_fields__})
    query_ids = list(config_json["query_ids"])
    n_layers, d_ff = int(config_json["n_layers"]), int(config_json["d_ff"])
    per_query: dict[str, list[list[str]]] = {qid: [] for qid in query_ids}
    for row in cluster_rows:
        per_query[row[0]].append(row)
    clusters, naica = [], []
    for qid in query_ids:
        rows = per_query[qid]
        neurons = torch.tensor([[int(r[1]), int(r[2])] for r in rows], dtype=torch.long).reshape(-1, 2)
        summed = torch.tensor([float(r[3]) for r in rows], dtype=torch.float64)
        scores = torch.tensor([float(r[4]) for r in rows], dtype=torch.float64)
        clusters.append(QueryCluster(neurons, summed, scores, n_layers, d_ff))
        naica.append(torch.tensor([float(r[6]) for r in rows], dtype=torch.float64))
    occurrences = _count_occurrences(clusters, n_layers, d_ff)
    ica = _inverse_cluster_attribution(occurrences, len(query_ids))
    keys = {entry["query_id"]: entry for entry in key_json["queries"]}
    key_neurons = [
        torch.tensor(keys[qid]["neurons"], dtype=torch.long).reshape(-1, 2) for qid in query_ids
    ]
    key_scores = [torch.tensor(keys[qid]["scores"], dtype=torch.float64) for qid in query_ids]
    common = torch.tensor(common_json["common_neurons"], dtype=torch.long).reshape(-1, 2)
    return QRNCAResult(
        query_ids=query_ids,
        config=config,
        n_layers=n_layers,
        d_ff=d_ff,
        clusters=clusters,
        occurrences=occurrences,
        ica=ica,
        naica=naica,
        common_neurons=common,
        key_neurons=key_neurons,
        key_scores=key_scores,
        extra=dict(config_json.get("extra", {})),
    )


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[1:]
