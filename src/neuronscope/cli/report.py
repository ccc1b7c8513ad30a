"""``neuronscope report RUN_DIR``: rebuild a run's self-contained HTML report from its files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    run_dir: Annotated[Path, typer.Argument(help="A results folder written by a neuronscope command.")],
    title: Annotated[str | None, typer.Option(help="Page title (default: from the run's config).")] = None,
    max_rows: Annotated[int, typer.Option(min=1, help="Rows shown per table.")] = 200,
) -> None:
    """Rebuild the HTML report (report.html) of a results folder.

    \b
    Example:
      neuronscope report runs/paris
    """
    from neuronscope.report import build_report

    path = build_report(run_dir, title=title, max_rows=max_rows)
    typer.echo(f"report written: {path}")
