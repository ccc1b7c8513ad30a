"""Prompts JSONL reader: records, optional targets, and exact error lines."""

from __future__ import annotations

import json

import pytest

from neuronscope.errors import InputError
from neuronscope.inputs import PromptRecord, read_prompts_jsonl


def test_valid(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": "The capital of France is", "target": " Paris", "id": 7, "lang": "en"}) + "\n"
        + json.dumps({"prompt": "Hello", "target": None}) + "\n",
        encoding="utf-8",
    )
    records = read_prompts_jsonl(path)
    assert records == [
        PromptRecord("7", "The capital of France is", " Paris", {"lang": "en"}),
        PromptRecord("2", "Hello", None, {}),
    ]


def test_problems(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        "\n".join([
            json.dumps({"prompt": "a", "target": 3}),
            json.dumps({"target": "x"}),
            json.dumps({"prompt": "", "id": [1]}),
            '{"prompt": "b"',
            json.dumps({"prompt": "c"}),
        ]),
        encoding="utf-8",
    )
    with pytest.raises(InputError) as excinfo:
        read_prompts_jsonl(path, require_target=True)
    p = str(path)
    assert str(excinfo.value).splitlines() == [
        f"7 problems in {p}; fix them and run again:",
        f"{p}: line 1: field 'target': expected a string, got number; write it in quotes",
        f"{p}: line 2: field 'prompt': missing; add a string",
        f"{p}: line 3: field 'prompt': is empty; write a non-empty string",
        f"{p}: line 3: field 'target': missing; add a string",
        f"{p}: line 3: field 'id': expected a string or an integer, got array",
        f"{p}: line 4: invalid JSON (Expecting ',' delimiter) at column 15; write one JSON object per line",
        f"{p}: line 5: field 'target': missing; add a string",
    ]


def test_target_optional_by_default(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "c"}), encoding="utf-8")
    assert read_prompts_jsonl(path)[0].target is None


def test_empty_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(InputError) as excinfo:
        read_prompts_jsonl(path)
    assert str(excinfo.value).splitlines() == [f"{path}: the file is empty; add at least one record"]


def test_not_utf8(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "\xff"}')
    with pytest.raises(InputError, match="not UTF-8 text"):
        read_prompts_jsonl(path)
