"""NA-ICA / QRNCA: query-relevant key neurons by inverse cluster attribution (Chen, Dejl & Toni, 2024).

Chen, L., Dejl, A., Toni, F. "Identifying Query-Relevant Neurons in Large Language Models for Long-Form Texts"
(arXiv:2406.10868, 2024). The recipe, per query q with prompt variants p (same question, other wording or
option order) and their neuron-attribution (NA, integrated-gradient) scores ``NA_p [layers, d_ff]``:

1. per prompt keep ``NA_p(n) > attr_threshold * max_n' NA_p(n')`` (default 0.2);
2. the query's *cluster*: sum the kept scores over its variants and normalise to sum 1,
   ``NA_q(n) = S_q(n) / sum_n' S_q(n')`` with ``S_q(n) = sum_p [n kept in p] NA_p(n)``;
3. ``occ(n)`` = number of queries whose cluster contains n, ``N`` = number of queries,
   ``ICA(n) = ln(N / (occ(n) + 1))`` (an inverse-document-frequency over clusters);
4. ``NAICA_q(n) = NA_q(n) * ICA(n)``;
5. *common neurons*: ``occ(n) > common_threshold * N`` (default 0.3), removed from every query;
6. *key neurons* of q: the ``top_v`` (default 10) neurons of q's cluster with the largest ``NAICA_q > 0``.

Where this differs from the authors' released code (the ``qrneuron`` package):
- common and key neurons are kept in separate fields and separate files (the released code opens its
  common-neuron file again and overwrites it with the key neurons);
- common neurons are removed *before* taking the top-v (the released code takes the top-v first and then
  filters, and its filter compares strings with integer pairs so it removes nothing);
- ``occ > common_threshold * N`` equals the released ``occ > int(common_threshold * N)`` for integer counts.

Note that with a single query every ICA is ``ln(1 / 2) < 0``, so no key neurons exist: ICA needs many queries.

The paper's two ablations are `qrnca_na_only` (no ICA: key neurons = top-v of the normalised cluster, no
common-neuron removal) and `qrnca_without_common_removal` (NAICA ranking, common neurons kept).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from neuronscope.aggregate.neurons import check_neurons, flat_to_neurons
from neuronscope.aggregate.select import threshold_relative_mask
from neuronscope.errors import InputError, NeuronscopeError

__all__ = [
    "QRNCAConfig",
    "QRNCAResult",
    "QueryCluster",
    "run_qrnca",
    "qrnca_from_clusters",
    "qrnca_na_only",
    "qrnca_without_common_removal",
    "query_cluster",
]



@dataclass(frozen=True)
class QRNCAConfig:
    """Settings of a QRNCA run (defaults are the paper's).

    Attributes:
        attr_threshold: per-prompt relative threshold t: keep ``NA > t * max``. Default 0.2.
        common_threshold: common neurons have ``occ > u * N``. Default 0.3.
        top_v: key neurons per query. Default 10 (the paper uses 10-20).
        use_ica: rank by NA * ICA (True, default) or by the normalised cluster NA alone (ablation).
        remove_common: drop common neurons before ranking (True, default) or keep them (ablation).
    """

    attr_threshold: float = 0.2
    common_threshold: float = 0.3
    top_v: int = 10
    use_ica: bool = True
    remove_common: bool = True

    def __post_init__(self) -> None:
        for name in ("attr_threshold", "common_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value <= 1.0):
                raise NeuronscopeError(f"{name} must be a fraction in [0, 1], got {value!r}")
        if isinstance(self.top_v, bool) or not isinstance(self.top_v, int) or self.top_v < 1:
            raise NeuronscopeError(
                f"top_v must be a positive integer (the paper uses 10-20), got {self.top_v!r}"
            )


@dataclass(frozen=True)
class QueryCluster:
    """One query's cluster: the neurons some variant kept, with summed and normalised NA.

    Attributes:
        neurons: ``LongTensor [m, 2]`` (layer, index), in ascending flat-index order.
        summed: ``float64 [m]`` sum over variants of the kept NA scores, ``S_q(n)``.
        scores: ``float64 [m]`` ``summed / summed.sum()`` (sums to 1; empty cluster -> empty).
        n_layers, d_ff: the score grid.
    """

    neurons: Tensor
    summed: Tensor
    scores: Tensor
    n_layers: int
    d_ff: int

    def flat_indices(self) -> Tensor:
        """``LongTensor [m]`` of ``layer * d_ff + index``."""
        return self.neurons[:, 0] * self.d_ff + self.neurons[:, 1]

    def __len__(self) -> int:
        return int(self.neurons.shape[0])


def query_cluster(na_variants: Tensor, attr_threshold: float = 0.2) -> QueryCluster:
    """Build one query's cluster from the NA scores of its prompt variants (steps 1-2 of the recipe).

    Args:
        na_variants: ``[variants, layers, d_ff]`` NA scores, one row per prompt variant.
        attr_threshold: keep ``NA > attr_threshold * max`` per variant. Default 0.2.

    Returns:
        `QueryCluster` (sparse: only kept neurons). Computed in float64.

    Example:
        >>> na = torch.tensor([[[1.0, 0.1]], [[3.0, 1.0]]])  # 2 variants, 1 layer, 2 neurons
        >>> cluster = query_cluster(na)
        >>> cluster.neurons.tolist(), cluster.scores.tolist()
        ([[0, 0], [0, 1]], [0.8, 0.2])
    """
    if not isinstance(na_variants, Tensor) or na_variants.dim() != 3:
        shape = tuple(na_variants.shape) if isinstance(na_variants, Tensor) else type(na_variants).__name__
        raise InputError(
            f"a query's NA scores must be [variants, layers, d_ff], got {shape}; "
            "for a single prompt use scores.unsqueeze(0)"
        )
    if na_variants.shape[0] == 0:
        raise InputError("a query has no prompt variants; give every query at least one prompt")
    n_layers, d_ff = int(na_variants.shape[1]), int(na_variants.shape[2])
    kept = threshold_relative_mask(na_variants, attr_threshold)
    scores64 = na_variants.detach().to(torch.float64)
    summed_dense = torch.where(kept, scores64, torch.zeros((), dtype=torch.float64)).sum(dim=0).reshape(-1)
    flat = torch.nonzero(kept.any(dim=0).reshape(-1), as_tuple=False).squeeze(1)
    summed = summed_dense[flat].cpu()
    total = summed.sum()
    # Every kept score is > t * max > 0, so total > 0 whenever the cluster is not empty.
    scores = summed / total if len(summed) else summed.clone()
    return QueryCluster(flat_to_neurons(flat.cpu(), d_ff), summed, scores, n_layers, d_ff)


@dataclass
class QRNCAResult:
    """Everything QRNCA computes, each in its own field.

    Attributes:
        query_ids: one id per query (order of the input).
        config: the `QRNCAConfig` used.
        n_layers, d_ff: the score grid.
        clusters: per query, its `QueryCluster` (normalised NA = ``clusters[q].scores``).
        occurrences: ``LongTensor [layers, d_ff]``, ``occ(n)``.
        ica: ``float64 [layers, d_ff]``, ``ln(N / (occ + 1))``.
        naica: per query, ``float64 [m_q]`` aligned with ``clusters[q].neurons``.
        common_neurons: ``LongTensor [c, 2]``, ``occ > common_threshold * N``, most frequent first.
        key_neurons: per query, ``LongTensor [<= top_v, 2]``, best first.
        key_scores: per query, ``float64 [<= top_v]``: the ranking score (NAICA, or NA when ``use_ica=False``).
    """

    format: ClassVar[str] = "neuronscope.qrnca"

    query_ids: list[str]
    config: QRNCAConfig
    n_layers: int
    d_ff: int
    clusters: list[QueryCluster]
    occurrences: Tensor
    ica: Tensor
    naica: list[Tensor]
    common_neurons: Tensor
    key_neurons: list[Tensor]
    key_scores: list[Tensor]
    extra: dict = field(default_factory=dict)

    @property
    def n_queries(self) -> int:
        return len(self.query_ids)

    def key_neurons_of(self, query_id: str) -> Tensor:
        """The key neurons ``[<= top_v, 2]`` of one query, by id."""
        try:
            return self.key_neurons[self.query_ids.index(query_id)]
        except ValueError:
            raise InputError(
                f"unknown query id {query_id!r}; known ids start with {self.query_ids[:5]}"
            ) from None

    def all_key_neurons(self) -> Tensor:
        """The union of every query's key neurons, ``[n, 2]`` in ascending (layer, index) order.

        Handy as ``exclude=`` of `neuronscope.measure.baselines.random_neurons_like`.
        """
        if not self.key_neurons:
            return torch.empty(0, 2, dtype=torch.long)
        flat = torch.cat([n[:, 0] * self.d_ff + n[:, 1] for n in self.key_neurons])
        return flat_to_neurons(torch.unique(flat), self.d_ff)

    # ---------------------------------------------------------------------------------------------- files
    def as_dict(self) -> dict:
        """Settings and per-query key neurons (JSON-ready)."""
        return {"format": self.format, **asdict(self.config), "n_queries": self.n_queries,
                "n_layers": self.n_layers, "d_ff": self.d_ff, "common_neurons": self.common_neurons.tolist(),
                "key_neurons": {qid: neurons.tolist() for qid, neurons in zip(self.query_ids, self.key_neurons,
                                                                               strict=True)}}

    def summary(self) -> str:
        kept = sum(len(neurons) for neurons in self.key_neurons)
        return (f"QRNCA over {self.n_queries} queries: {len(self.common_neurons)} common neurons removed, "
                f"{kept} key neurons kept ({kept / max(1, self.n_queries):.1f} per query)")

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the result as separate JSON / CSV files in ``directory`` (see :mod:`.qrnca_files`)."""
        from neuronscope.aggregate.qrnca_files import save_qrnca

        return save_qrnca(self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> QRNCAResult:
        """Read a result written by `save` (exact round trip of every field)."""
        from neuronscope.aggregate.qrnca_files import load_qrnca

        return load_qrnca(directory)


# ------------------------------------------------------------------------------------------------------ core


def _count_occurrences(clusters: Sequence[QueryCluster], n_layers: int, d_ff: int) -> Tensor:
    flats = [cluster.flat_indices() for cluster in clusters]
    if not flats:
        return torch.zeros(n_layers, d_ff, dtype=torch.long)
    return torch.bincount(torch.cat(flats), minlength=n_layers * d_ff).view(n_layers, d_ff)


def _inverse_cluster_attribution(occurrences: Tensor, n_queries: int) -> Tensor:
    return torch.log(n_queries / (occurrences.to(torch.float64) + 1.0))


def _rank_desc(flat: Tensor, scores: Tensor, top: int) -> Tensor:
    """Positions of the ``top`` largest scores; ties by ascending flat index (``flat`` need not be sorted)."""
    by_flat = torch.argsort(flat, stable=True)
    by_score = torch.argsort(scores[by_flat], descending=True, stable=True)
    return by_flat[by_score][:top]


def qrnca_from_clusters(
    clusters: Sequence[QueryCluster],
    *,
    query_ids: Sequence[str] | None = None,
    config: QRNCAConfig | None = None,
) -> QRNCAResult:
    """Steps 3-6 of QRNCA from ready clusters (build each with `query_cluster` to stream over queries).

    Args:
        clusters: one `QueryCluster` per query, all on the same ``[layers, d_ff]`` grid.
        query_ids: unique ids, default ``"0", "1", ...``.
        config: `QRNCAConfig` (``attr_threshold`` is recorded only; it was applied by `query_cluster`).

    Returns:
        `QRNCAResult`.
    """
    config = config or QRNCAConfig()
    if len(clusters) == 0:
        raise InputError("QRNCA needs at least one query (and many for ICA to mean anything)")
    n_layers, d_ff = clusters[0].n_layers, clusters[0].d_ff
    for q, cluster in enumerate(clusters):
        if (cluster.n_layers, cluster.d_ff) != (n_layers, d_ff):
            raise InputError(
                f"query {q} has scores on a [{cluster.n_layers}, {cluster.d_ff}] grid but query 0 on "
                f"[{n_layers}, {d_ff}]; score every query with the same model and site"
            )
        check_neurons(cluster.neurons, n_layers, d_ff, name=f"clusters[{q}].neurons")
    ids = [str(q) for q in range(len(clusters))] if query_ids is None else [str(q) for q in query_ids]
    if len(ids) != len(clusters):
        raise InputError(f"got {len(ids)} query ids for {len(clusters)} queries; give one id per query")
    if len(set(ids)) != len(ids):
        raise InputError("query ids must be unique; rename the duplicated ids")

    n_queries = len(clusters)
    occurrences = _count_occurrences(clusters, n_layers, d_ff)
    ica = _inverse_cluster_attribution(occurrences, n_queries)
    ica_flat = ica.reshape(-1)

    common_mask = occurrences.reshape(-1) > config.common_threshold * n_queries
    common_flat = torch.nonzero(common_mask, as_tuple=False).squeeze(1)
    common_order = torch.argsort(occurrences.reshape(-1)[common_flat], descending=True, stable=True)
    common_neurons = flat_to_neurons(common_flat[common_order], d_ff)

    naica, key_neurons, key_scores = [], [], []
    for cluster in clusters:
        flat = cluster.flat_indices()
        naica_q = cluster.scores * ica_flat[flat]
        naica.append(naica_q)
        ranking = naica_q if config.use_ica else cluster.scores
        candidate = ranking > 0
        if config.remove_common:
            candidate &= ~common_mask[flat]
        chosen = _rank_desc(flat[candidate], ranking[candidate], config.top_v)
        key_neurons.append(flat_to_neurons(flat[candidate][chosen], d_ff))
        key_scores.append(ranking[candidate][chosen])

    return QRNCAResult(
        query_ids=ids,
        config=config,
        n_layers=n_layers,
        d_ff=d_ff,
        clusters=list(clusters),
        occurrences=occurrences,
        ica=ica,
        naica=naica,
        common_neurons=common_neurons,
        key_neurons=key_neurons,
        key_scores=key_scores,
    )


def run_qrnca(
    na_per_query: Sequence[Tensor],
    *,
    query_ids: Sequence[str] | None = None,
    attr_threshold: float = 0.2,
    common_threshold: float = 0.3,
    top_v: int = 10,
    use_ica: bool = True,
    remove_common: bool = True,
) -> QRNCAResult:
    """Key neurons of every query by NA-ICA (QRNCA), from the NA scores of each query's prompt variants.

    Args:
        na_per_query: one tensor ``[variants_q, layers, d_ff]`` per query (variant counts may differ).
        query_ids: unique ids, default ``"0", "1", ...``.
        attr_threshold: per-prompt keep ``NA > t * max``. Default 0.2.
        common_threshold: common neurons have ``occ > u * N``. Default 0.3.
        top_v: key neurons per query. Default 10.
        use_ica: False gives the "NA only" ablation ranking.
        remove_common: False keeps common neurons (ablation).

    Returns:
        `QRNCAResult` with clusters, occurrences, ICA, NAICA, common neurons and key neurons as fields.

    Example:
        >>> na = list(torch.eye(4).reshape(4, 1, 1, 4))  # 4 queries, 1 variant, each fires its own neuron
        >>> result = run_qrnca(na, query_ids=["q1", "q2", "q3", "q4"])
        >>> [k.tolist() for k in result.key_neurons], result.common_neurons.tolist()
        ([[[0, 0]], [[0, 1]], [[0, 2]], [[0, 3]]], [])
    """
    config = QRNCAConfig(attr_threshold, common_threshold, top_v, use_ica, remove_common)
    if isinstance(na_per_query, Tensor):
        raise InputError(
            "pass a list with one [variants, layers, d_ff] tensor per query (queries may have different "
            "numbers of variants), e.g. list(scores) for a [queries, variants, layers, d_ff] tensor"
        )
    clusters = [query_cluster(na, attr_threshold) for na in na_per_query]
    return qrnca_from_clusters(clusters, query_ids=query_ids, config=config)


def qrnca_na_only(na_per_query: Sequence[Tensor], **options) -> QRNCAResult:
    """Ablation "NA without ICA": key neurons = top-v of the normalised cluster, no common-neuron removal.

    Takes the arguments of `run_qrnca` (``use_ica`` and ``remove_common`` are fixed to False).
    """
    return run_qrnca(na_per_query, **{**options, "use_ica": False, "remove_common": False})


def qrnca_without_common_removal(na_per_query: Sequence[Tensor], **options) -> QRNCAResult:
    """Ablation "ICA without common-neuron removal": NAICA ranking, common neurons may be key neurons.

    Takes the arguments of `run_qrnca` (``remove_common`` is fixed to False).
    """
    return run_qrnca(na_per_query, **{**options, "use_ica": True, "remove_common": False})
