"""``neuronscope demo``: the end-to-end demo on the bundled vision-language model (``neuronscope.demo``)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

from neuronscope.errors import NeuronscopeError


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's results.")] = Path("neuronscope-demo"),
    quick: Annotated[bool, typer.Option(help="A shorter run (fewer images), e.g. for CI.")] = False,
) -> None:
    """Run the demo on the bundled small vision-language model: captions, neurons, heatmaps, an edit, a report.

    \b
    Example:
      neuronscope demo --out demo-results
    """
    try:
        module = importlib.import_module("neuronscope.demo")
    except ModuleNotFoundError as error:
        if error.name not in ("neuronscope.demo",):
            raise
        raise NeuronscopeError("the demo is not part of this install yet (no neuronscope.demo module); "
                               "update neuronscope, or run 'neuronscope locate' on a model of your own") from None
    run_demo = getattr(module, "run_demo", None)
    if run_demo is None:
        raise NeuronscopeError("neuronscope.demo has no run_demo(out_dir, quick=...); update neuronscope")
    result = run_demo(out, quick=quick)
    typer.echo(f"demo results in {result if result is not None else out}")
