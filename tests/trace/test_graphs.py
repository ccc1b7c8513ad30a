"""The capture helper shared by greedy decoding and integrated gradients (trace/graphs.py), without a GPU: a call
that cannot be captured gives None and one warning naming what was being captured, so that the caller runs it
eagerly. (Capture and replay themselves are checked on the GPU by benchmarks/bench_checks.py.)"""

from __future__ import annotations

import contextlib

import pytest
import torch

from neuronscope.trace import graphs


def test_a_call_that_cannot_be_captured_gives_none_and_a_warning(monkeypatch):
    class Graph:
        pass

    @contextlib.contextmanager
    def refusing(graph, pool=None):
        raise RuntimeError("operation not permitted when stream is capturing")
        yield

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", refusing)
    with pytest.warns(UserWarning, match="the test rows could not be captured into a CUDA graph, running eagerly"):
        assert graphs.capture(lambda: torch.ones(2), "the test rows") is None


def test_a_captured_call_hands_back_its_graph_and_its_result(monkeypatch):
    seen = {}

    class Graph:
        pass

    @contextlib.contextmanager
    def recording(graph, pool=None):
        seen["pool"] = pool
        yield

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", recording)
    graph, result = graphs.capture(lambda: torch.arange(3), "rows", pool="shared")
    assert isinstance(graph, Graph) and result.tolist() == [0, 1, 2] and seen["pool"] == "shared"


def test_a_capture_that_does_not_drain_records_on_a_side_stream_into_the_last_graphs_pool(monkeypatch):
    """drain=False (decode steps): no device synchronisation and no emptied cache (torch.cuda.graph does both on
    entry); recorded on a side stream kept per device, after the work queued on the current one; each graph shares
    the pool of the one captured before it (kept until the next: a pool whose graphs are all gone cannot be captured
    into again); a call that fails still ends the capture, and gives None and a warning."""
    events = []

    class Graph:
        count = 0

        def __init__(self):
            Graph.count += 1
            self.name = f"pool {Graph.count}"

        def capture_begin(self, *pool, capture_error_mode):
            events.append(("begin", pool, capture_error_mode))

        def capture_end(self):
            events.append("end")

        def pool(self):
            return self.name

    class Stream:
        def __init__(self, name="side"):
            self.name = name
            events.append(f"new {name} stream")

        def wait_stream(self, other):
            events.append(f"{self.name} waits for {other.name}")

    def forbidden(*args, **kwargs):
        raise AssertionError("drained")

    @contextlib.contextmanager
    def on(stream):
        events.append(f"on {stream.name}")
        yield
        events.append(f"off {stream.name}")

    main = Stream("main")
    events.clear()
    for name, value in {"CUDAGraph": Graph, "graph": forbidden, "synchronize": forbidden, "empty_cache": forbidden,
                        "current_device": lambda: 0, "Stream": lambda index: Stream(), "current_stream": lambda: main,
                        "stream": on}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(graphs, "_SIDE_STREAMS", {})
    monkeypatch.setattr(graphs, "_LAST_QUEUED", {})

    def recording(pool):
        return ["side waits for main", "on side", ("begin", pool, "global"), "record", "end", "off side",
                "main waits for side"]

    graph, result = graphs.capture(lambda: (events.append("record"), 5)[1], "a step", drain=False)
    assert isinstance(graph, Graph) and result == 5
    assert events == ["new side stream"] + recording(())  # the first: a pool of its own
    events.clear()
    second, result = graphs.capture(lambda: (events.append("record"), 6)[1], "a step", drain=False)
    assert result == 6 and events == recording(("pool 1",))  # the same stream, the first graph's pool
    events.clear()
    graphs.capture(lambda: events.append("record"), "a step", drain=False)
    assert events == recording(("pool 2",)) and graphs._LAST_QUEUED[0].name == "pool 3"
    events.clear()
    graphs.capture(lambda: events.append("record"), "a step", pool="asked", drain=False)
    assert events == recording(("asked",)) and graphs._LAST_QUEUED[0].name == "pool 3"  # a pool asked: not kept

    def failing():
        raise RuntimeError("operation not permitted when stream is capturing")

    events.clear()
    with pytest.warns(UserWarning, match="a step could not be captured into a CUDA graph, running eagerly"):
        assert graphs.capture(failing, "a step", drain=False) is None
    assert "end" in events and graphs._LAST_QUEUED[0].name == "pool 3"  # a failed graph is not kept
    events.clear()  # the eager warm-up before a capture runs on that same stream: no stream made per call
    assert graphs.on_side_stream(lambda: events.append("warm-up") or 7) == 7
    assert graphs.on_side_stream(lambda: events.append("warm-up") or 8) == 8
    assert events == ["side waits for main", "on side", "warm-up", "off side", "main waits for side"] * 2


def test_shape_graphs_run_a_shape_eagerly_first_keep_the_recent_ones_and_are_released(monkeypatch):
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    monkeypatch.setattr(graphs, "capture", lambda function, what, pool=None: None if what == "fails" else
                        ("graph", function()))
    model = torch.nn.Linear(2, 2)
    kept = graphs.graphs_of(model, "path", limit=2)
    assert graphs.graphs_of(model, "path", limit=2) is kept
    assert kept.eager_first("a") and not kept.eager_first("a")  # a shape's first call only
    assert kept.capture(lambda: 1, "fails", "a") is None and kept.eager_first("a")  # stays eager once failed
    assert kept.capture(lambda: 2, "works", "b") == ("graph", 2) and kept.pool == "pool"
    for key in ("b", "c"):
        kept.keep(key, key.upper())
    assert kept.replayable("b") == "B"  # now the most recently used
    kept.keep("d", "D")  # over the limit: "c", the least recently used, goes
    assert kept.replayable("c") is None and kept.replayable("b") == "B" and kept.replayable("d") == "D"
    graphs.graphs_of(model, "other", limit=4).keep("x", "X")
    assert graphs.kept_graphs(model, "path") == 2 and graphs.kept_graphs(model) == 3
    graphs.release_graphs(model)
    assert graphs.kept_graphs(model) == 0


def test_replay_blocker_names_what_stops_every_path(monkeypatch):
    model = torch.nn.Linear(2, 2)
    cuda = torch.device("cuda")
    assert graphs.replay_blocker(model, torch.device("cpu"), "sdpa") == "not on a CUDA device"
    assert "'eager'" in graphs.replay_blocker(model, cuda, "eager")
    assert graphs.replay_blocker(model, cuda, "sdpa") is None
    handle = model.register_forward_hook(lambda *args: None)
    assert "not graph-safe" in graphs.replay_blocker(model, cuda, "sdpa")
    handle.remove()
    model.bias = torch.nn.Parameter(torch.zeros(2, device="meta"))  # stands for a second device
    assert graphs.replay_blocker(model, cuda, "sdpa") == "the model spans several devices"


def test_model_key_names_the_graph_safe_hooks_present_but_not_a_paths_own(monkeypatch):
    from helpers.tiny_models import tiny_text_model
    from neuronscope.models import get_adapter
    from neuronscope.trace.hooks import HookSet
    from neuronscope.trace.sites import resolve_site

    model = tiny_text_model("llama", dtype=torch.float32)
    adapter = get_adapter(model)
    bare = graphs.model_key(model)
    assert bare[1] == ()
    with HookSet(adapter, graph_safe=True) as hooks:
        hooks.add(resolve_site(adapter, "neuron", 0), lambda tensor, call: None)
        first = graphs.model_key(model)
    with HookSet(adapter, graph_safe=True) as hooks:
        hooks.add(resolve_site(adapter, "neuron", 0), lambda tensor, call: None)
        second = graphs.model_key(model)
    assert len(first[1]) == 2 and first[1] != second[1]  # the call watcher and the site hook; never reused
    with HookSet(adapter, graph_safe=True, owned=True) as hooks, HookSet(adapter) as other:
        hooks.add(resolve_site(adapter, "neuron", 0), lambda tensor, call: None)
        other.add(resolve_site(adapter, "neuron", 1), lambda tensor, call: None)
        assert graphs.model_key(model) == bare  # a path's own hooks, and hooks that block graphs anyway
    assert first[0] == bare[0]
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    assert graphs.model_key(model)[0] != bare[0]


def test_replay_or_run_runs_eagerly_then_captures_then_replays_into_refilled_buffers(monkeypatch):
    """A stand-in graph whose replay runs the recorded call again into its outputs: the first call eager on fresh
    buffers, the second captured and replayed, later ones refilled and replayed; a failed capture stays eager."""

    class Replaying:
        def __init__(self, function):
            self.function = function

        def replay(self):
            fresh = self.function()
            kept.entries[next(iter(kept.entries))].out.copy_(fresh)

    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    monkeypatch.setattr(graphs, "capture", lambda function, what, pool=None: None if what == "fails" else
                        (Replaying(function), function()))
    kept = graphs.ShapeGraphs(limit=4)
    calls = []

    def run(value, what="rows", eager=None):
        return kept.replay_or_run("k", lambda: torch.tensor([value]), lambda buffer: buffer.fill_(value),
                                  lambda buffer: calls.append("recorded") or buffer * 10, what, eager=eager,
                                  alive="kept alive")

    assert run(1, eager=lambda buffer: calls.append("eager") or buffer * 10).tolist() == [10]
    assert calls == ["eager"] and not kept.entries
    assert run(2).tolist() == [20] and kept.entries["k"].alive == "kept alive"  # captured, then replayed
    assert run(3).tolist() == [30] and kept.entries["k"].static.tolist() == [3]
    other = graphs.ShapeGraphs(limit=4)
    for value in (1, 2, 3):  # a shape that cannot be captured runs eagerly every time
        assert other.replay_or_run("k", lambda v=value: torch.tensor([v]), lambda b: None, lambda b: b + 1,
                                   "fails").tolist() == [value + 1]
    assert not other.entries


def test_text_key_and_flat_rows():
    model = torch.nn.Linear(2, 2)
    ids = torch.zeros(3, 7, dtype=torch.long)
    key = graphs.text_key(model, {"input_ids": ids, "attention_mask": ids.int()}, 32)
    assert key[:3] == (3, 32, (("attention_mask", torch.int32), ("input_ids", torch.long)))
    assert key[3] == graphs.model_key(model)
    positions = torch.tensor([[0, 6], [2, 5], [1, 1]])
    flat = graphs.flat_rows(positions, 32)
    assert flat.tolist() == [0, 6, 34, 37, 65, 65]
    tokens = torch.arange(3 * 32).reshape(3, 32)
    assert torch.equal(tokens.reshape(-1)[flat].reshape(3, 2), tokens.gather(1, positions))  # the same tokens


def test_a_step_replayer_runs_the_first_call_eagerly_captures_the_second_and_replays_from_then_on(monkeypatch):
    events = []

    class Graph:
        def replay(self):
            events.append("replay")

    monkeypatch.setattr(graphs, "on_side_stream", lambda step: (events.append("side"), step()))
    monkeypatch.setattr(graphs, "capture", lambda step, what, pool=None, drain=True: (
        events.append(f"capture drain={drain}" + (f" pool={pool}" if pool else "")), (Graph(), None))[1])
    step = lambda: events.append("step")  # noqa: E731
    replayer = graphs.StepReplayer(step, "a step", graphs=True)
    for _ in range(4):
        replayer()
    assert events == ["side", "step", "capture drain=True", "replay", "replay", "replay"]
    events.clear()
    queued = graphs.StepReplayer(step, "a step", graphs=True, drain=False)
    for _ in range(2):
        queued()
    assert events == ["side", "step", "capture drain=False", "replay"]
    events.clear()
    monkeypatch.setattr(graphs.torch.cuda, "graph_pool_handle", lambda: "own")  # a kept decoder's: a pool of its own
    owning = graphs.StepReplayer(step, "a step", graphs=True, drain=False, own_pool=True)
    for _ in range(2):
        owning()
    assert events == ["side", "step", "capture drain=False pool=own", "replay"]
    events.clear()
    eager = graphs.StepReplayer(step, "a step", graphs=False)
    for _ in range(3):
        eager()
    assert events == ["step"] * 3
    events.clear()
    monkeypatch.setattr(graphs, "capture", lambda step, what, pool=None, drain=True: events.append("capture"))  # fails
    failing = graphs.StepReplayer(step, "a step", graphs=True)
    for _ in range(3):
        failing()
    assert events == ["side", "step", "capture", "step", "step"]
