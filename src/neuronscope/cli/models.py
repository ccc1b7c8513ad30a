"""``neuronscope models``: the supported model families (text and vision-language) and the attribution methods."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer


def catalogue() -> dict[str, Any]:
    """Families (name, model types, notes) and registered methods, as plain data.

    Example:
        >>> "llama" in [family["name"] for family in catalogue()["text_families"]]
        True
    """
    from neuronscope.attribute import list_methods
    from neuronscope.models import TEXT_SPECS, VISION_FAMILIES

    return {
        "text_families": [{"name": spec.name, "model_types": list(spec.model_types), "notes": spec.notes}
                          for spec in TEXT_SPECS],
        "vision_families": [{"name": family.name, "model_types": list(family.model_types),
                             "spatial_map": family.spatial_map, "notes": family.notes}
                            for family in VISION_FAMILIES],
        "methods": [{"name": info.name, "summary": info.summary, "paper": info.paper,
                     "uses_gradients": info.uses_gradients} for info in list_methods()],
        "generic_fallback": "other decoder-only models: the generic fallback finds the decoder layers and their "
                            "FFN output projection",
    }


def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """List the supported model families and the registered attribution methods.

    \b
    Example:
      neuronscope models
      neuronscope models --json
    """
    data = catalogue()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo("Text model families:")
    for family in data["text_families"]:
        typer.echo(f"  {family['name']:<12} {family['notes']}")
        typer.echo(f"  {'':<12} model types: {', '.join(family['model_types'])}")
    typer.echo("Vision-language families (their language model is adapted by its text family):")
    for family in data["vision_families"]:
        typer.echo(f"  {family['name']:<12} {family['notes']}")
    typer.echo(f"  ({data['generic_fallback']})")
    typer.echo("Attribution methods (locate --method NAME):")
    for method in data["methods"]:
        gradients = "gradients" if method["uses_gradients"] else "no gradients"
        typer.echo(f"  {method['name']:<24} {method['summary']}  [{method['paper']}; {gradients}]")
