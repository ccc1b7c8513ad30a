"""The CLI, built from the workflow registry: one click command per workflow, its flags from its options dataclass.

Parsing only: a command turns its flags (and ``--config`` file) into the workflow's options dataclass, which
checks every value, then calls the workflow and prints its result's summary. Every
:class:`~neuronscope.errors.NeuronscopeError` becomes ``error: <message>`` on stderr and exit code 2, with no
traceback; an interrupted run says how to resume and exits with 130.

Nothing here imports torch or transformers: ``neuronscope --help`` only reads the registry.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import typing
from typing import Any

import click

from neuronscope.errors import NeuronscopeError, OptionError
from neuronscope.workflows.options import coerce, field_flag, field_types, from_config_file
from neuronscope.workflows.registry import Workflow, list_workflows

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
HELP = "Find, explain and edit the neurons behind what a (multimodal) language model says."


class _Group(click.Group):
    """A click group whose usage errors (an unknown flag, a missing value) are one ``error:`` line and exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:
            click.echo(error.ctx.get_help() if error.ctx else str(error))
            sys.exit(0)
        except click.UsageError as error:
            command = error.ctx.command_path if error.ctx else "neuronscope"
            fail(f"{error.format_message()}; see '{command} --help'")
        except click.exceptions.Abort:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.exceptions.Exit as error:
            sys.exit(error.exit_code)


def build_app() -> click.Group:
    """The ``neuronscope`` command group, with a sub-group for every first word of a workflow name."""
    root = _Group("neuronscope", help=HELP, context_settings=CONTEXT, no_args_is_help=True)
    groups: dict[str, click.Group] = {}
    for workflow in list_workflows():
        *path, leaf = workflow.name.split(" ")
        parent = root
        for part in path:
            if part not in groups:
                groups[part] = click.Group(part, help=_GROUP_HELP.get(part, ""), context_settings=CONTEXT,
                                           no_args_is_help=True)
                parent.add_command(groups[part])
            parent = groups[part]
        parent.add_command(command_for(workflow, leaf))
    return root


_GROUP_HELP = {"edit": "Make, apply, revert and export value-vector edits, and the word-editing use cases.",
               "recipe": "The papers' pipelines and reproductions end to end."}


def command_for(workflow: Workflow, name: str) -> click.Command:
    """The click command of one workflow: its options dataclass's fields as flags, plus ``--config``."""
    types = field_types(workflow.options)
    params: list[click.Parameter] = []
    for spec in dataclasses.fields(workflow.options):
        params.append(_parameter(spec, types[spec.name]))
    params.append(click.Option(["--config", "-c"], type=str, default=None,
                               help="YAML/JSON file of options (option names as keys); command-line flags win."))
    help_text = workflow.summary + (f"\n\nPaper: {workflow.paper}." if workflow.paper else "")
    if workflow.default_model:
        help_text += f"\n\nModel: {workflow.default_model} unless --model is given."
    if workflow.example:
        help_text += "\n\n\b\nExample:\n" + "\n".join("  " + line for line in workflow.example.splitlines())

    def callback(**flags: Any) -> None:
        run_command(workflow, flags)

    return click.Command(name, params=params, callback=callback, help=help_text, context_settings=CONTEXT,
                         short_help=workflow.summary)


def _parameter(spec: dataclasses.Field, annotation: Any) -> click.Parameter:
    meta = spec.metadata
    if meta.get("argument"):
        return click.Argument([spec.name], required=False, type=str)
    names = [field_flag(spec)] + ([meta["short"]] if meta.get("short") else [])
    help_text = meta.get("help", "")
    if annotation is bool:
        flag = field_flag(spec)
        return click.Option([f"{flag}/--no-{flag[2:]}", *names[1:], spec.name], default=None, help=help_text,
                            show_default=bool(spec.default), hidden=meta.get("hidden", False))
    multiple = typing.get_origin(annotation) is list and typing.get_args(annotation)[0] is str
    default = spec.default if spec.default is not dataclasses.MISSING else None
    shown = None if default is None or multiple else (", ".join(map(str, default)) if isinstance(default, list)
                                                      else str(default))
    return click.Option([*names, spec.name], type=str, multiple=multiple, default=None, help=help_text,
                        show_default=shown if shown not in (None, "") else False, hidden=meta.get("hidden", False))


class _Notes(logging.Handler):
    """The library's notes (out-of-memory back-offs, skipped inputs) on stderr, one line each."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(record.getMessage(), err=True)


def _show_notes() -> None:
    logger = logging.getLogger("neuronscope")
    if not any(isinstance(handler, _Notes) for handler in logger.handlers):
        logger.addHandler(_Notes(logging.INFO))
        logger.propagate = False


def run_command(workflow: Workflow, flags: dict[str, Any]) -> None:
    """Options from the config file and the flags (flags win), checked; the workflow run; its summary printed."""
    _show_notes()
    try:
        options = options_from(workflow, flags)
        from neuronscope.workflows.dispatch import run_workflow

        result = run_workflow(workflow, options)
    except NeuronscopeError as error:
        fail(str(error))
    except FileNotFoundError as error:
        fail(f"{error.filename or error}: file not found; check the path")
    except IsADirectoryError as error:
        fail(f"{error.filename or error}: is a folder, expected a file")
    except PermissionError as error:
        fail(f"{error.filename or error}: permission denied; choose a path you can write to")
    except KeyboardInterrupt:
        out = flags.get("out")
        hint = ("; finished examples are kept: run the same command with --resume to continue" if workflow.loops
                and out else "")
        click.echo(f"interrupted{hint}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    summary = result.summary() if hasattr(result, "summary") else (str(result) if result is not None else "")
    if summary:
        click.echo(summary)


def options_from(workflow: Workflow, flags: dict[str, Any]) -> Any:
    """The workflow's options dataclass from ``--config`` values overlaid with the flags given."""
    config = flags.pop("config", None)
    given = {name: value for name, value in flags.items() if value is not None and value != ()}
    values: dict[str, Any] = {}
    if config:
        values.update(from_config_file(workflow.options, config))
    values.update(coerce(workflow.options, {name: list(v) if isinstance(v, tuple) else v
                                            for name, v in given.items()}))
    return workflow.options(**values)


def fail(message: str) -> None:
    """Print ``error: <message>`` (each further line indented) to stderr and exit with code 2."""
    lines = str(message).strip().splitlines() or ["unknown error"]
    click.echo("error: " + lines[0], err=True)
    for line in lines[1:]:
        click.echo("  " + line.strip(), err=True)
    sys.exit(EXIT_USER_ERROR)


__all__ = ["EXIT_USER_ERROR", "OptionError", "build_app", "command_for", "fail", "options_from", "run_command"]
