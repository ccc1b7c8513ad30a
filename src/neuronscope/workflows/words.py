"""``edit remove-word | replace-word | suppress``: the word edits of :mod:`neuronscope.workflows.word_edits` as
results folders.

Each writes: the edit (``edit.safetensors`` + ``edit.json``, to ``edit apply`` / ``edit export`` later),
``metrics.json`` (the word's rate in the answers before / after, on the edit prompts and on the unrelated ones,
and their token agreement), ``answers.json`` and ``report.html``. The model itself is not changed.
"""

from __future__ import annotations

from typing import Any

from neuronscope.errors import InputError
from neuronscope.workflows.common import fit_to_model, load, neurons_of, with_model_of
from neuronscope.workflows.options import split_words
from neuronscope.workflows.result import RunResult
from neuronscope.workflows.specs.edits import RemoveWordOptions, ReplaceWordOptions, SuppressConceptOptions


def _prompts(options: Any, required: bool = True) -> list[str] | None:
    from neuronscope.inputs.prompts import read_prompts_jsonl

    prompts = list(options.prompt or [])
    if options.prompts:
        prompts += [record.prompt for record in read_prompts_jsonl(options.prompts)]
    if not prompts and required:
        raise InputError("give the prompts whose answers say the word: --prompt TEXT (repeatable) or --prompts FILE")
    return prompts or None


def _write(options: Any, command: str, loaded: Any, edit: Any, report: Any) -> RunResult:
    from neuronscope.report import build_report
    from neuronscope.runs.folder import RunDir

    results = RunDir(options.out, overwrite=options.overwrite)  # after the work: nothing half done
    results.write_config({"command": command, **options.recorded()})
    results.write_meta({"runtime": options.runtime()})
    summary = report.as_dict()
    answers = {key: summary.pop(key) for key in list(summary) if "answers" in key}
    results.write_json("metrics.json", summary)
    results.write_json("answers.json", answers)
    edit.model.update({"source": loaded.source, "load": loaded.describe()})
    path = edit.save(results.file("edit"))
    build_report(results.path)
    lines = [f"{edit.method} edit of {len(edit.neurons)} neurons written: {path}"]
    lines += [f"  {key}: {value}" for key, value in summary.items() if isinstance(value, (int, float, str))]
    return RunResult(command, str(options.out), summary, lines)


def remove_word_edit(options: RemoveWordOptions, *, loaded: Any = None) -> RunResult:
    """``edit remove-word``."""
    from neuronscope.runs.folder import RunDir
    from neuronscope.workflows.word_edits import remove_word

    texts = _prompts(options)
    RunDir.check(options.out, overwrite=options.overwrite)
    loaded = load(options, loaded)
    edit, report = remove_word(loaded.model, loaded.processor, texts, options.word, method=options.method,
                               top_k=options.top_k, unrelated=options.unrelated or None, chat=options.chat,
                               reason=f"remove '{options.word}'")
    return _write(options, "edit remove-word", loaded, edit, report)


def replace_word_edit(options: ReplaceWordOptions, *, loaded: Any = None) -> RunResult:
    """``edit replace-word``."""
    from neuronscope.runs.folder import RunDir
    from neuronscope.workflows.word_edits import replace_word

    texts = _prompts(options)
    RunDir.check(options.out, overwrite=options.overwrite)
    loaded = load(options, loaded)
    edit, report = replace_word(loaded.model, loaded.processor, texts, options.source, options.target,
                                method=options.method, top_k=options.top_k, unrelated=options.unrelated or None,
                                chat=options.chat, reason=f"replace '{options.source}' by '{options.target}'")
    return _write(options, "edit replace-word", loaded, edit, report)


def suppress_concept_edit(options: SuppressConceptOptions, *, loaded: Any = None) -> RunResult:
    """``edit suppress``: erase a concept's neurons (from ``--neurons`` or a locate run's selection)."""
    from neuronscope.models.adapter import get_adapter
    from neuronscope.runs.folder import RunDir
    from neuronscope.workflows.word_edits import suppress_concept

    selected, run_config = neurons_of(options)
    options = with_model_of(options, run_config)
    texts = _prompts(options, required=False)
    RunDir.check(options.out, overwrite=options.overwrite)
    loaded = load(options, loaded)
    adapter = get_adapter(loaded.model)
    selected = fit_to_model(selected, adapter)
    words = split_words(options.words)
    edit, report = suppress_concept(loaded.model, selected, processor=loaded.processor, prompts=texts, words=words,
                                    unrelated=options.unrelated or None, chat=options.chat,
                                    reason=f"suppress {', '.join(words) or 'a concept'}")
    return _write(options, "edit suppress", loaded, edit, report)
