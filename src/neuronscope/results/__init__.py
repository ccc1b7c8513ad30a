"""Results a user keeps: one protocol (save / load / as_dict / summary), one atomic writer, one loader.

- :mod:`~neuronscope.results.io`: atomic writes; JSON, CSV, PNG and safetensors files, and their readers.
- :mod:`~neuronscope.results.base`: the :class:`Result` protocol, :class:`JsonResult`, :func:`load_result`.
- :mod:`~neuronscope.results.scores`: :class:`NeuronScores`, the scores every attribution method returns.
- :mod:`~neuronscope.results.neuron_layout`: :class:`NeuronLayout`, the (layer, expert, index) id space of MoE models;
  :mod:`~neuronscope.results.expert_scores`: :class:`ExpertNeuronScores`, scores over it.
- :mod:`~neuronscope.results.provenance`: versions and session metadata recorded with every result.

Names are imported lazily so that reading a JSON file does not import torch.
"""

from __future__ import annotations

from neuronscope._lazy import lazy_exports

_EXPORTS = {
    "NeuronScores": "neuronscope.results.scores",
    "ExpertNeuronScores": "neuronscope.results.expert_scores",
    "NeuronLayout": "neuronscope.results.neuron_layout",
    "Result": "neuronscope.results.base",
    "JsonResult": "neuronscope.results.base",
    "load_result": "neuronscope.results.base",
    "FORMATS": "neuronscope.results.base",
    "versions": "neuronscope.results.provenance",
    "run_metadata": "neuronscope.results.provenance",
    "atomic_open": "neuronscope.results.io",
    "atomic_write_bytes": "neuronscope.results.io",
    "atomic_write_text": "neuronscope.results.io",
    "write_json": "neuronscope.results.io",
    "read_json": "neuronscope.results.io",
    "write_csv": "neuronscope.results.io",
    "write_png": "neuronscope.results.io",
    "write_safetensors": "neuronscope.results.io",
    "read_safetensors": "neuronscope.results.io",
    "to_json": "neuronscope.results.io",
}


__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
