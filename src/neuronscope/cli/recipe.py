"""``neuronscope recipe multimodal|qrnca|lpi|cna``: the papers' pipelines end to end (``neuronscope.pipelines``).

Each recipe imports its pipeline only when run, so a missing or optional piece gives a clear message rather than
breaking the whole CLI. Pipelines write their own results folder (with their ``config.json``); the recipe
records the command's options beside it in ``cli_config.json``.

Entry points (a recipe is available once its module and function exist):

| recipe | module | function |
| --- | --- | --- |
| multimodal | ``neuronscope.pipelines.multimodal`` | ``find_multimodal_neurons(model, processor, images, ...)`` |
| qrnca | ``neuronscope.pipelines.qrnca`` | ``run_recipe(model, processor, data, *, run_dir, resume, overwrite, ...)`` |
| lpi | ``neuronscope.pipelines.lpi`` | ``run_recipe(model, processor, data, *, run_dir, resume, overwrite, ...)`` |
| cna | ``neuronscope.pipelines.cna`` | ``run_recipe(model, processor, data, *, run_dir, resume, overwrite, ...)`` |

``--option name=value`` passes extra keyword arguments (only those the function accepts).
"""

# No `from __future__ import annotations`: the generic commands' annotations use a closure variable.
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from neuronscope.cli import common
from neuronscope.cli.common import (
    BatchSizeOpt,
    ConfigOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    GgufOpt,
    ModelOpt,
    OutOpt,
    OverwriteOpt,
    ResumeOpt,
)
from neuronscope.errors import InputError, NeuronscopeError

app = typer.Typer(help="The papers' pipelines end to end.", no_args_is_help=True)

RECIPES: dict[str, tuple[str, str, str]] = {
    "multimodal": ("neuronscope.pipelines.multimodal", "find_multimodal_neurons",
                   "multimodal neurons of Pan et al. 2024 (captions -> nouns -> contribution -> heatmaps)"),
    "qrnca": ("neuronscope.pipelines.qrnca", "run_recipe", "QRNCA / NA-ICA of Chen, Dejl & Toni 2024 on MCQA"),
    "lpi": ("neuronscope.pipelines.lpi", "run_recipe", "log-probability increase of Yu & Ananiadou 2024"),
    "cna": ("neuronscope.pipelines.cna", "run_recipe", "comparative neuron analysis of Yu & Ananiadou 2024"),
}

OptionOpt = Annotated[list[str] | None, typer.Option(
    "--option", help="Extra pipeline argument name=value (repeatable).")]


def pipeline_function(recipe: str) -> Callable[..., Any]:
    """The recipe's pipeline function, or a NeuronscopeError saying that it is not available in this install."""
    module_name, function_name, summary = RECIPES[recipe]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise NeuronscopeError(f"the '{recipe}' recipe ({summary}) is not available in this install yet: "
                                   f"{module_name} is missing; update neuronscope") from None
        raise NeuronscopeError(f"the '{recipe}' recipe needs the package '{error.name}': pip install {error.name}") \
            from None
    function = getattr(module, function_name, None)
    if function is None:
        raise NeuronscopeError(f"the '{recipe}' recipe is not available in this install yet: {module_name} has no "
                               f"{function_name}(); update neuronscope")
    return function


def call_with(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``function`` with the keyword arguments it accepts; an unknown --option name is an error."""
    params = inspect.signature(function).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(k for k in kwargs if k not in params)
        if unknown:
            accepted = [name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
            raise InputError(f"{function.__name__} has no option {', '.join(unknown)}; it accepts "
                             f"{', '.join(accepted)}")
    return function(*args, **kwargs)


def _record(out: Path, options: dict[str, Any], recipe: str) -> None:
    from neuronscope.report import RunDir

    RunDir.open(out).write_json("cli_config.json", common.recorded_config(options, f"recipe {recipe}"))


def _images(options: dict[str, Any]) -> Any:
    from neuronscope.data import read_coco_captions, read_image_folder, read_sbu_captions

    path = Path(options["images"])
    if path.is_dir():
        return read_image_folder(path)
    if not path.is_file():
        raise InputError(f"{path}: not found; give an image folder or a captions JSON (COCO or SBU style)")
    root = options.get("image_root")
    import json

    try:
        head = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        head = None
    if isinstance(head, dict):
        return read_coco_captions(path, root)
    return read_sbu_captions(path, root)


def multimodal(
    ctx: typer.Context,
    images: Annotated[Path | None, typer.Option(
        help="An image folder, or a COCO / SBU-style captions JSON with image paths.")] = None,
    image_root: Annotated[Path | None, typer.Option(help="Folder the captions JSON's image paths are relative to.")]
    = None,
    concepts: Annotated[str | None, typer.Option(
        help="Comma-separated concept words (default: the nouns of each caption, through spaCy).")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Neurons kept per (image, noun).")] = 10_000,
    site: Annotated[str, typer.Option(help="neuron (default) or act (the authors' hook).")] = "neuron",
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Caption length limit.")] = 20,
    option: OptionOpt = None,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    dtype: DtypeOpt = "fp32",
    device_map: DeviceMapOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    batch_size: BatchSizeOpt = 8,
) -> None:
    """Multimodal neurons (Pan et al. 2024): caption images, score each noun's neurons, heatmaps, report.

    \b
    Example:
      neuronscope recipe multimodal --model ./llava --images photos/ --concepts dog,cat --out runs/mm
    """
    options = common.settings(ctx, config)
    common.require(options, "model", "images", "out")
    function = pipeline_function("multimodal")
    dataset = _images(options)
    extra = common.parse_key_values(options.get("option") or [])
    concept_list = [c.strip() for c in options["concepts"].split(",") if c.strip()] if options.get("concepts") else None
    loaded = common.load(options)
    result = call_with(function, loaded.model, loaded.processor, dataset, concepts=concept_list,
                       top_k=options["top_k"], site=options["site"], max_new_tokens=options["max_new_tokens"],
                       batch_size=options["batch_size"], run_dir=options["out"], resume=options["resume"],
                       overwrite=options["overwrite"], **extra)
    _record(Path(options["out"]), options, "multimodal")
    from neuronscope.report import build_report

    build_report(options["out"])
    typer.echo(f"multimodal neurons written into {options['out']}" + (
        f" ({len(getattr(result, 'captions', []))} captions)" if hasattr(result, "captions") else ""))


def _generic(recipe: str, data_help: str) -> Callable[..., None]:
    def command(
        ctx: typer.Context,
        data: Annotated[Path | None, typer.Option(help=data_help)] = None,
        option: OptionOpt = None,
        model: ModelOpt = None,
        gguf_file: GgufOpt = None,
        dtype: DtypeOpt = "fp32",
        device_map: DeviceMapOpt = None,
        device: DeviceOpt = "auto",
        config: ConfigOpt = None,
        out: OutOpt = None,
        resume: ResumeOpt = False,
        overwrite: OverwriteOpt = False,
        batch_size: BatchSizeOpt = 8,
    ) -> None:
        options = common.settings(ctx, config)
        common.require(options, "model", "data", "out")
        function = pipeline_function(recipe)
        extra = common.parse_key_values(options.get("option") or [])
        loaded = common.load(options)
        call_with(function, loaded.model, loaded.processor, Path(options["data"]), run_dir=options["out"],
                  resume=options["resume"], overwrite=options["overwrite"], batch_size=options["batch_size"],
                  **extra)
        _record(Path(options["out"]), options, recipe)
        typer.echo(f"{recipe} results written into {options['out']}")

    command.__name__ = recipe
    command.__doc__ = f"{RECIPES[recipe][2]}.\n\n\\b\nExample:\n  neuronscope recipe {recipe} --model M --data " \
                      f"FILE --out runs/{recipe}\n"
    return command


qrnca = _generic("qrnca", "MCQA data: the qrneuron JSON or a JSONL of {question, options, answer, domain}.")
lpi = _generic("lpi", "Prompts JSONL ({prompt, target?}).")
cna = _generic("cna", "Prompts JSONL ({prompt, target?, counterfactual?}).")

for _command in (multimodal, qrnca, lpi, cna):
    app.command(_command.__name__)(common.handle_errors(_command))
