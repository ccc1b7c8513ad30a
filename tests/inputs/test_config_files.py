"""load_config: YAML and JSON option files, and their errors."""

from __future__ import annotations

import pytest

from neuronscope.errors import InputError
from neuronscope.inputs import load_config


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.yaml", "model: gpt2\ntop_k: 50\nlayers: [0, 1]\n"),
        ("c.yml", "model: gpt2\ntop_k: 50\nlayers:\n  - 0\n  - 1\n"),
        ("c.json", '{"model": "gpt2", "top_k": 50, "layers": [0, 1]}'),
    ],
)
def test_valid(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert load_config(path) == {"model": "gpt2", "top_k": 50, "layers": [0, 1]}


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("c.toml", "a = 1", "{p}: unknown config extension '.toml'; use one of .yaml, .yml, .json"),
        ("c.yaml", "", "{p}: the file is empty; add at least one record"),
        ("c.yaml", "a: 1\nb: [1, 2\n", "{p}: line 3: invalid YAML (expected ',' or ']', but got '<stream end>') "
                                      "at column 1; fix the syntax"),
        ("c.yaml", "- 1\n- 2\n", "{p}: expected a mapping of option names to values at the top level, got "
                                 "array; write `option: value` lines"),
        ("c.json", '{"a": 1,}', "{p}: line 1: invalid JSON (Expecting property name enclosed in double quotes) "
                                "at column 9; fix the syntax"),
        ("c.yaml", "1: a\n", "{p}: option names must be strings, got [1]; quote them"),
    ],
)
def test_errors(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as excinfo:
        load_config(path)
    assert str(excinfo.value).splitlines() == [expected.format(p=path)]  # one problem: one line
