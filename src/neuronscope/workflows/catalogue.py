"""``models``: what neuronscope supports — model families (text, vision-language, mixture-of-experts), attribution
methods and workflows — read from the registries themselves, so the list cannot drift from the code. Imports no
torch.

Example:
    >>> "llama" in [family["name"] for family in catalogue()["text_families"]]
    True
"""

from __future__ import annotations

import json
from typing import Any

from neuronscope.workflows.result import RunResult
from neuronscope.workflows.specs.text import ModelsOptions

GENERIC = ("other decoder-only models: the generic fallback finds the decoder layers and their FFN output "
           "projection")


def catalogue() -> dict[str, Any]:
    """Families (name, model types, notes), methods and workflows, as plain data."""
    from neuronscope.attribute.registry import list_methods
    from neuronscope.models.families import TEXT_SPECS, VISION_FAMILIES
    from neuronscope.models.moe.families import MOE_FAMILIES, MOE_VISION_FAMILIES
    from neuronscope.workflows.registry import list_workflows

    return {
        "text_families": [{"name": spec.name, "model_types": list(spec.model_types), "notes": spec.notes}
                          for spec in TEXT_SPECS],
        "vision_families": [{"name": family.name, "model_types": list(family.model_types),
                             "spatial_map": family.spatial_map, "notes": family.notes}
                            for family in VISION_FAMILIES],
        "moe_families": [{"name": family.name, "model_types": list(family.model_types), "notes": family.notes,
                          "shared_experts": bool(family.shared), "dense_layers": family.dense_rule}
                         for family in MOE_FAMILIES],
        "moe_vision_families": [{"name": family.name, "model_types": list(family.model_types),
                                 "notes": family.notes} for family in MOE_VISION_FAMILIES],
        "methods": [{"name": info.name, "summary": info.summary, "paper": info.paper,
                     "uses_gradients": info.uses_gradients} for info in list_methods()],
        "workflows": [{"name": workflow.name, "summary": workflow.summary, "paper": workflow.paper}
                      for workflow in list_workflows()],
        "generic_fallback": GENERIC,
    }


def models(options: ModelsOptions, *, loaded: Any = None) -> RunResult:
    """Print the catalogue as text, or as JSON with ``--json``."""
    data = catalogue()
    if options.as_json:
        return RunResult("models", "", data, [json.dumps(data, indent=2)])
    lines = ["Text model families:"]
    for family in data["text_families"]:
        lines += [f"  {family['name']:<12} {family['notes']}", f"  {'':<12} model types: "
                  f"{', '.join(family['model_types'])}"]
    lines.append("Vision-language families (their language model is adapted by its text family):")
    lines += [f"  {family['name']:<12} {family['notes']}" for family in data["vision_families"]]
    lines.append(f"  ({data['generic_fallback']})")
    lines.append("Mixture-of-experts families (neurons are layer:expert:index; see docs/MOE.md):")
    lines += [f"  {family['name']:<12} {family['notes']}" for family in data["moe_families"]]
    lines += [f"  {family['name']:<12} {family['notes']} (vision-language)" for family in data["moe_vision_families"]]
    lines.append("Attribution methods (locate --method NAME):")
    for method in data["methods"]:
        gradients = "gradients" if method["uses_gradients"] else "no gradients"
        lines.append(f"  {method['name']:<24} {method['summary']}  [{method['paper']}; {gradients}]")
    lines.append("Workflows (neuronscope NAME --help):")
    lines += [f"  {w['name']:<26} {w['summary']}" + (f"  [{w['paper']}]" if w["paper"] else "")
              for w in data["workflows"]]
    return RunResult("models", "", data, lines)
