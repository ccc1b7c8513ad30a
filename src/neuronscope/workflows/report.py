"""``report RUN_DIR``: rebuild the self-contained HTML report of a results folder from its files.

A folder that holds no neuronscope results, or whose files are damaged, is refused (the message names the file).

Example:
    >>> report(ReportOptions(run_dir=Path("runs/paris")))   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from neuronscope.errors import RunFolderError
from neuronscope.workflows.result import RunResult
from neuronscope.workflows.specs.text import ReportOptions


def report(options: ReportOptions, *, loaded: Any = None) -> RunResult:
    """Rebuild ``report.html`` of ``options.run_dir``."""
    from neuronscope.report import build_report
    from neuronscope.runs.folder import RunDir

    folder = options.run_dir
    if not folder.is_dir():
        raise RunFolderError(f"{folder}: run folder not found; pass the folder a run wrote its results into")
    RunDir.open(folder).validate()
    path = build_report(folder, title=options.title, max_rows=options.max_rows)
    return RunResult("report", str(path), {}, [f"report written: {path}"])
