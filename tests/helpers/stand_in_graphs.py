"""CUDA graphs on the CPU, for the tests of the paths that replay them: no device check, the capture replaced by a
stand-in whose ``replay`` runs the recorded call again into its captured output."""

from __future__ import annotations

from types import ModuleType

import torch

from neuronscope.trace import graphs as graphs_module


def install(monkeypatch, path_module: ModuleType, graph_class: type) -> list:
    """Make ``path_module``'s ``graph_blocker`` let every call through and every capture a ``graph_class(call,
    out)``; the list of those stand-ins, in capture order."""
    captured: list = []

    def capture(call, what, pool=None):
        out = call()
        captured.append(graph_class(call, out))
        return captured[-1], out

    monkeypatch.setattr(path_module, "graph_blocker", lambda *args: None)
    monkeypatch.setattr(graphs_module, "capture", capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    return captured
