"""Config files for the CLI: YAML (`.yaml`, `.yml`) or JSON (`.json`), a mapping at the top level.

Example:
    >>> config = load_config("locate.yaml")  # doctest: +SKIP
    >>> config["method"]  # doctest: +SKIP
    'contribution'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from neuronscope.inputs.problems import fail, read_text, type_name

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (keys are option names).

    Raises:
        InputError: unknown extension, missing or empty file, invalid syntax (with its line), or a top level
            that is not a mapping.

    Example:
        >>> load_config("run.json")  # doctest: +SKIP
        {'model': 'gpt2', 'top_k': 50}
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        fail(path, f"unknown config extension '{path.suffix}'; use one of {', '.join(CONFIG_SUFFIXES)}")
    text = read_text(path)
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            fail(path, f"invalid JSON ({error.msg}) at column {error.colno}; fix the syntax",
                 record=f"line {error.lineno}")
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            where = f"line {mark.line + 1}" if mark is not None else None
            column = f" at column {mark.column + 1}" if mark is not None else ""
            fail(path, f"invalid YAML ({error.problem or error.context}){column}; fix the syntax", record=where)
        except yaml.YAMLError as error:
            fail(path, f"invalid YAML ({error}); fix the syntax")
    if not isinstance(data, dict):
        fail(path, f"expected a mapping of option names to values at the top level, got {type_name(data)}; "
             "write `option: value` lines")
    non_string = [key for key in data if not isinstance(key, str)]
    if non_string:
        fail(path, f"option names must be strings, got {non_string!r}; quote them")
    return data
