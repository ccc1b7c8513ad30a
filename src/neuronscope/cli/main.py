"""The ``neuronscope`` command: every workflow of :mod:`neuronscope.workflows.registry`, built by :mod:`.build`.

Example::

    neuronscope models
    neuronscope locate --model ./tiny-llama --prompt "The capital of France is" --target Paris --out runs/paris
    neuronscope report runs/paris
"""

from __future__ import annotations

from neuronscope.cli.build import build_app

app = build_app()


def main() -> None:
    app(prog_name="neuronscope")


if __name__ == "__main__":
    main()
