"""``neuronscope edit make|apply|revert|export``: persistent edits of value vectors (``neuronscope.edit.weights``).

- ``make``: an edit folder (``edit.safetensors`` + ``edit.json``, plus ``config.json``) for some neurons: erase
  (``w_i ← 0``), noise (``+σ·N(0, I)``), token-shift (``+λ(u_t − u_s)``, with ``--signed``
  ``+λ·sign(⟨w_i, u_s⟩)(u_t − u_s)``) or knowledge-neuron
  (``−λ1·e(s) + λ2·e(t)``).
- ``apply``: write the edited model (``save_pretrained``, with its tokenizer) into a folder that also keeps the
  original columns (``neuronscope_originals.safetensors``), so that ``revert`` restores every bit.
- ``revert``: from such a folder, write the original model back out.
- ``export``: the edited model alone (``save_pretrained``) with the edit's record, to share or serve.

The edited model folders record the command's options in ``neuronscope_config.json`` (``config.json`` there is
the model's own).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from safetensors.torch import load_file, save_file

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
from neuronscope.cli.explain import model_options_from_run
from neuronscope.cli.prompts import parse_target
from neuronscope.errors import EditMismatchError, InputError

app = typer.Typer(help="Make, apply, revert and export value-vector edits.", no_args_is_help=True)

KINDS = ("erase", "noise", "token-shift", "knowledge-neuron")
ORIGINALS = "neuronscope_originals.safetensors"
EDIT_RECORD = "neuronscope_edit"
CONFIG_RECORD = "neuronscope_config.json"

OutDirOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")]
EditOpt = Annotated[Path | None, typer.Option("--edit", "-e", help="An edit folder made by 'edit make' (or the "
                                                                    "path prefix of an edit file pair).")]


def edit_prefix(path: Path) -> Path:
    """The ``.json`` / ``.safetensors`` prefix of an edit: ``DIR/edit`` for a folder, else the path itself."""
    path = Path(path)
    if path.is_dir():
        return path / "edit"
    return path.with_suffix("") if path.suffix in (".json", ".safetensors") else path


def output_folder(path: Path, overwrite: bool) -> Path:
    """Check an output folder for an edited model: refuse a non-empty one unless ``--overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file; choose a folder for the model")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise InputError(f"{path} is not empty; choose another folder or pass --overwrite")
        if not (path / CONFIG_RECORD).exists():
            raise InputError(f"{path} is not a folder written by 'neuronscope edit' (no {CONFIG_RECORD}); refusing to "
                             "overwrite it: choose a new or empty folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def token_of(processor: Any, spec: str | None, name: str, vocab_size: int) -> int:
    """A token id from ``id:N`` or a word (with a leading space); ``-1`` when not given."""
    from neuronscope.inputs.targets import word_token

    if spec is None:
        return -1
    kind, value = parse_target(spec)
    if kind == "prediction":
        raise InputError(f"--{name} cannot be 'prediction'; give a word or id:N")
    if kind == "id":
        if not 0 <= value < vocab_size:
            raise InputError(f"--{name} id:{value} is outside the vocabulary (0..{vocab_size - 1})")
        return int(value)
    return word_token(processor, value)


def make(
    ctx: typer.Context,
    kind: Annotated[str, typer.Option(help="erase, noise, token-shift or knowledge-neuron.")] = "erase",
    neurons: NeuronsOpt = None,
    run: RunOpt = None,
    source: Annotated[str | None, typer.Option(help="Source token (word or id:N) for token-shift / knowledge-neuron.")]
    = None,
    target: Annotated[str | None, typer.Option(help="Target token (word or id:N) for token-shift / knowledge-neuron.")]
    = None,
    strength: Annotated[float, typer.Option(help="lambda of token-shift.")] = 1.0,
    signed: Annotated[bool, typer.Option(help="token-shift signed per neuron by sign(<w_i, u_source>), for gated FFN "
                                              "neurons that fire negatively (see ValueVectorEdit.token_shift).")]
    = False,
    lambda1: Annotated[float, typer.Option(help="lambda1 (source) of knowledge-neuron.")] = 1.0,
    lambda2: Annotated[float, typer.Option(help="lambda2 (target) of knowledge-neuron.")] = 1.0,
    sigma: Annotated[float, typer.Option(help="Noise scale of noise.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of noise.")] = 0,
    reason: Annotated[str, typer.Option(help="Why: recorded in the edit file.")] = "",
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    dtype: DtypeOpt = "fp32",
    device_map: DeviceMapOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    out: OutDirOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Make an edit of some neurons' value vectors and save it (edit.safetensors + edit.json).

    \b
    Example:
      neuronscope edit make --model ./tiny-llama --neurons 1:3,1:7 --kind token-shift \\
          --source Paris --target Rome --strength 2 --out edits/paris-rome
    """
    from neuronscope.edit.weights import ValueVectorEdit
    from neuronscope.models import get_adapter
    from neuronscope.runs import RunDir

    options = common.settings(ctx, config)
    selected, run_config = common.neurons_from(options)
    options = model_options_from_run(options, run_config)
    common.require(options, "model", "out")
    if options["kind"] not in KINDS:
        raise InputError(f"--kind {options['kind']!r}: use one of {', '.join(KINDS)}")
    if options["kind"] in ("token-shift", "knowledge-neuron") and options.get("target") is None:
        raise InputError(f"--kind {options['kind']} needs --target (and usually --source)")
    loaded = common.load(options)
    adapter = get_adapter(loaded.model)
    common.check_neurons_fit(selected, adapter.n_layers, adapter.d_ff)
    selected = selected.clone()
    selected[:, 0] %= adapter.n_layers
    source_id = token_of(loaded.processor, options.get("source"), "source", adapter.vocab_size)
    target_id = token_of(loaded.processor, options.get("target"), "target", adapter.vocab_size)
    kind, model_ = options["kind"], loaded.model
    if kind == "erase":
        edit = ValueVectorEdit.erase(model_, selected, reason=options["reason"])
    elif kind == "noise":
        edit = ValueVectorEdit.noise(model_, selected, options["sigma"], options["seed"], reason=options["reason"])
    elif kind == "token-shift":
        if options.get("signed") and source_id < 0:
            raise InputError("--signed needs --source (the signs are those of <w_i, u_source>)")
        edit = ValueVectorEdit.token_shift(model_, selected, source_id, target_id, options["strength"],
                                           reason=options["reason"], signs="source" if options.get("signed") else None)
    else:
        edit = ValueVectorEdit.knowledge_neuron(model_, selected, source_id, target_id, options["lambda1"],
                                                options["lambda2"], reason=options["reason"])
    edit.model["source"] = options["model"]
    results = RunDir(options["out"], overwrite=options["overwrite"])  # after the edit is made: nothing half done
    results.write_config(common.recorded_config(options, "edit make"))
    results.write_meta({"runtime": common.runtime_record(options)})
    path = edit.save(results.file("edit"))
    typer.echo(f"{kind} edit of {len(selected)} neurons written: {path}")


def _load_edit(path: Path | None) -> Any:
    from neuronscope.edit.weights import ValueVectorEdit

    if path is None:
        raise InputError("no edit given: pass --edit EDIT_DIR (made by 'neuronscope edit make')")
    return ValueVectorEdit.load(edit_prefix(path))


def _model_for_edit(options: dict[str, Any], edit: Any) -> dict[str, Any]:
    if not options.get("model") and edit.model.get("source"):
        return {**options, "model": edit.model["source"]}
    return options


def _write_record(out_dir: Path, options: dict[str, Any], command: str) -> None:
    from neuronscope.results.io import atomic_write_text
    from neuronscope.runs.folder import run_metadata

    record = {**common.recorded_config(options, command), "meta": run_metadata()}
    atomic_write_text(out_dir / CONFIG_RECORD, json.dumps(record, indent=2, default=str) + "\n")


def apply(
    ctx: typer.Context,
    edit: EditOpt = None,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    dtype: DtypeOpt = "fp32",
    device_map: DeviceMapOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    out: OutDirOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Apply an edit to a model and save the edited model (revertible with 'edit revert').

    The model defaults to the one the edit was made from. Refuses, before writing anything, a model the
    edit was not made for.

    \b
    Example:
      neuronscope edit apply --edit edits/paris-rome --out models/tiny-llama-rome
    """
    options = common.settings(ctx, config)
    edit_obj = _load_edit(options.get("edit"))
    options = _model_for_edit(options, edit_obj)
    common.require(options, "model", "out")
    loaded = common.load(options)
    edit_obj.check(loaded.model)
    out_dir = output_folder(options["out"], options["overwrite"])
    handle = edit_obj.apply(loaded.model)
    originals = torch.stack([original.detach().cpu() for original in handle.originals])
    loaded.model.save_pretrained(out_dir)
    if loaded.processor is not None:
        loaded.processor.save_pretrained(out_dir)
    save_file({"neurons": edit_obj.neurons.contiguous(), "columns": originals.contiguous()}, str(out_dir / ORIGINALS))
    edit_obj.save(out_dir / EDIT_RECORD)
    _write_record(out_dir, options, "edit apply")
    handle.revert()
    typer.echo(f"edited model written: {out_dir} ({len(edit_obj.neurons)} value vectors changed; "
               f"'neuronscope edit revert --model {out_dir} --out DIR' restores the original)")


def revert(
    ctx: typer.Context,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    dtype: DtypeOpt = "fp32",
    device_map: DeviceMapOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    out: OutDirOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Restore the original model from a model folder written by 'edit apply' (bit for bit).

    \b
    Example:
      neuronscope edit revert --model models/tiny-llama-rome --out models/tiny-llama-restored
    """
    from neuronscope.edit.weights import ValueVectorEdit, fingerprint
    from neuronscope.models import get_adapter

    options = common.settings(ctx, config)
    common.require(options, "model", "out")
    folder = Path(options["model"])
    if not (folder / ORIGINALS).is_file():
        raise InputError(f"{folder} has no {ORIGINALS}: only a model folder written by 'neuronscope edit apply' can "
                         "be reverted")
    saved = load_file(str(folder / ORIGINALS))
    edit_obj = ValueVectorEdit.load(folder / EDIT_RECORD)
    loaded = common.load(options)
    adapter = get_adapter(loaded.model)
    neurons, columns = saved["neurons"], saved["columns"]
    for (layer, _), column in zip(neurons.tolist(), columns, strict=True):
        vectors = adapter.value_vectors(layer)
        if vectors.dtype != column.dtype:
            raise InputError(f"the saved originals are {column.dtype} but the model loaded as {vectors.dtype}: "
                             f"load with --dtype {str(column.dtype).replace('torch.', '')}")
    if "fingerprint" in edit_obj.model and fingerprint(columns) != edit_obj.model["fingerprint"]:
        raise EditMismatchError(f"{folder / ORIGINALS} does not match the edit's record; the folder was changed")
    out_dir = output_folder(options["out"], options["overwrite"])
    with torch.no_grad():
        for (layer, index), column in zip(neurons.tolist(), columns, strict=True):
            adapter.value_vectors(layer)[index].copy_(column.to(adapter.value_vectors(layer).device))
    loaded.model.save_pretrained(out_dir)
    if loaded.processor is not None:
        loaded.processor.save_pretrained(out_dir)
    _write_record(out_dir, options, "edit revert")
    typer.echo(f"original model restored into {out_dir}")


def export(
    ctx: typer.Context,
    edit: EditOpt = None,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    dtype: DtypeOpt = "fp32",
    device_map: DeviceMapOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    out: OutDirOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Export the edited model with save_pretrained (plain Hugging Face folder plus the edit's record).

    \b
    Example:
      neuronscope edit export --edit edits/paris-rome --out export/tiny-llama-rome
    """
    from neuronscope.edit.weights import export_edited

    options = common.settings(ctx, config)
    edit_obj = _load_edit(options.get("edit"))
    options = _model_for_edit(options, edit_obj)
    common.require(options, "model", "out")
    loaded = common.load(options)
    edit_obj.check(loaded.model)
    out_dir = output_folder(options["out"], options["overwrite"])
    export_edited(loaded.model, edit_obj, out_dir, loaded.processor)
    _write_record(out_dir, options, "edit export")
    typer.echo(f"edited model exported: {out_dir}")


for _command in (make, apply, revert, export):
    app.command(_command.__name__)(common.handle_errors(_command))

from neuronscope.cli import usecases as _usecases  # noqa: E402  (the use cases live in their own module)

_usecases.register(app)
