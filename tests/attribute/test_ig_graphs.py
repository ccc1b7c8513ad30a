"""Integrated gradients replayed from CUDA graphs (attribute/ig_graphs.py), checked on the CPU.

What a graph records is ``_rows_call`` on a right-padded prefix; here it runs eagerly and must equal the
unpadded sequence path and the plain loop. The capture / replay bookkeeping (first call eager, second captured,
later ones replayed with new values in the static buffers) runs with a stand-in graph that re-runs the recorded
function into its captured output, as a replay would. On the GPU, replay == eager is checked by
``benchmarks/bench_checks.py``.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import transformers as T

from helpers import stand_in_graphs as stand_in
from helpers.ig_cases import EAGER, EXACT, float64_model, one_row_batch
from neuronscope.attribute import ig_graphs
from neuronscope.attribute.ig_paths import _example, _ig_sequence, _RowScaler
from neuronscope.attribute.integrated_gradients import alpha_grid, integrated_gradients
from neuronscope.attribute.prefix_rows import RowPlanner, planner_for
from neuronscope.inputs.targets import token_targets
from neuronscope.models import get_adapter
from neuronscope.trace import graphs as graphs_module
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.sites import resolve_site

_model, _batch = float64_model, one_row_batch


def _installed(model, layers):
    adapter = get_adapter(model)
    scaler, hooks = _RowScaler(), HookSet(adapter, graph_safe=True)
    for layer in layers:
        hooks.add(resolve_site(adapter, "neuron", layer), scaler.callback(layer))
    return scaler, hooks


@pytest.mark.parametrize("family,attention", [("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa"),
                                              ("gpt_neox", "eager")])
@pytest.mark.parametrize("chunks", [[10], [6, 4]])
def test_the_padded_call_a_graph_records_equals_the_sequence_path(family, attention, chunks):
    """One set of buffers (bucket 16) refilled for prompts of 3, 9 and 14 prefix positions: each call equals the
    unpadded sequence path; two chunks share the padded prefix cache through a copy."""
    model = _model(family, attention)
    layers, alphas = [1, 0], alpha_grid(5)
    scaler, hooks = _installed(model, layers)
    tolerance = EXACT if attention == "sdpa" else EAGER
    with hooks:
        call = static = None
        for length, seed in ((4, 1), (10, 2), (15, 3)):
            ids, positions, scored = _example(_batch(length, seed), 0, length - 1)
            if call is None:
                static, _, call = ig_graphs.prepared_call(model, scaler, 16, ids, positions, scored, 7, layers,
                                                          alphas, chunks)
            else:
                static.fill(ids, positions, scored, 7, torch.cat([alphas, alphas]))
            padded = call()
            unpadded = _ig_sequence(model, scaler, ids, positions, scored, 7, layers, alphas,
                                    RowPlanner.for_model(model, limit=chunks[0]))
            assert padded.abs().min() > 0
            torch.testing.assert_close(padded, unpadded, **tolerance)


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
               "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


class _StandInGraph:
    """What a CUDA graph does, on the CPU: ``replay`` runs the recorded call again into its captured output, with
    the hooks the model had at capture (a graph holds their kernels; the replaying call's own hooks do not run)."""

    def __init__(self, call, out):
        self.call, self.out, self.replays = call, out, 0
        self.modules = list(call.args[0].modules())
        self.hooks = [{name: dict(getattr(module, name)) for name in _HOOK_DICTS} for module in self.modules]

    def replay(self):
        self.replays += 1
        current = [{name: getattr(module, name) for name in _HOOK_DICTS} for module in self.modules]
        try:
            for module, recorded in zip(self.modules, self.hooks, strict=True):
                for name, hooks in recorded.items():
                    setattr(module, name, OrderedDict(hooks))
            self.out.copy_(self.call())
        finally:
            for module, kept in zip(self.modules, current, strict=True):
                for name, hooks in kept.items():
                    setattr(module, name, hooks)


@pytest.fixture
def stand_in_graphs(monkeypatch):
    """Graphs on the CPU: no device check, the capture replaced by a stand-in."""
    return stand_in.install(monkeypatch, ig_graphs, _StandInGraph)


def test_first_call_eager_second_captured_later_ones_replayed_with_their_own_values(stand_in_graphs):
    model = _model()
    plains, graphed = [], []
    for length, seed in ((12, 1), (9, 2), (14, 3), (5, 4)):  # prompts of 12, 9, 14 and 5 positions: one bucket of 32
        batch = _batch(length, seed)
        targets = token_targets(batch, 7)
        graphed.append(integrated_gradients(model, batch, targets, steps=4).values)
        plains.append(integrated_gradients(model, batch, targets, steps=4, method="plain").values)
    for fast, plain in zip(graphed, plains, strict=True):
        torch.testing.assert_close(fast, plain, **EXACT)
    assert len(stand_in_graphs) == 1 and stand_in_graphs[0].replays == 3  # calls 2 (after its capture), 3, 4
    assert graphs_module.kept_graphs(model, "integrated_gradients") == 1
    ig_graphs.release_graphs(model)
    assert graphs_module.kept_graphs(model) == 0


def test_other_layers_sites_steps_or_replaced_weights_get_their_own_graph(stand_in_graphs):
    model = _model()
    batch = _batch(8, 1)
    targets = token_targets(batch, 7)

    def run(**options):
        return integrated_gradients(model, batch, targets, **{"steps": 4, **options}).values

    for _ in range(3):
        run()
    for _ in range(2):
        run(layers=[1])
        run(site="act")
    assert len(stand_in_graphs) == 3
    reference = integrated_gradients(model, batch, targets, steps=4, method="plain").values
    with torch.no_grad():  # new weight tensors: the captured graph would read freed memory
        down = get_adapter(model).module(0, get_adapter(model).family.down)
        down.weight = torch.nn.Parameter(down.weight * 2)
    changed = integrated_gradients(model, batch, targets, steps=4, method="plain").values
    assert not torch.allclose(changed, reference)
    torch.testing.assert_close(run(), changed, **EXACT)  # not the old graph: the eager call of a new key
    assert len(stand_in_graphs) == 3


def test_the_graph_waits_for_the_planner_to_settle(stand_in_graphs):
    model = _model()
    batch = _batch(8, 1)
    targets = token_targets(batch, 7)
    planner = planner_for(model)
    for _ in range(6):
        integrated_gradients(model, batch, targets, steps=8)
    assert planner.settled(16, 7, torch.device("cpu"))
    assert planner.trials and all(count >= 2 for count in planner.trials.values())
    assert len(stand_in_graphs) == 1


def test_graph_blocker_says_why():
    model = _model()
    cuda = torch.device("cuda")
    assert ig_graphs.graph_blocker(model, torch.device("cpu")) == "not on a CUDA device"
    assert ig_graphs.graph_blocker(model, cuda) is None
    handle = model.model.layers[0].register_forward_hook(lambda *args: None)
    assert "not graph-safe" in ig_graphs.graph_blocker(model, cuda)
    handle.remove()
    config = T.Gemma3TextConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                intermediate_size=24, head_dim=4, vocab_size=64, sliding_window=3,
                                layer_types=["sliding_attention", "full_attention"])
    gemma = T.AutoModelForCausalLM.from_config(config).eval()
    assert "sliding window" in ig_graphs.graph_blocker(gemma, cuda)
    model.lm_head.to("meta")  # stands for a second device
    assert ig_graphs.graph_blocker(model, cuda) == "the model spans several devices"


def test_planner_is_settled_once_every_size_was_tried_twice():
    planner = RowPlanner(per_row=1.0, per_row_key=0.0, budget=1e9)
    cpu = torch.device("cpu")
    assert not planner.settled(64, 10, cpu)
    for size in planner.candidates(64, 10, cpu):
        planner.timed(size, size, 1.0)
        planner.timed(size, size, 1.0)
    assert planner.settled(64, 10, cpu)
    assert RowPlanner(per_row=1.0, per_row_key=0.0, limit=16).settled(64, 10, cpu)


def test_the_default_gpu_chunk_budget_is_capped_at_30_percent_of_the_weights(monkeypatch):
    from neuronscope.attribute import prefix_rows

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (100 * 2**30, 140 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 0)
    cuda = torch.device("cuda")
    seven_b = RowPlanner(per_row=1.0, per_row_key=0.0, weights=13.5e9)
    assert seven_b.available(cuda) == pytest.approx(prefix_rows.CHUNK_OF_WEIGHTS * 13.5e9) == pytest.approx(4.05e9)
    small = RowPlanner(per_row=1.0, per_row_key=0.0, weights=270e6)
    assert small.available(cuda) == prefix_rows.CHUNK_FLOOR
    assert RowPlanner(per_row=1.0, per_row_key=0.0, weights=13.5e9, budget=5e9).available(cuda) == 5e9
    assert RowPlanner.for_model(_model()).weights == sum(p.numel() * 8 for p in _model().parameters())


def test_a_call_under_a_steady_intervention_gets_its_own_graph(stand_in_graphs):
    """The graph replays the hooks present at its capture: IG under a graph-safe intervention is not replayed from
    the graph captured without it (and equals the plain loop under it)."""
    from neuronscope.trace.intervene import Intervention, intervene

    model = _model()
    batch = _batch(12, 1)
    targets = token_targets(batch, 7)
    for _ in range(3):
        integrated_gradients(model, batch, targets, steps=4)
    assert len(stand_in_graphs) == 1 and stand_in_graphs[0].replays == 2
    with intervene(model, Intervention(site="neuron", layer=0, op="scale", value=2.0, positions="all")):
        under = integrated_gradients(model, batch, targets, steps=4).values
        plain = integrated_gradients(model, batch, targets, steps=4, method="plain").values
    assert stand_in_graphs[0].replays == 2
    torch.testing.assert_close(under, plain, **EXACT)
