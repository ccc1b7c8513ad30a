"""``edit make | apply | revert | export``: persistent edits of value vectors (:mod:`neuronscope.edit.weights`).

- ``make``: an edit folder (``edit.safetensors`` + ``edit.json``, plus ``config.json``) for some neurons: erase
  (``w_i ← 0``), noise (``+σ·N(0, I)``), token-shift (``+λ(u_t − u_s)``, with ``--signed``
  ``+λ·sign(⟨w_i, u_s⟩)(u_t − u_s)``) or knowledge-neuron (``−λ1·e(s) + λ2·e(t)``). The edit records how its model
  was loaded (folder, GGUF file, dtype), so ``apply`` and ``export`` load the same model by default. Before anything
  is saved, the edit is measured on its prompts (``--prompt``, else the ``--run``'s) and on background prompts
  (``--background``, else a built-in set), against random edits of same-layer neurons: ``specificity.json``,
  ``metrics.json``, ``report.html`` and the terminal (:mod:`neuronscope.workflows.specificity`).
- ``apply``: write the edited model as a plain Hugging Face folder (a GGUF model is written de-quantised) that also
  keeps the original columns (``neuronscope_originals.safetensors``), so that ``revert`` restores every bit.
- ``revert``: from such a folder, write the original model back out.
- ``export``: the edited model alone (plain Hugging Face folder) with the edit's record, to share or serve.

The written model folders record the command's options in ``neuronscope_config.json`` (``config.json`` there is
the model's own). Nothing is written before the model is loaded and the edit checked against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuronscope.edit.weights import EDIT_RECORD
from neuronscope.errors import EditMismatchError, InputError, RunFolderError
from neuronscope.workflows.common import finish_run, fit_to_model, load, neurons_of, with_model_of
from neuronscope.workflows.result import RunResult
from neuronscope.workflows.specificity import (
    background_for,
    measure_edit,
    measured_prompts,
    write_specificity,
)
from neuronscope.workflows.specs.edits import EditApplyOptions, EditMakeOptions, EditRevertOptions

ORIGINALS = "neuronscope_originals.safetensors"

CONFIG_RECORD = "neuronscope_config.json"


def edit_prefix(path: Path) -> Path:
    """The ``.json`` / ``.safetensors`` prefix of an edit: ``DIR/edit`` for a folder, else the path itself."""
    path = Path(path)
    if path.is_dir():
        return path / "edit"
    return path.with_suffix("") if path.suffix in (".json", ".safetensors") else path


def check_model_folder(path: Path, overwrite: bool) -> None:
    """Refuse a non-empty output folder unless ``overwrite`` (and then only one that neuronscope wrote)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{path} is a file; choose a folder for the model")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise RunFolderError(f"{path} is not empty; choose another folder or pass --overwrite")
        if not (path / CONFIG_RECORD).exists():
            raise RunFolderError(f"{path} is not a folder written by 'neuronscope edit' (no {CONFIG_RECORD}); "
                                 "refusing to overwrite it: choose a new or empty folder")


def _token(processor: Any, spec: str | None, name: str, vocab_size: int) -> int:
    """A token id from ``id:N`` or a word (one token, with a leading space); ``-1`` when not given."""
    from neuronscope.inputs.targets import PREDICTION, parse_target, resolve_target

    if spec is None:
        return -1
    if parse_target(spec).kind == PREDICTION:
        raise InputError(f"--{name} cannot be 'prediction'; give a word or id:N")
    return int(resolve_target(processor, spec, vocab_size))


def make(options: EditMakeOptions, *, loaded: Any = None) -> RunResult:
    """``edit make``: the edit of the chosen neurons, saved into ``--out``."""
    from neuronscope.edit.weights import ValueVectorEdit
    from neuronscope.models.adapter import get_adapter
    from neuronscope.runs.folder import RunDir

    selected, run_config = neurons_of(options)
    options = with_model_of(options, run_config)
    records = _edit_prompts(options, run_config)
    background = background_for(options, [r.prompt for r in records], run_config) if records and options.specificity \
        else []
    RunDir.check(options.out, overwrite=options.overwrite)
    loaded = load(options, loaded)
    adapter = get_adapter(loaded.model)
    selected = fit_to_model(selected, adapter)
    source = _token(loaded.processor, options.source, "source", adapter.vocab_size)
    target = _token(loaded.processor, options.target, "target", adapter.vocab_size)
    model, kind = loaded.model, options.kind
    if kind == "erase":
        edit = ValueVectorEdit.erase(model, selected, reason=options.reason)
    elif kind == "noise":
        edit = ValueVectorEdit.noise(model, selected, options.sigma, options.seed, reason=options.reason)
    elif kind == "token-shift":
        edit = ValueVectorEdit.token_shift(model, selected, source, target, options.strength, reason=options.reason,
                                           signs="source" if options.signed else None)
    else:
        edit = ValueVectorEdit.knowledge_neuron(model, selected, source, target, options.lambda1, options.lambda2,
                                                reason=options.reason)
    edit.model.update({"source": loaded.source, "load": loaded.describe()})
    report = _locality(options, loaded, edit, records, background, run_config)
    results = RunDir(options.out, overwrite=options.overwrite)  # after the edit is made: nothing half done
    results.write_config({"command": "edit make", **options.recorded()})
    results.write_meta({"runtime": options.runtime()})
    path = edit.save(results.file("edit"))
    lines = [f"{kind} edit of {len(selected)} neurons written: {path}"]
    if report is not None:
        metrics: dict[str, Any] = {"neurons": len(selected), "kind": kind, "prompts": len(records)}
        lines += write_specificity(results, {"edit": report}, metrics)
        finish_run(results, metrics, "\n".join(lines))
    elif options.specificity and records:
        lines.append("expert-neuron edit: its locality is not measured here; 'neuronscope evaluate' compares the "
                     "neurons with random neurons of the same experts")
    elif options.specificity:
        lines.append("no prompts to measure the edit on: pass --prompt (or --run) to see its effect and locality")
    return RunResult("edit make", str(options.out), edit.as_dict(), lines)


def _edit_prompts(options: EditMakeOptions, run_config: dict[str, Any]) -> list[Any]:
    """The prompts the edit is measured on: ``--prompt`` / ``--prompts``, else the ``--run``'s (none: [])."""
    from neuronscope.inputs.prompts import prompt_records

    if options.prompt or options.prompts:
        return prompt_records(options.prompts, options.prompt, [])
    if run_config.get("prompts") or run_config.get("prompt"):
        return prompt_records(run_config.get("prompts"), run_config.get("prompt") or [], run_config.get("target") or [])
    return []


def _locality(options: EditMakeOptions, loaded: Any, edit: Any, records: list[Any], background: list[Any],
              run_config: dict[str, Any]) -> Any:
    """The edit's specificity report on its prompts and the background prompts (None: nothing to measure)."""
    from neuronscope.models.adapter import get_adapter

    if not records or not options.specificity or get_adapter(loaded.model).moe is not None:
        return None  # expert-neuron edits: 'neuronscope evaluate' measures them against same-expert neurons
    from neuronscope.workflows.common import prompt_scorer

    own = prompt_scorer(loaded, records, leading_space=run_config.get("leading_space", True),
                        first_piece=bool(run_config.get("first_piece", False)), chat=options.chat)
    return measure_edit(loaded, measured_prompts(loaded, own, background, chat=options.chat), edit,
                        draws=options.draws, seed=options.seed)


def _edit_and_model(options: EditApplyOptions, loaded: Any) -> tuple[Any, Any, EditApplyOptions]:
    """The edit, the model it is for (by default the one it was made from, loaded the same way), checked."""
    import dataclasses

    from neuronscope.edit.weights import ValueVectorEdit

    edit = ValueVectorEdit.load(edit_prefix(options.edit))
    recorded = edit.model.get("load") or {"model": edit.model.get("source")}
    if not options.model and recorded.get("model"):
        options = dataclasses.replace(options, model=recorded["model"], gguf_file=recorded.get("gguf_file"),
                                      dtype=recorded.get("dtype") or options.dtype)
    if not options.model:
        raise InputError("the edit does not record its model: pass --model PATH")
    check_model_folder(options.out, options.overwrite)
    loaded = load(options, loaded)
    edit.check(loaded.model)
    return edit, loaded, options


def _write_record(out_dir: Path, options: Any, command: str) -> None:
    from neuronscope.results.io import write_json
    from neuronscope.results.provenance import run_metadata

    write_json(out_dir / CONFIG_RECORD, {"command": command, **options.recorded(), "meta": run_metadata()})


def apply(options: EditApplyOptions, *, loaded: Any = None) -> RunResult:
    """``edit apply``: the edited model, revertible, written into ``--out``."""
    import torch

    from neuronscope.models.loading import save_plain
    from neuronscope.results.io import write_safetensors

    edit, loaded, options = _edit_and_model(options, loaded)
    out_dir = Path(options.out)
    handle = edit.apply(loaded.model)
    try:
        save_plain(loaded.model, out_dir, loaded.processor)
    finally:
        originals = torch.stack([original.detach().cpu() for original in handle.originals])
        handle.revert()
    write_safetensors(out_dir / ORIGINALS, {"neurons": edit.neurons, "columns": originals})
    edit.save(out_dir / EDIT_RECORD)
    _write_record(out_dir, options, "edit apply")
    return RunResult("edit apply", str(out_dir), edit.as_dict(), [
        f"edited model written: {out_dir} ({len(edit.neurons)} value vectors changed; "
        f"'neuronscope edit revert --model {out_dir} --out DIR' restores the original)"])


def revert(options: EditRevertOptions, *, loaded: Any = None) -> RunResult:
    """``edit revert``: the original model from a folder written by ``edit apply``, bit for bit."""
    import torch

    from neuronscope.edit.weights import ValueVectorEdit, fingerprint
    from neuronscope.models.adapter import get_adapter
    from neuronscope.models.loading import save_plain
    from neuronscope.models.moe.weights import value_vector
    from neuronscope.results.io import read_safetensors

    folder = Path(options.model)
    if not (folder / ORIGINALS).is_file():
        raise InputError(f"{folder} has no {ORIGINALS}: only a model folder written by 'neuronscope edit apply' can "
                         "be reverted")
    saved, _ = read_safetensors(folder / ORIGINALS, what="original value vectors")
    edit = ValueVectorEdit.load(folder / EDIT_RECORD)
    check_model_folder(options.out, options.overwrite)
    loaded = load(options, loaded)
    adapter = get_adapter(loaded.model)
    neurons, columns = saved["neurons"], saved["columns"]  # rows [n, 2], or [n, 3] (layer, expert, index) of MoE
    for row, column in zip(neurons.tolist(), columns, strict=True):
        vectors = value_vector(adapter, row)
        if vectors.dtype != column.dtype:
            raise InputError(f"the saved originals are {column.dtype} but the model loaded as {vectors.dtype}: "
                             f"load with --dtype {str(column.dtype).replace('torch.', '')}")
    if "fingerprint" in edit.model and fingerprint(columns) != edit.model["fingerprint"]:
        raise EditMismatchError(f"{folder / ORIGINALS} does not match the edit's record; the folder was changed")
    with torch.no_grad():
        for row, column in zip(neurons.tolist(), columns, strict=True):
            vector = value_vector(adapter, row)  # a view: a column of the (fused expert) down projection
            vector.copy_(column.to(vector.device))
    save_plain(loaded.model, options.out, loaded.processor)
    _write_record(Path(options.out), options, "edit revert")
    return RunResult("edit revert", str(options.out), {}, [f"original model restored into {options.out}"])


def export(options: EditApplyOptions, *, loaded: Any = None) -> RunResult:
    """``edit export``: the edited model alone, as a plain Hugging Face folder with the edit's record."""
    from neuronscope.edit.weights import export_edited

    edit, loaded, options = _edit_and_model(options, loaded)
    export_edited(loaded.model, edit, options.out, loaded.processor)
    _write_record(Path(options.out), options, "edit export")
    return RunResult("edit export", str(options.out), edit.as_dict(), [f"edited model exported: {options.out}"])
