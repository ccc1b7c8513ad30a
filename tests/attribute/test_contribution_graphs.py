"""The device-selected contribution replayed from CUDA graphs (attribute/contribution_graphs.py), checked on the CPU:
the padded call a graph records equals the unpadded call, and the graph cache captures, replays and keys as it
says. That a real CUDA graph replays the same scores is checked on a GPU (``benchmarks/bench_checks.py``)."""

from __future__ import annotations

import pytest
import torch

from helpers import stand_in_graphs as stand_in
from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.attribute import contribution_graphs as fast
from neuronscope.attribute.contribution import contribution
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models import get_adapter
from neuronscope.trace import graphs as graphs_module

EXACT = dict(rtol=1e-9, atol=1e-12)


def _batch(length: int, seed: int, pad: int = 2) -> tuple[Batch, TargetSet]:
    """Two left-padded rows of ``length`` positions, three targets each at positions that vary with the seed (one
    slot empty)."""
    inputs = random_batch(batch=2, length=length, seed=seed, left_pad=(0, pad))
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    g = torch.Generator().manual_seed(seed)
    positions = torch.randint(pad, length, (2, 3), generator=g)
    tokens = torch.randint(3, 40, (2, 3), generator=g)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    return (Batch(inputs, ["?", "?"], inputs["attention_mask"].sum(-1)), TargetSet(tokens, positions, valid))


def _scoring(model, layers=(1, 0), final_norm=False, k=13, absolute=False, site="neuron") -> fast.Scoring:
    adapter = get_adapter(model)
    weights = tuple(adapter.value_vectors(layer) for layer in layers)
    norm = adapter.final_norm() if final_norm else None
    return fast.Scoring(tuple(layers), weights, site, norm, k, absolute, torch.float64)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "mistral"])
@pytest.mark.parametrize("final_norm,absolute", [(False, False), (True, True)])
def test_the_padded_call_a_graph_records_equals_the_unpadded_call(family, final_norm, absolute):
    """One set of buffers (bucket 16) refilled for batches of 12, 9 and 14 positions: each padded call keeps the
    neurons, with the values, of the eager stacked call on the unpadded batch."""
    model = tiny_text_model(family, dtype=torch.float64)
    model.set_attn_implementation("sdpa")
    adapter = get_adapter(model)
    scoring = _scoring(model, final_norm=final_norm, absolute=absolute)
    static = None
    for length, seed in ((12, 1), (9, 2), (14, 3)):
        batch, targets = _batch(length, seed)
        positions = targets.positions
        flat = (torch.arange(2)[:, None] * 16 + positions).reshape(-1)
        if static is None:
            static = fast._Static.empty(dict(batch.inputs), 16, 6)
        static.fill(batch.inputs, flat, targets.token_ids.reshape(-1))
        padded = fast._call(model, adapter, static, scoring)
        expected = contribution(model, batch, targets, layers=[1, 0], top_k=13, final_norm=final_norm,
                                absolute=absolute, graphs=False)
        values = (padded[0] * targets.valid.reshape(-1, 1)).reshape(2, 3, -1)
        torch.testing.assert_close(values, expected.values, **EXACT)
        valid = targets.valid
        assert torch.equal(padded[1].reshape(2, 3, -1)[valid], expected.indices[valid])


class _StandInGraph:
    """What a CUDA graph does, on the CPU: ``replay`` runs the recorded call again into its captured outputs."""

    def __init__(self, call, out):
        self.call, self.out, self.replays = call, out, 0

    def replay(self):
        self.replays += 1
        for kept, fresh in zip(self.out, self.call(), strict=True):
            kept.copy_(fresh)


@pytest.fixture
def stand_in_graphs(monkeypatch):
    """Graphs on the CPU: no device check, the capture replaced by a stand-in."""
    return stand_in.install(monkeypatch, fast, _StandInGraph)


def test_first_call_eager_second_captured_later_ones_replayed_with_their_own_values(stand_in_graphs):
    model = tiny_text_model("llama", dtype=torch.float64)
    for length, seed in ((12, 1), (9, 2), (14, 3), (5, 4)):  # one bucket of 32
        batch, targets = _batch(length, seed)
        graphed = contribution(model, batch, targets, top_k=11)
        eager = contribution(model, batch, targets, top_k=11, graphs=False)
        torch.testing.assert_close(graphed.values, eager.values, **EXACT)
        assert torch.equal(graphed.indices[targets.valid], eager.indices[targets.valid])  # the empty slot: zeros
        assert graphed.meta == eager.meta
    assert len(stand_in_graphs) == 1 and stand_in_graphs[0].replays == 3  # calls 2 (after its capture), 3, 4
    assert graphs_module.kept_graphs(model, "contribution") == 1
    graphs_module.release_graphs(model)
    assert graphs_module.kept_graphs(model) == 0


def test_a_shape_computes_the_same_numbers_eager_captured_or_replayed(stand_in_graphs, monkeypatch):
    """The shape's first call runs eagerly on the padded batch the graph replays: repeated calls agree bit for bit
    (float32, where the padded and the unpadded call differ in the last bits)."""
    model = tiny_text_model("llama", dtype=torch.float32)
    batch, targets = _batch(12, 1)
    calls = []
    original = fast._call
    monkeypatch.setattr(fast, "_call", lambda *args: calls.append(args[2].inputs.tensors["input_ids"].shape) or original(*args))
    first, second, third = (contribution(model, batch, targets, top_k=11) for _ in range(3))
    assert calls[0] == (2, 32)  # the eager first call: the padded batch
    for later in (second, third):
        assert torch.equal(later.values, first.values) and torch.equal(later.indices, first.indices)
    assert stand_in_graphs[0].replays == 2


def test_other_shapes_options_or_replaced_weights_get_their_own_graph(stand_in_graphs):
    model = tiny_text_model("llama", dtype=torch.float64)
    batch, targets = _batch(10, 1)
    for _ in range(2):
        for options in ({}, {"layers": [1]}, {"site": "act"}, {"final_norm": True}, {"top_k": 5},
                        {"absolute": True}):
            contribution(model, batch, targets, **{"top_k": 11, **options})
    assert len(stand_in_graphs) == 6
    long_batch, long_targets = _batch(40, 2)  # bucket 64
    contribution(model, long_batch, long_targets, top_k=11)
    assert len(stand_in_graphs) == 6
    with torch.no_grad():  # new weight tensors: the captured graph would read freed memory
        down = get_adapter(model).module(0, get_adapter(model).family.down)
        down.weight = torch.nn.Parameter(down.weight * 2)
    changed = contribution(model, batch, targets, top_k=11, graphs=False)
    torch.testing.assert_close(contribution(model, batch, targets, top_k=11).values, changed.values, **EXACT)
    assert len(stand_in_graphs) == 6  # the new key's first call ran eagerly


def test_a_final_norm_edited_in_place_is_read_again(stand_in_graphs):
    """The final norm's gain is probed from the module into a tensor of its own: a graph that read it would replay
    the old gain after an in-place edit of the norm, so the probed gain's address is part of the key."""
    model = tiny_text_model("llama", dtype=torch.float64)
    batch, targets = _batch(10, 1)
    for _ in range(3):
        contribution(model, batch, targets, top_k=11, final_norm=True)
    assert len(stand_in_graphs) == 1
    with torch.no_grad():
        model.model.norm.weight.mul_(torch.linspace(0.5, 2.0, model.model.norm.weight.numel(), dtype=torch.float64))
    expected = contribution(model, batch, targets, top_k=11, final_norm=True, graphs=False)
    for _ in range(3):
        got = contribution(model, batch, targets, top_k=11, final_norm=True)
        torch.testing.assert_close(got.values, expected.values, **EXACT)
    assert len(stand_in_graphs) == 2


def test_thresholds_dense_grids_and_unstacked_calls_are_never_graphed(stand_in_graphs, monkeypatch):
    from neuronscope.attribute import selection, stacked

    model = tiny_text_model("llama", dtype=torch.float64)
    batch, targets = _batch(10, 1)
    for _ in range(3):
        contribution(model, batch, targets, threshold=0.01)
        contribution(model, batch, targets)
    monkeypatch.setattr(stacked, "STACK_LIMIT", 0)
    for _ in range(3):
        contribution(model, batch, targets, top_k=11)
    monkeypatch.setattr(stacked, "STACK_LIMIT", 64 * 2**20)
    monkeypatch.setattr(selection, "SELECTOR", "running")
    for _ in range(3):
        contribution(model, batch, targets, top_k=11)
    assert stand_in_graphs == []


def test_graph_blocker_says_why():
    model = tiny_text_model("llama", dtype=torch.float64)
    model.set_attn_implementation("sdpa")
    batch, _ = _batch(8, 1)
    assert fast.graph_blocker(model, batch) == "not on a CUDA device"
    batch_on = Batch(dict(batch.inputs), batch.texts, batch.lengths)
    batch_on.inputs["input_ids"] = type("CudaIds", (), {"device": torch.device("cuda")})()  # ids "on a GPU"
    assert fast.graph_blocker(model, batch_on) is None
    images = Batch({**batch_on.inputs, "pixel_values": None}, batch.texts, batch.lengths)
    assert "pixel_values" in fast.graph_blocker(model, images)
    handle = model.model.layers[0].register_forward_hook(lambda *args: None)
    assert "not graph-safe" in fast.graph_blocker(model, batch_on)
    handle.remove()
    model.set_attn_implementation("eager")
    assert "'eager'" in fast.graph_blocker(model, batch_on)
    model.set_attn_implementation("sdpa")
    model.lm_head.to("meta")  # stands for a second device
    assert fast.graph_blocker(model, batch_on) == "the model spans several devices"


def test_a_batch_is_padded_past_its_length_to_the_next_bucket():
    assert [graphs_module.padded_length(n) for n in (1, 31, 32, 620, 640)] == [32, 32, 64, 640, 672]


def test_a_call_under_other_graph_safe_hooks_is_not_replayed_from_a_graph_captured_without_them(stand_in_graphs):
    """A real replay runs the kernels of the hooks present at its capture and no others: a call under a steady
    intervention (graph-safe hooks) gets its own graph, and once the intervention is gone the old graph replays
    again."""
    from neuronscope.trace.intervene import Intervention, intervene

    model = tiny_text_model("llama", dtype=torch.float64)
    batch, targets = _batch(12, 1)
    plain = [contribution(model, batch, targets, top_k=11) for _ in range(3)]
    assert len(stand_in_graphs) == 1 and stand_in_graphs[0].replays == 2  # calls 2 (its capture) and 3
    edit = Intervention(site="neuron", layer=0, op="scale", value=3.0, positions="all")
    with intervene(model, edit):
        under = contribution(model, batch, targets, top_k=11)
        expected = contribution(model, batch, targets, top_k=11, graphs=False)
    assert stand_in_graphs[0].replays == 2  # not replayed under the intervention
    torch.testing.assert_close(under.values, expected.values, **EXACT)
    assert not torch.allclose(under.values, plain[0].values)
    again = contribution(model, batch, targets, top_k=11)
    assert stand_in_graphs[0].replays == 3
    torch.testing.assert_close(again.values, plain[0].values, **EXACT)
