"""The ``neuronscope`` command: one typer app, one module per command (see ``neuronscope --help``).

Every command turns a :class:`~neuronscope.errors.NeuronscopeError` into one clear message and exit code 2.

Example::

    neuronscope models
    neuronscope locate --model ./tiny-llama --prompt "The capital of France is" --target Paris --out runs/paris
    neuronscope report runs/paris
"""

from __future__ import annotations

import typer

from neuronscope.cli.common import handle_errors
from neuronscope.cli.demo import demo
from neuronscope.cli.edit import app as edit_app
from neuronscope.cli.evaluate import evaluate
from neuronscope.cli.explain import explain
from neuronscope.cli.intervene import intervene
from neuronscope.cli.locate import locate
from neuronscope.cli.models import models
from neuronscope.cli.recipe import app as recipe_app
from neuronscope.cli.report import report

app = typer.Typer(
    name="neuronscope",
    help="Find, explain and edit the neurons behind what a (multimodal) language model says.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

for command in (models, locate, explain, intervene, evaluate, report, demo):
    app.command()(handle_errors(command))
app.add_typer(edit_app, name="edit")
app.add_typer(recipe_app, name="recipe")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
