"""The result every workflow returns: where its files are, its figures, and what the terminal shows.

It follows the :class:`~neuronscope.results.base.Result` protocol (``save`` / ``load`` / ``as_dict`` /
``summary``) and imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from neuronscope.results.base import JsonResult


@dataclass
class RunResult(JsonResult):
    """What a workflow did: where its files are, its headline figures, and the lines it prints.

    Attributes:
        command: the workflow (``"locate"``, ``"edit make"`` ...).
        path: the results folder (or file) written, "" when nothing was written.
        metrics: the figures (as in the folder's ``metrics.json``).
        lines: what the terminal shows (:meth:`summary`).
    """

    format: ClassVar[str] = "neuronscope.run_result"

    command: str
    path: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join(self.lines)
