"""neuronscope: find, explain and edit the neurons behind what a language model says.

The public API, importable as ``import neuronscope as ns``::

    loaded = ns.load_model("path/or/hub-id")                       # model + tokenizer/processor
    batch = ns.encode_prompts(loaded.tokenizer, ["The capital of France is"], model=loaded.model)
    targets = ns.word_targets(loaded.tokenizer, batch, "Paris")
    scores = ns.locate("contribution", loaded.model, batch, targets)
    neurons, values = scores.top_k(20)
    with ns.intervene(loaded.model, ns.suppress(neurons)):
        ...

Names are resolved lazily, so ``import neuronscope`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from neuronscope._lazy import lazy_exports
from neuronscope._version import __version__ as __version__

_EXPORTS = {
    "load_model": "neuronscope.models",
    "get_adapter": "neuronscope.models",
    "supported_families": "neuronscope.models",
    "smollm2_location": "neuronscope.models",
    "encode_prompts": "neuronscope.inputs.batch",
    "encode_images": "neuronscope.inputs.batch",
    "generate": "neuronscope.inputs.batch",
    "capture": "neuronscope.trace",
    "intervene": "neuronscope.trace",
    "Intervention": "neuronscope.trace",
    "suppress": "neuronscope.trace",
    "amplify": "neuronscope.trace",
    "set_neurons": "neuronscope.trace",
    "patch_neurons": "neuronscope.trace",
    "ablate_heads": "neuronscope.trace",
    "token_targets": "neuronscope.inputs.targets",
    "word_targets": "neuronscope.inputs.targets",
    "prediction_targets": "neuronscope.inputs.targets",
    "continuation_targets": "neuronscope.inputs.targets",
    "list_methods": "neuronscope.attribute",
    "NeuronScores": "neuronscope.results.scores",
    "load_result": "neuronscope.results.base",
    "top_tokens": "neuronscope.explain",
    "ValueVectorEdit": "neuronscope.edit.weights",
    "optimise_edit": "neuronscope.edit.optimise",
    "pcr_against_random": "neuronscope.measure.pcr",
    "NeuronGroup": "neuronscope.measure.pcr",
    "PrefixCacheScorer": "neuronscope.measure.probability",
    "ForwardScorer": "neuronscope.measure.probability",
    "run": "neuronscope.workflows",
    "reproducible": "neuronscope.trace.reproducible",
    "NeuronscopeError": "neuronscope.errors",
}


def locate(method: str, model: Any, batch: Any, targets: Any, **options: Any) -> Any:
    """Run the attribution method registered as ``method`` (see ``neuronscope models``)."""
    from neuronscope.attribute import get_method

    return get_method(method).function(model, batch, targets, **options)


__getattr__, _dir = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted([*_dir(), "locate", "__version__"])
