"""LPI's forward replayed from CUDA graphs (attribute/graphed_rows.py), checked on the CPU with stand-in graphs: the
padded forward a graph records gives the unpadded call's scores, and the graph cache captures, replays and keys as
it says. That a real CUDA graph replays the same scores is checked on a GPU (``benchmarks/bench_checks.py``)."""

from __future__ import annotations

import pytest
import torch

from helpers import stand_in_graphs as stand_in
from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.attribute import graphed_rows
from neuronscope.attribute.log_probability_increase import (
    head_log_probability_increase,
    log_probability_increase,
)
from neuronscope.errors import UnsupportedModelError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models import get_adapter
from neuronscope.trace import graphs as graphs_module
from neuronscope.trace.intervene import Intervention, intervene

EXACT = dict(rtol=1e-9, atol=1e-12)
# LPI is the difference of two float32 log-probabilities (the fused log-sum-exp accumulates in float32 whatever the
# model's dtype), here above -8: two float32 ulps of such a log-probability. A padded and an unpadded call round one
# ulp apart on some CPUs (Gemma-2's soft-capped logits: tanh's vector body and scalar tail, AMD EPYC, 2026-12-02).
FLOAT32_LOG_PROBS = dict(rtol=0.0, atol=2 * torch.finfo(torch.float32).eps * 8)


class _StandInGraph:
    """What a CUDA graph does, on the CPU: ``replay`` runs the recorded call again into its captured rows."""

    def __init__(self, call, out):
        self.call, self.out, self.replays = call, out, 0

    def replay(self):
        self.replays += 1
        fresh = self.call()
        for key, kept in self.out.tensors.items():
            kept.copy_(fresh.tensors[key])


@pytest.fixture
def stand_in_graphs(monkeypatch):
    """Graphs on the CPU: no device check, the capture replaced by a stand-in."""
    return stand_in.install(monkeypatch, graphed_rows, _StandInGraph)


def _batch(length: int, seed: int, pad: int = 2) -> tuple[Batch, TargetSet]:
    """Two rows, the second left-padded by ``pad``, with two targets each at positions that vary with the seed (the
    second row's second slot empty)."""
    inputs = random_batch(batch=2, length=length, seed=seed, left_pad=(0, pad))
    g = torch.Generator().manual_seed(seed)
    positions = torch.randint(2, length, (2, 2), generator=g)
    tokens = torch.randint(3, 40, (2, 2), generator=g)
    valid = torch.tensor([[True, True], [True, False]])
    return Batch(inputs, ["?", "?"], inputs["attention_mask"].sum(-1)), TargetSet(tokens, positions, valid)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_replayed_lpi_equals_the_eager_unpadded_call(stand_in_graphs, family):
    """Sequential and parallel residuals, LayerNorm and a post-FFN norm with a soft-cap: every call of one bucket
    (eager first, captured, replayed) scores what the unpadded eager call scores, neurons and heads (to two float32
    ulps of a log-probability: FLOAT32_LOG_PROBS)."""
    model = tiny_text_model(family, dtype=torch.float64)
    pad = 0 if family == "gemma2" else 2  # the stock Gemma-2 gives NaN on a left-padded row, graphed or not
    for length, seed in ((12, 1), (9, 2), (14, 3)):
        batch, targets = _batch(length, seed, pad)
        graphed = log_probability_increase(model, batch, targets, chunk_size=16)
        eager = log_probability_increase(model, batch, targets, chunk_size=16, graphs=False)
        torch.testing.assert_close(graphed.values, eager.values, **FLOAT32_LOG_PROBS)
        assert graphed.meta == eager.meta
        heads = head_log_probability_increase(model, batch, targets)
        torch.testing.assert_close(heads.values, head_log_probability_increase(model, batch, targets,
                                                                               graphs=False).values,
                                   **FLOAT32_LOG_PROBS)
    assert len(stand_in_graphs) == 2 and [graph.replays for graph in stand_in_graphs] == [2, 2]  # neurons, heads


def test_first_call_eager_with_the_readout_check_second_captured_later_replayed(stand_in_graphs, monkeypatch):
    model = tiny_text_model("llama", dtype=torch.float64)
    batch, targets = _batch(12, 1)
    checked = []
    adapter = get_adapter(model)
    original = type(adapter).check_readout
    monkeypatch.setattr(type(adapter), "check_readout", lambda self, *args, **kwargs: checked.append(
        args[1].shape) or original(self, *args, **kwargs))
    first, second, third = (log_probability_increase(model, batch, targets, layers=[1]).values for _ in range(3))
    assert checked == [(2, 2, model.config.vocab_size)]  # the eager call, with the logits at the 2 x 2 positions
    assert torch.equal(second, first) and torch.equal(third, first)
    assert stand_in_graphs[0].replays == 2
    assert graphs_module.kept_graphs(model, "rows") == 1
    graphs_module.release_graphs(model)
    assert graphs_module.kept_graphs(model) == 0


def test_a_model_whose_readout_differs_is_refused_at_every_call(stand_in_graphs, monkeypatch):
    model = tiny_text_model("llama", dtype=torch.float64)
    batch, targets = _batch(12, 1)
    adapter = get_adapter(model)
    original = type(adapter).logits_from_residual  # a family spec that declares the readout wrongly:
    monkeypatch.setattr(type(adapter), "logits_from_residual", lambda self, residual: 2 * original(self, residual))
    for _ in range(3):  # refused again at every call: a refused shape is never captured and replayed unchecked
        with pytest.raises(UnsupportedModelError):
            log_probability_increase(model, batch, targets, layers=[1])
    assert stand_in_graphs == []


def test_other_shapes_sites_hooks_or_weights_get_their_own_graph(stand_in_graphs):
    model = tiny_text_model("llama", dtype=torch.float64)
    batch, targets = _batch(12, 1)
    longer, _ = _batch(40, 1)  # another bucket
    for _ in range(2):
        log_probability_increase(model, batch, targets, layers=[1])
        log_probability_increase(model, batch, targets, layers=[0])
        log_probability_increase(model, longer, targets, layers=[1])
        head_log_probability_increase(model, batch, targets, layers=[1])
    assert len(stand_in_graphs) == 4
    edit = Intervention(site="neuron", layer=0, op="scale", value=3.0, positions="all")
    with intervene(model, edit):  # graph-safe hooks: not the graph captured without them
        for _ in range(2):
            under = log_probability_increase(model, batch, targets, layers=[1]).values
        expected = log_probability_increase(model, batch, targets, layers=[1], graphs=False).values
    torch.testing.assert_close(under, expected, **EXACT)
    assert len(stand_in_graphs) == 5 and stand_in_graphs[0].replays == 1
    model.model.layers[1].mlp.down_proj.weight = torch.nn.Parameter(model.model.layers[1].mlp.down_proj.weight * 2)
    for _ in range(2):
        log_probability_increase(model, batch, targets, layers=[1])
    assert len(stand_in_graphs) == 6


def test_graph_blocker_says_why():
    model = tiny_text_model("llama", dtype=torch.float64)
    model.set_attn_implementation("sdpa")
    batch, _ = _batch(8, 1)
    assert graphed_rows.graph_blocker(model, batch) == "not on a CUDA device"
    assert graphed_rows.graphed_rows(model, get_adapter(model), batch, torch.zeros(2, 1, dtype=torch.long),
                                     (("neuron", 0),), lambda rows: None) is None
    images = Batch({**batch.inputs, "pixel_values": None}, batch.texts, batch.lengths)
    images.inputs["input_ids"] = type("CudaIds", (), {"device": torch.device("cuda")})()  # ids "on a GPU"
    assert "pixel_values" in graphed_rows.graph_blocker(model, images)
