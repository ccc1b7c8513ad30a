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
