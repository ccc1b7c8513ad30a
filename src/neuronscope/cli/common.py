"""What every command shares: the common options, config files, error handling, model loading, neuron parsing.

Options can also come from a YAML/JSON file (``--config run.yaml``): keys are the option names (``top_k`` or
``top-k``); a flag given on the command line wins over the file. :func:`settings` merges the two and checks the
file's values with the same types as the flags, listing every problem on its own line.

Errors: :func:`handle_errors` turns a :class:`~neuronscope.errors.NeuronscopeError` into ``error: <message>`` on
stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import torch
import typer

from neuronscope.errors import InputError, NeuronscopeError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2

# ---------------------------------------------------------------------------------------------- shared options
ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="Model: a local folder (or a hub id where the hub is reachable).")]
GgufOpt = Annotated[str | None, typer.Option(
    "--gguf-file", help="A GGUF file inside the --model folder (needs the 'gguf' package).")]
DtypeOpt = Annotated[str, typer.Option(
    "--dtype", help="Weights dtype: fp32, bf16, fp16 or auto.")]
DeviceMapOpt = Annotated[str | None, typer.Option(
    "--device-map", help="Spread the model over devices, e.g. 'auto' (passed to transformers).")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="Where to run without --device-map: auto (GPU of this process if any, else CPU), cpu, "
                     "cuda:0, ...")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="YAML/JSON file of options (option names as keys); command-line flags win.")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Results folder of this run.")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Continue an interrupted run in --out (same options), skipping finished examples.")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace an earlier run in --out (only a neuronscope run folder is ever deleted).")]
BatchSizeOpt = Annotated[int, typer.Option(
    "--batch-size", min=1, help="Examples per forward; halves by itself when the GPU runs out of memory.")]
NeuronsOpt = Annotated[str | None, typer.Option(
    "--neurons", help="Neurons as layer:index pairs, e.g. '3:17,5:2'.")]
RunOpt = Annotated[Path | None, typer.Option(
    "--run", help="A locate run folder whose selected neurons (neurons.json) to use.")]

#: Options that say how a run was executed, not what it computed: recorded in meta.json, not config.json, so
#: that resuming with another batch size, device or folder path is allowed.
RUNTIME_OPTIONS = ("config", "out", "resume", "overwrite", "batch_size", "device")


# ---------------------------------------------------------------------------------------------- errors
def fail(message: str) -> None:
    """Print ``error: <message>`` (each extra line indented) to stderr and exit with code 2."""
    lines = str(message).strip().splitlines() or ["unknown error"]
    typer.echo("error: " + lines[0], err=True)
    for line in lines[1:]:
        typer.echo("  " + line.strip(), err=True)
    raise typer.Exit(EXIT_USER_ERROR)


def handle_errors(function: F) -> F:
    """Decorator for commands: a :class:`NeuronscopeError` becomes one clear message and exit code 2.

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except NeuronscopeError as error:
            fail(str(error))
        except FileNotFoundError as error:
            fail(f"{error.filename or error}: file not found; check the path")
        except IsADirectoryError as error:
            fail(f"{error.filename or error}: is a folder, expected a file")
        except PermissionError as error:
            fail(f"{error.filename or error}: permission denied; choose a path you can write to")

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- config files
def settings(ctx: typer.Context, config: Path | None = None) -> dict[str, Any]:
    """The effective options of a command: its parameters, with values from ``config`` where no flag was given.

    Raises:
        InputError: unknown option names in the file, or values of the wrong type (one line per problem).

    Example:
        >>> options = settings(ctx, config)  # doctest: +SKIP
        >>> options["top_k"]  # doctest: +SKIP
        20
    """
    from neuronscope.inputs import load_config

    values = dict(ctx.params)
    if config is None:
        return values
    data = load_config(config)
    params = {param.name: param for param in ctx.command.params if param.name}
    problems = []
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key == "config" or key not in params:
            known = ", ".join(sorted(name for name in params if name != "config"))
            problems.append(f"{config}: option '{raw_key}': not an option of '{ctx.info_name}'; known: {known}")
            continue
        source = ctx.get_parameter_source(key)
        if getattr(source, "name", None) not in (None, "DEFAULT", "DEFAULT_MAP"):
            continue  # the command line wins
        param = params[key]
        if param.multiple and isinstance(value, dict):
            value = [f"{name}={json.dumps(item)}" for name, item in value.items()]
        elif param.multiple and isinstance(value, (str, int, float)):
            value = [value]
        try:
            values[key] = param.process_value(ctx, value) if value is not None else None
        except Exception as error:  # noqa: BLE001 - click's / typer's BadParameter, whichever click is in use
            if not hasattr(error, "format_message"):
                raise
            problems.append(f"{config}: option '{raw_key}': {error.format_message()}; fix its value")
            continue
        if isinstance(values[key], tuple):
            values[key] = list(values[key])
    if problems:
        raise InputError("\n".join(problems))
    return values


def recorded_config(options: Mapping[str, Any], command: str) -> dict[str, Any]:
    """The options that determine a run's results, JSON-ready, with the command's name (for config.json)."""
    out: dict[str, Any] = {"command": command}
    for key, value in options.items():
        if key in RUNTIME_OPTIONS:
            continue
        out[key] = jsonable(value)
    return out


def runtime_record(options: Mapping[str, Any]) -> dict[str, Any]:
    """The runtime options (batch size, device, ...) for meta.json."""
    return {key: jsonable(options.get(key)) for key in RUNTIME_OPTIONS if key in options}


def jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    return value


def require(options: Mapping[str, Any], *names: str) -> None:
    """Raise one InputError naming every required option that is missing (neither flag nor config)."""
    missing = [name for name in names if options.get(name) in (None, "", [])]
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise InputError(f"missing option(s) {flags}: give them as flags or in the --config file")


# ---------------------------------------------------------------------------------------------- models
def load(options: Mapping[str, Any], *, with_processor: bool = True, model: str | None = None) -> Any:
    """Load the model named by the options (``model``, ``gguf_file``, ``dtype``, ``device_map``) and place it."""
    from neuronscope.models import load_model
    from neuronscope.models.loading import parse_dtype

    source = model or options.get("model")
    if not source:
        raise InputError("no model given: pass --model PATH (a local folder or hub id)")
    text = str(source)
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1
    if looks_local and not Path(text).expanduser().exists():  # a hub id is "name" or "org/name"
        raise InputError(f"model folder '{source}' not found; check the path")
    dtype = options.get("dtype") or "fp32"
    quiet_transformers()
    parse_dtype(dtype)  # an unknown dtype fails before the slow load
    loaded = load_model(source, gguf_file=options.get("gguf_file"), dtype=dtype,
                        device_map=options.get("device_map"), with_processor=with_processor)
    if not options.get("device_map"):
        device = resolve_device(options.get("device") or "auto")
        if device.type != "cpu":
            loaded.model.to(device)
    return loaded


def quiet_transformers() -> None:
    """No per-shard progress bars from transformers: the CLI's stderr is for messages a user acts on."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def resolve_device(device: str) -> torch.device:
    """``auto``: this process's GPU (``LOCAL_RANK``) when CUDA is available, else CPU; anything else as given."""
    import os

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise InputError(f"unknown device '{device}' ({error}); use auto, cpu or cuda:N") from None


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's inputs go: the device of its input embeddings."""
    return model.get_input_embeddings().weight.device


# ---------------------------------------------------------------------------------------------- neurons
_PAIR = re.compile(r"^\s*(-?\d+)\s*:\s*(\d+)\s*$")


def parse_neurons(text: str) -> torch.Tensor:
    """``"3:17,5:2"`` → ``LongTensor [[3, 17], [5, 2]]``.

    Example:
        >>> parse_neurons("3:17, 5:2").tolist()
        [[3, 17], [5, 2]]
    """
    rows, bad = [], []
    for part in [p for p in str(text).split(",") if p.strip()]:
        match = _PAIR.match(part)
        if match is None:
            bad.append(part.strip())
        else:
            rows.append([int(match[1]), int(match[2])])
    if bad:
        raise InputError(f"--neurons: cannot read {', '.join(repr(b) for b in bad)}; write layer:index pairs "
                         "separated by commas, e.g. '3:17,5:2'")
    if not rows:
        raise InputError("--neurons is empty; write layer:index pairs, e.g. '3:17,5:2'")
    return torch.tensor(rows, dtype=torch.long)


def read_run_neurons(run_dir: Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """The selected neurons ``[n, 2]`` of a locate run and its config (``neurons.json``, ``config.json``)."""
    run_dir = Path(run_dir)
    path = run_dir / "neurons.json"
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder not found; pass a folder written by 'neuronscope locate'")
    if not path.is_file():
        raise InputError(f"{path}: not found; is {run_dir} a finished 'neuronscope locate' run?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        neurons = torch.tensor([[int(row["layer"]), int(row["index"])] for row in data["neurons"]],
                               dtype=torch.long).reshape(-1, 2)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path}: damaged ({error}); rerun 'neuronscope locate'") from None
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    return neurons, config


def neurons_from(options: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Neurons from ``--neurons`` or ``--run`` (exactly one), and the run's config (empty for ``--neurons``)."""
    if options.get("neurons") and options.get("run"):
        raise InputError("give either --neurons or --run, not both")
    if options.get("neurons"):
        return parse_neurons(options["neurons"]), {}
    if options.get("run"):
        return read_run_neurons(Path(options["run"]))
    raise InputError("no neurons given: pass --neurons 'layer:index,...' or --run RUN_DIR (a locate run)")


def check_neurons_fit(neurons: torch.Tensor, n_layers: int, d_ff: int) -> None:
    """One InputError listing every neuron outside the model."""
    bad = [f"{layer}:{index}" for layer, index in neurons.tolist()
           if not (-n_layers <= layer < n_layers) or not 0 <= index < d_ff]
    if bad:
        raise InputError(f"neurons {', '.join(bad[:20])} are outside the model ({n_layers} layers of {d_ff} "
                         "neurons); check --neurons or that --model is the run's model")


def parse_key_values(pairs: Iterable[str], flag: str = "--option") -> dict[str, Any]:
    """``["steps=20", "grid=dai"]`` → ``{"steps": 20, "grid": "dai"}`` (values read as JSON where they parse)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"{flag} {pair!r}: write name=value, e.g. {flag} steps=20")
        key, _, value = pair.partition("=")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out
