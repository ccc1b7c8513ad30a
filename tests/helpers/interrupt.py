"""Killing a run half-way, for resume tests: the ``at``-th call of a module function raises KeyboardInterrupt."""

from __future__ import annotations

from typing import Any


def interrupt_at_call(monkeypatch: Any, module: Any, name: str, at: int = 2) -> dict[str, int]:
    """Replace ``module.name`` by a wrapper that counts its calls (``counter["n"]``) and raises KeyboardInterrupt at
    call ``at``; set ``counter["n"]`` past ``at`` to let every later call through and count them."""
    counter = {"n": 0}
    real = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counter["n"] += 1
        if counter["n"] == at:
            raise KeyboardInterrupt  # the run is killed half-way
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return counter
