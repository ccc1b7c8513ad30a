"""CUDA-graph capture shared by the paths that replay fixed shapes (greedy decode steps, integrated-gradients rows).

A CUDA graph records the kernels one call of a function issues and replays them with one launch, so that the host
no longer issues them one by one. What the function reads and writes must live at fixed addresses (static buffers
filled before each replay), and it must not make the host wait for the device (``.item()``, a data-dependent
shape): such an operation fails the capture, and :func:`capture` then returns None with a warning so that the
caller runs eagerly. As CUDA graphs ask, the eager warm-up before a capture runs on a side stream
(:func:`on_side_stream`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch


def on_side_stream(function: Callable[[], Any]) -> Any:
    """``function()`` on a fresh side stream that waits for the current one (and is waited for); its result."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        result = function()
    torch.cuda.current_stream().wait_stream(stream)
    return result


def capture(function: Callable[[], Any], what: str, pool: Any = None) -> tuple[torch.cuda.CUDAGraph, Any] | None:
    """``(graph, result)``: the graph of one call of ``function`` (recorded, not run) and the tensors that call
    returned (they live in the graph's memory and are rewritten by each replay), or None with a warning naming
    ``what`` if the call cannot be captured (an operation that reads the device from the host, or out of memory).
    ``pool``: a memory pool shared with other graphs that are never replayed at the same time."""
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, pool=pool):
            result = function()
    except RuntimeError as error:
        warnings.warn(f"{what} could not be captured into a CUDA graph, running eagerly: {error}", stacklevel=3)
        return None
    return graph, result
