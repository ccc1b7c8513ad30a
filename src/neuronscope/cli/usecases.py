"""``neuronscope edit remove-word | replace-word | suppress``: the editing use cases (``neuronscope.edit.usecases``).

Each command writes a results folder: the edit (``edit.safetensors`` + ``edit.json``, to ``edit apply`` / ``edit
export`` later), ``metrics.json`` (the word's rate in the answers before / after, on the edit prompts and on the
unrelated ones, and their token agreement), ``answers.json`` and ``report.html``. The model itself is not changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from neuronscope.cli import common
from neuronscope.cli.common import (
    ConfigOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    GgufOpt,
    ModelOpt,
    NeuronsOpt,
    OverwriteOpt,
    RunOpt,
)
from neuronscope.errors import InputError

PromptOpt = Annotated[list[str] | None, typer.Option("--prompt", help="A prompt whose answer says the word (repeatable).")]
PromptsOpt = Annotated[Path | None, typer.Option("--prompts", help="JSONL prompts ({\"prompt\": ...} per line).")]
UnrelatedOpt = Annotated[list[str] | None, typer.Option("--unrelated", help="A prompt whose answer must not change "
                                                                              "(repeatable).")]
MethodOpt = Annotated[str, typer.Option(help="optimised (Adam on the value vectors), erase or token_shift.")]
TopKOpt = Annotated[int, typer.Option(help="Neurons to edit (located where the model says the word).", min=1)]
ChatOpt = Annotated[bool, typer.Option("--chat/--no-chat", help="Wrap prompts in the chat template.")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Results folder.")]


def _prompts(options: dict[str, Any]) -> list[str]:
    from neuronscope.inputs.prompts import read_prompts_jsonl

    prompts = list(options.get("prompt") or [])
    if options.get("prompts"):
        prompts += [record.prompt for record in read_prompts_jsonl(options["prompts"])]
    if not prompts:
        raise InputError("give the prompts whose answers say the word: --prompt TEXT (repeatable) or --prompts FILE")
    return prompts


def _write(options: dict[str, Any], command: str, edit: Any, report: Any) -> None:
    from neuronscope.report import build_report
    from neuronscope.runs import RunDir

    results = RunDir(options["out"], overwrite=options["overwrite"])  # after the work: nothing half done
    results.write_config(common.recorded_config(options, command))
    results.write_meta({"runtime": common.runtime_record(options)})
    summary = report.as_dict()
    answers = {key: summary.pop(key) for key in list(summary) if "answers" in key}
    results.write_json("metrics.json", summary)
    results.write_json("answers.json", answers)
    edit.model["source"] = options["model"]
    path = edit.save(results.file("edit"))
    build_report(results.path)
    typer.echo(f"{edit.method} edit of {len(edit.neurons)} neurons written: {path}")
    for key, value in summary.items():
        if isinstance(value, (int, float, str)):
            typer.echo(f"  {key}: {value}")


def remove_word(
    ctx: typer.Context,
    word: Annotated[str | None, typer.Option(help="The word to remove from the answers.")] = None,
    prompt: PromptOpt = None,
    prompts: PromptsOpt = None,
    unrelated: UnrelatedOpt = None,
    method: MethodOpt = "optimised",
    top_k: TopKOpt = 20,
    chat: ChatOpt = False,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    dtype: DtypeOpt = "fp32",
    device_map: DeviceMapOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Remove a (sensitive) word from the model's answers by editing the value vectors of its neurons.

    \b
    Example:
      neuronscope edit remove-word --model ./smollm2 --word Paris --prompt "The capital of France is" \\
          --unrelated "The capital of Japan is" --out edits/no-paris
    """
    from neuronscope.edit.usecases import remove_word as run

    options = common.settings(ctx, config)
    common.require(options, "model", "word", "out")
    texts = _prompts(options)
    loaded = common.load(options)
    edit, report = run(loaded.model, loaded.processor, texts, options["word"], method=options["method"],
                       top_k=options["top_k"], unrelated=options.get("unrelated") or None, chat=options["chat"],
                       reason=f"remove '{options['word']}'")
    _write(options, "edit remove-word", edit, report)


def replace_word(
    ctx: typer.Context,
    source: Annotated[str | None, typer.Option(help="The word the model says now (e.g. a hallucinated object).")]
    = None,
    target: Annotated[str | None, typer.Option(help="The word it should say instead.")] = None,
    prompt: PromptOpt = None,
    prompts: PromptsOpt = None,
    unrelated: UnrelatedOpt = None,
    method: Annotated[str, typer.Option(help="optimised, token_shift or knowledge_neuron.")] = "optimised",
    top_k: TopKOpt = 20,
    chat: ChatOpt = False,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    dtype: DtypeOpt = "fp32",
    device_map: DeviceMapOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Make the model say TARGET where it says SOURCE (correct a hallucinated object, change a fact's answer).

    \b
    Example:
      neuronscope edit replace-word --model ./smollm2 --source Paris --target Rome \\
          --prompt "The capital of France is" --unrelated "The capital of Japan is" --out edits/rome
    """
    from neuronscope.edit.usecases import replace_word as run

    options = common.settings(ctx, config)
    common.require(options, "model", "source", "target", "out")
    texts = _prompts(options)
    loaded = common.load(options)
    edit, report = run(loaded.model, loaded.processor, texts, options["source"], options["target"],
                       method=options["method"], top_k=options["top_k"], unrelated=options.get("unrelated") or None,
                       chat=options["chat"], reason=f"replace '{options['source']}' by '{options['target']}'")
    _write(options, "edit replace-word", edit, report)


def suppress(
    ctx: typer.Context,
    neurons: NeuronsOpt = None,
    run: RunOpt = None,
    words: Annotated[str | None, typer.Option(help="Comma-separated words of the concept, for the report.")] = None,
    prompt: PromptOpt = None,
    prompts: PromptsOpt = None,
    unrelated: UnrelatedOpt = None,
    chat: ChatOpt = False,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    dtype: DtypeOpt = "fp32",
    device_map: DeviceMapOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Suppress a concept: erase its neurons' value vectors (from --neurons or a locate run's selection).

    \b
    Example:
      neuronscope edit suppress --run runs/red --words red --prompt "The colour of blood is" --out edits/no-red
    """
    from neuronscope.cli.explain import model_options_from_run
    from neuronscope.edit.usecases import suppress_concept

    options = common.settings(ctx, config)
    selected, run_config = common.neurons_from(options)
    options = model_options_from_run(options, run_config)
    common.require(options, "model", "out")
    loaded = common.load(options)
    words_list = [w.strip() for w in (options.get("words") or "").split(",") if w.strip()]
    texts = _prompts(options) if (options.get("prompt") or options.get("prompts")) else None
    edit, report = suppress_concept(loaded.model, selected, processor=loaded.processor, prompts=texts,
                                    words=words_list, unrelated=options.get("unrelated") or None,
                                    chat=options["chat"], reason=f"suppress {', '.join(words_list) or 'a concept'}")
    _write(options, "edit suppress", edit, report)


def register(app: typer.Typer) -> None:
    """Add the use-case commands to the ``edit`` command group."""
    for name, command in (("remove-word", remove_word), ("replace-word", replace_word), ("suppress", suppress)):
        app.command(name)(common.handle_errors(command))
