"""Rendering only: plots (matplotlib figures, no display) and the self-contained HTML report of a run folder.

- `plots`: layer histogram, score histogram, bar chart figures; write them with `RunDir.write_png`.
- `build_report`: `report.html` with everything inlined (see `neuronscope.report.html` for the file names).

Example:
    >>> from neuronscope.report import build_report
    >>> build_report("runs/demo")  # doctest: +SKIP
"""

from neuronscope.report.html import build_report

__all__ = ["build_report"]
