"""Options of the workflows, declared once: typed dataclasses whose fields carry their help and their limits.

Every workflow's options are a keyword-only dataclass built from the shared groups below
(:class:`ModelOptions`, :class:`RunOptions`, :class:`BatchOptions`) and its own fields, each made by
:func:`opt` (default, help, and the checks: ``choices``, ``minimum``, ``maximum``). The CLI builds its flags
from these fields (``top_k`` -> ``--top-k``), a ``--config`` file fills the same fields, and constructing the
dataclass checks every value — so an option is validated once, before any model is loaded, whether it came from
a flag, a config file or Python, and every problem is reported at once as an :class:`~neuronscope.errors.OptionError`.

This module imports neither torch nor transformers (``neuronscope --help`` builds from it).

Example:
    >>> @dataclass(kw_only=True)
    ... class Demo(RunOptions):
    ...     top_k: int = opt(20, "Neurons kept.", minimum=1)
    >>> Demo(top_k=0)
    Traceback (most recent call last):
    neuronscope.errors.OptionError: --top-k 0: must be at least 1
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuronscope.errors import OptionError

DTYPES = ("fp32", "bf16", "fp16", "float32", "bfloat16", "float16", "float64", "auto")


def opt(
    default: Any = None,
    help: str = "",  # noqa: A002 - the field's help text, as click names it
    *,
    choices: Sequence[str] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    short: str | None = None,
    flag: str | None = None,
    argument: bool = False,
    runtime: bool = False,
    hidden: bool = False,
) -> Any:
    """A dataclass field of a workflow option.

    Args:
        default: the default (a list default is copied per instance).
        help: one line for ``--help``.
        choices: allowed values (strings).
        minimum, maximum: numeric limits (inclusive).
        short: a short flag, e.g. ``"-m"``.
        flag: the long flag when it is not the field's name (``"--json"`` for ``as_json``).
        argument: a positional command-line argument rather than a flag.
        runtime: how the run is executed, not what it computes (batch size, device, output folder): recorded in
            ``meta.json`` instead of ``config.json``, so a resumed run may change it.
        hidden: not shown in ``--help``.
    """
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "minimum": minimum,
                "maximum": maximum, "short": short, "flag": flag, "argument": argument, "runtime": runtime, "hidden": hidden}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_name(name: str) -> str:
    """``top_k`` -> ``--top-k``."""
    return "--" + name.replace("_", "-")


def field_flag(spec: dataclasses.Field) -> str:
    """The long flag of an option field (its ``flag`` override, else from its name)."""
    return spec.metadata.get("flag") or flag_name(spec.name)


@dataclass(kw_only=True)
class Options:
    """Base of every workflow's options: checks the fields' limits on construction."""

    def __post_init__(self) -> None:
        problems = [problem for spec in dataclasses.fields(self) for problem in _check_field(self, spec)]
        problems += self.problems()
        if problems:
            raise OptionError("\n".join(problems))

    def problems(self) -> list[str]:
        """Checks across options (a workflow overrides it); one line per problem, saying what to do."""
        return []

    def recorded(self) -> dict[str, Any]:
        """The options that determine the results (for ``config.json``): every field not marked ``runtime``."""
        return {spec.name: _jsonable(getattr(self, spec.name)) for spec in dataclasses.fields(self)
                if not spec.metadata.get("runtime")}

    def runtime(self) -> dict[str, Any]:
        """The runtime options (batch size, device, output folder, resume ...), for ``meta.json``."""
        return {spec.name: _jsonable(getattr(self, spec.name)) for spec in dataclasses.fields(self)
                if spec.metadata.get("runtime")}


def _check_field(options: Options, spec: dataclasses.Field) -> list[str]:
    value = getattr(options, spec.name)
    meta = spec.metadata
    flag = field_flag(spec)
    if value is None:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    problems = []
    for item in values:
        if meta.get("choices") and item not in meta["choices"]:
            problems.append(f"{flag} {item!r}: use one of {', '.join(meta['choices'])}")
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if meta.get("minimum") is not None and item < meta["minimum"]:
                problems.append(f"{flag} {item}: must be at least {_number(meta['minimum'])}")
            if meta.get("maximum") is not None and item > meta["maximum"]:
                problems.append(f"{flag} {item}: must be at most {_number(meta['maximum'])}")
    return problems


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return value


# ---------------------------------------------------------------------------------------------------- shared groups
@dataclass(kw_only=True)
class ModelOptions(Options):
    """How to load the model (shared by every workflow that runs one)."""

    model: str | None = opt(None, "Model: a local folder, a GGUF file's folder, or a hub id where the hub is "
                                     "reachable.", short="-m")
    gguf_file: str | None = opt(None, "A GGUF file inside the --model folder (needs the 'gguf' package).")
    dtype: str = opt("fp32", "Weights dtype: fp32, bf16, fp16 or auto.", choices=DTYPES)
    device_map: str | None = opt(None, "Spread the model over devices, e.g. 'auto' (passed to transformers).")
    text_only: bool = opt(False, "Accept a vision-language model whose image tokens have no layout reader (see "
                                 "'neuronscope models': text-only) and score its text positions only.")
    device: str = opt("auto", "Where to run without --device-map: auto (this process's GPU if any, else CPU), "
                                 "cpu, cuda:0, ...", runtime=True)
    deterministic: bool = opt(False, "Bit-identical repeated runs on a GPU: attention without cuDNN's kernel, "
                                     "whose decode steps differ from run to run (captioning 4-16 % slower on an "
                                     "H200; see neuronscope.trace.reproducible).", runtime=True)


@dataclass(kw_only=True)
class RunOptions(Options):
    """Where the results go, and what to do with an earlier run there."""

    out: Path | None = opt(None, "Results folder of this run.", short="-o", runtime=True)
    resume: bool = opt(False, "Continue an interrupted run in --out (same options), skipping finished examples.",
                          runtime=True)
    overwrite: bool = opt(False, "Replace an earlier run in --out (only a neuronscope run folder is ever deleted).",
                             runtime=True)

    def problems(self) -> list[str]:
        if self.resume and self.overwrite:
            return ["--resume and --overwrite: choose one (continue the run, or replace it)"]
        return []


@dataclass(kw_only=True)
class BatchOptions(Options):
    """How many examples go through the model at once."""

    batch_size: int = opt(8, "Examples per forward; halves by itself when the GPU runs out of memory.",
                             minimum=1, runtime=True)


def missing(options: Options, *names: str) -> list[str]:
    """One problem line naming every required option that is not set (neither flag nor config file)."""
    absent = [flag_name(name) for name in names if getattr(options, name) in (None, "", [])]
    return [f"missing option(s) {', '.join(absent)}: give them as flags or in the --config file"] if absent else []


# ---------------------------------------------------------------------------------------------------- parsers
_PAIR = re.compile(r"^\s*(-?\d+)\s*:\s*(\d+)\s*$")
_TRIPLE = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\d+)\s*:\s*(\d+)\s*$")


def parse_neurons(text: str, flag: str = "--neurons") -> list[tuple[int, ...]]:
    """``"3:17,5:2"`` -> ``[(3, 17), (5, 2)]`` (negative layers count from the end); mixture-of-experts neurons as
    ``layer:expert:index`` -> ``(layer, expert, index)`` (expert -1: a dense layer of that model).

    Example:
        >>> parse_neurons("3:17, 5:2")
        [(3, 17), (5, 2)]
        >>> parse_neurons("1:5:26,0:-1:3")
        [(1, 5, 26), (0, -1, 3)]
    """
    rows: list[tuple[int, ...]] = []
    bad = []
    for part in [p for p in str(text).split(",") if p.strip()]:
        match = _PAIR.match(part) or _TRIPLE.match(part)
        if match is None:
            bad.append(part.strip())
        else:
            rows.append(tuple(int(group) for group in match.groups() if group is not None))
    if bad:
        raise OptionError(f"{flag}: cannot read {', '.join(repr(b) for b in bad)}; write layer:index pairs "
                          "separated by commas, e.g. '3:17,5:2' (mixture-of-experts models: layer:expert:index, "
                          "e.g. '1:5:26')")
    if not rows:
        raise OptionError(f"{flag} is empty; write layer:index pairs, e.g. '3:17,5:2'")
    if len({len(row) for row in rows}) > 1:
        raise OptionError(f"{flag}: write every neuron as layer:index (dense models) or every one as "
                          "layer:expert:index (mixture-of-experts models), not both")
    return rows


_HEAD = re.compile(r"^\s*(-?\d+)\s*\.\s*(\d+)\s*$")


def parse_heads(text: str, flag: str = "--heads") -> list[tuple[int, int]]:
    """``"22.7,24.7"`` -> ``[(22, 7), (24, 7)]``: attention heads as ``layer.head`` (negative layers count from the
    end), the notation of ``recipe icl``'s tables.

    Example:
        >>> parse_heads("1.0, -1.3")
        [(1, 0), (-1, 3)]
    """
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    bad = [repr(p) for p in parts if _HEAD.match(p) is None]
    if bad or not parts:
        raise OptionError(f"{flag}: cannot read {', '.join(bad) or 'an empty list'}; write layer.head pairs "
                          "separated by commas, e.g. '22.7,24.7'")
    heads = [(int(m[1]), int(m[2])) for m in map(_HEAD.match, parts)]
    if len(set(heads)) < len(heads):
        raise OptionError(f"{flag}: a head is given twice; list each layer.head once")
    return heads


_EXPERTS = re.compile(r"^\s*(-?\d+)\s*:\s*(\d+(?:\s*,\s*\d+)*)\s*$")


def parse_expert_lists(specs: Iterable[str], flag: str) -> list[tuple[int, list[int]]]:
    """``["1:5", "0:2,3"]`` -> ``[(1, [5]), (0, [2, 3])]``: a layer and expert ids per spec.

    Example:
        >>> parse_expert_lists(["1:5", "0:2, 3"], "--drop-expert")
        [(1, [5]), (0, [2, 3])]
    """
    out, bad = [], []
    for spec in specs:
        match = _EXPERTS.match(str(spec))
        if match is None:
            bad.append(repr(spec))
        else:
            out.append((int(match[1]), [int(part) for part in match[2].split(",")]))
    if bad:
        raise OptionError(f"{flag}: cannot read {', '.join(bad)}; write layer:expert[,expert...], e.g. '1:5' or "
                          "'0:2,3'")
    return out


def parse_layers(text: str | None, flag: str = "--layers") -> list[int] | None:
    """``"0,2-4"`` -> ``[0, 2, 3, 4]``; ``None`` or ``"all"`` -> None (every layer).

    Example:
        >>> parse_layers("0,2-4")
        [0, 2, 3, 4]
    """
    if text is None or str(text).strip().lower() in ("", "all"):
        return None
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                low, high = part.split("-", 1) if not part.startswith("-") else (part, "")
                out.extend(range(int(low), int(high) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise OptionError(f"{flag} {text!r}: write layer numbers and ranges, e.g. '0,2,5' or '4-7'") from None
    return out


def parse_key_values(pairs: Iterable[str] | None, flag: str = "--option") -> dict[str, Any]:
    """``["steps=20", "grid=dai"]`` -> ``{"steps": 20, "grid": "dai"}`` (values read as JSON where they parse).

    Example:
        >>> parse_key_values(["steps=20", "grid=dai", "layers=[1, 2]"])
        {'steps': 20, 'grid': 'dai', 'layers': [1, 2]}
    """
    out: dict[str, Any] = {}
    for pair in pairs or ():
        if "=" not in str(pair):
            raise OptionError(f"{flag} {pair!r}: write name=value, e.g. {flag} steps=20")
        name, raw = str(pair).split("=", 1)
        name = name.strip().replace("-", "_")
        if not name.isidentifier():
            raise OptionError(f"{flag} {pair!r}: {name!r} is not an option name")
        try:
            out[name] = json.loads(raw)
        except json.JSONDecodeError:
            out[name] = raw
    return out


def split_words(text: str | None) -> list[str]:
    """``"dog, cat,,bird"`` -> ``["dog", "cat", "bird"]``."""
    return [word.strip() for word in str(text or "").split(",") if word.strip()]


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every field of an options dataclass."""
    return typing.get_type_hints(cls)


def coerce(cls: type, values: dict[str, Any], source: str = "") -> dict[str, Any]:
    """Values (strings from flags, or YAML / JSON values from a config file) converted to ``cls``'s field types.

    Keys may be written ``top_k`` or ``top-k``. ``list[int]`` fields take a comma-separated string
    (``"10,100,300"``) or a list; ``list[str]`` fields a list or one string; booleans ``true``/``false``.

    Raises:
        OptionError: unknown option names and values that cannot be converted, one line each (prefixed with
            ``source``, e.g. the config file's path).
    """
    types = field_types(cls)
    specs = {spec.name: spec for spec in dataclasses.fields(cls)}
    prefix = f"{source}: " if source else ""
    out: dict[str, Any] = {}
    problems = []
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key not in specs:
            known = ", ".join(sorted(field_flag(spec)[2:] for spec in specs.values() if not spec.metadata.get("hidden")))
            problems.append(f"{prefix}option '{raw_key}': not an option of this command; known: {known}")
            continue
        try:
            out[key] = _convert(types[key], value)
        except (TypeError, ValueError):
            name = f"option '{raw_key}'" if source else field_flag(specs[key])
            problems.append(f"{prefix}{name} {value!r}: expected {_describe(types[key])}; fix its value")
    if problems:
        raise OptionError("\n".join(problems))
    return out


def _convert(annotation: Any, value: Any) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if value is None:
        if type(None) in args:
            return None
        raise ValueError("a value is needed")
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        return _convert(inner[0], value)
    if origin is list:
        item = args[0] if args else str
        if isinstance(value, str):
            value = [value] if item is str else [part for part in value.split(",") if part.strip()]
        return [_convert(item, part) for part in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        raise ValueError(value)
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if annotation is Path:
        return Path(str(value)).expanduser()
    if isinstance(value, (list, dict)):
        raise TypeError(value)
    return str(value)


def _describe(annotation: Any) -> str:
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is list:
        return "a list" + (" of integers (e.g. 10,100)" if args and args[0] is int else "")
    annotation = args[0] if args else annotation
    return {int: "an integer", float: "a number", bool: "true or false", Path: "a path"}.get(annotation, "text")


def from_config_file(cls: type, path: str | Path) -> dict[str, Any]:
    """The values of a YAML / JSON option file (option names as keys), converted to ``cls``'s field types."""
    from neuronscope.inputs.config import load_config

    return coerce(cls, load_config(Path(path)), source=str(path))
