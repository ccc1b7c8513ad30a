"""``models``: what neuronscope supports — every model type with its status (verified on tiny configs, text-only,
refused and why; :func:`neuronscope.models.catalogue.catalogue`), the families (text, mixture-of-experts and
vision-language), attribution methods and workflows — read from the registries themselves, so the list cannot drift
from the code. Imports no torch (nor transformers, unless ``--installed`` asks for the installed model types).

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


def catalogue(installed: bool = False) -> dict[str, Any]:
    """Model types with their status, families (name, model types, notes), methods and workflows, as plain data.

    Args:
        installed: also list the causal-LM and image-text-to-text model types of the installed transformers that
            the registry does not name (status ``generic``; imports transformers).
    """
    from neuronscope.attribute.registry import list_methods
    from neuronscope.models.catalogue import catalogue as model_types
    from neuronscope.models.families import TEXT_SPECS, VISION_FAMILIES
    from neuronscope.models.moe.families import MOE_FAMILIES, MOE_VISION_FAMILIES
    from neuronscope.workflows.registry import list_workflows

    return {
        "model_types": [row.as_dict() for row in model_types(include_installed=installed)],
        "text_families": [{"name": spec.name, "model_types": list(spec.model_types), "notes": spec.notes}
                          for spec in TEXT_SPECS],
        "vision_families": [{"name": family.name, "model_types": list(family.model_types),
                             "spatial_map": family.spatial_map, "notes": family.notes}
                            for family in VISION_FAMILIES],
        "moe_families": [{"name": family.name, "model_types": list(family.model_types), "routing": family.routing,
                          "notes": family.notes, "shared_experts": bool(family.shared),
                          "dense_layers": family.dense_rule} for family in MOE_FAMILIES],
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
    from neuronscope.models.catalogue import CatalogueEntry, format_catalogue

    data = catalogue(installed=options.installed)
    if options.as_json:
        return RunResult("models", "", data, [json.dumps(data, indent=2)])
    rows = [CatalogueEntry(**row) for row in data["model_types"]]
    lines = ["Model types (model type, kind, family, note) by status; a VLM listed text-only loads with --text-only:"]
    lines += format_catalogue(rows).splitlines()
    if not options.installed:
        lines.append("  (--installed also lists model types of the installed transformers that the registry does "
                     "not name)")
    lines.append("Attribution methods (locate --method NAME):")
    for method in data["methods"]:
        gradients = "gradients" if method["uses_gradients"] else "no gradients"
        lines.append(f"  {method['name']:<24} {method['summary']}  [{method['paper']}; {gradients}]")
    lines.append("Workflows (neuronscope NAME --help):")
    lines += [f"  {w['name']:<26} {w['summary']}" + (f"  [{w['paper']}]" if w["paper"] else "")
              for w in data["workflows"]]
    return RunResult("models", "", data, lines)
