"""MCQA readers: valid files parse to the right records; every malformed field gives its exact error line."""

from __future__ import annotations

import itertools
import json

import pytest

from neuronscope.errors import InputError
from neuronscope.inputs import MCQAItem, read_mcqa_jsonl, read_qrneuron_mcqa, render_prompt_variants


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_lines(excinfo) -> list[str]:
    return str(excinfo.value).splitlines()


def test_qrneuron_valid(tmp_path):
    data = {
        "q1": {"sentences": ["P1 (A) x (B) y", "P2", "P3"], "obj_label": ["A", "B", "A"], "relation_name": "bio"},
        "q2": {"sentences": ["Q"], "obj_label": ["D"], "relation_name": "maths"},
    }
    path = write(tmp_path, "m.json", json.dumps(data))
    queries = read_qrneuron_mcqa(path)
    assert [q.id for q in queries] == ["q1", "q2"]
    assert queries[0].prompts == ("P1 (A) x (B) y", "P2", "P3")
    assert queries[0].answer_letters == ("A", "B", "A")
    assert queries[1].relation == "maths"


def test_qrneuron_collects_all_problems(tmp_path):
    data = {
        "q1": {"sentences": ["a", "b"], "obj_label": ["A"], "relation_name": "bio"},
        "q2": {"sentences": "a", "obj_label": ["x"], "relation_name": 3},
        "q3": {"obj_label": ["A"]},
        "q4": [1, 2],
    }
    path = write(tmp_path, "m.json", json.dumps(data))
    with pytest.raises(InputError) as excinfo:
        read_qrneuron_mcqa(path)
    lines = error_lines(excinfo)
    p = str(path)
    assert lines[0] == f"7 problems in {p}; fix them and run again:"
    assert lines[1:] == [
        f"{p}: record 'q1': field 'obj_label': has 1 labels for 2 sentences; give one answer letter per sentence",
        f"{p}: record 'q2': field 'sentences': expected a list of strings, got string; write it as [\"...\", ...]",
        f"{p}: record 'q2': field 'relation_name': expected a string, got number; write it in quotes",
        f"{p}: record 'q2': field 'obj_label[0]': 'x' is not an option letter; write one capital letter such as \"A\"",
        f"{p}: record 'q3': field 'sentences': missing; add a list of strings",
        f"{p}: record 'q3': field 'relation_name': missing; add a string",
        f"{p}: record 'q4': expected an object with sentences, obj_label, relation_name, got array",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "{p}: the file is empty; add at least one record"),
        ("  \n", "{p}: the file is empty; add at least one record"),
        ("{}", "{p}: the object has no queries; add at least one"),
        ("[1]", "{p}: expected a JSON object {{id: {{...}}}} at the top, got array; see the qrneuron format in "
                "neuronscope.inputs.mcqa"),
        ('{\n"q": }', "{p}: line 2: invalid JSON (Expecting value) at column 6; fix the syntax"),
    ],
)
def test_qrneuron_file_level_errors(tmp_path, text, expected):
    path = write(tmp_path, "m.json", text)
    with pytest.raises(InputError) as excinfo:
        read_qrneuron_mcqa(path)
    assert error_lines(excinfo) == [expected.format(p=path)]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(InputError) as excinfo:
        read_qrneuron_mcqa(path)
    assert error_lines(excinfo) == [f"{path}: file not found; check the path"]  # one problem: one line


def test_mcqa_jsonl_valid(tmp_path):
    lines = [
        {"question": "2+2?", "options": ["3", "4", "5"], "answer": "B", "domain": "maths"},
        {"question": "H2O?", "options": {"A": "water", "B": "salt"}, "answer": 0, "id": "chem-1"},
    ]
    path = write(tmp_path, "q.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    items = read_mcqa_jsonl(path)
    assert items[0] == MCQAItem("1", "2+2?", ("3", "4", "5"), 1, "maths")
    assert items[1] == MCQAItem("chem-1", "H2O?", ("water", "salt"), 0, None)
    assert items[0].answer_letter == "B"


def test_mcqa_jsonl_problems(tmp_path):
    text = "\n".join([
        json.dumps({"question": "q", "options": ["a", "b"], "answer": "C"}),
        "{not json",
        json.dumps({"options": {"A": "a", "C": "c"}, "answer": 1}),
        json.dumps({"question": 5, "options": ["a", ""], "answer": True, "domain": 1}),
        "[1, 2]",
        json.dumps({"question": "q", "options": ["a", "b"], "answer": 1, "id": "1"}),
    ])
    path = write(tmp_path, "q.jsonl", text)
    with pytest.raises(InputError) as excinfo:
        read_mcqa_jsonl(path)
    p = str(path)
    assert error_lines(excinfo)[1:] == [
        f"{p}: line 1: field 'answer': 'C' points outside the 2 options; use A..B or 0..1",
        f"{p}: line 2: invalid JSON (Expecting property name enclosed in double quotes) at column 2; "
        "write one JSON object per line",
        f"{p}: line 3: field 'question': missing; add a string",
        f"{p}: line 3: field 'options': keys ['A', 'C'] must be consecutive letters ['A', 'B']; rename them",
        f"{p}: line 4: field 'question': expected a string, got number; write it in quotes",
        f"{p}: line 4: field 'options[1]': expected a non-empty string, got an empty string",
        f"{p}: line 4: field 'domain': expected a string, got number; write it in quotes",
        f"{p}: line 4: field 'answer': expected a letter or a 0-based index, got boolean",
        f"{p}: line 5: expected a JSON object {{...}}, got array; write one JSON object per line",
        f"{p}: line 6: field 'id': '1' repeats the id of line 1; make ids unique",
    ]


def test_mcqa_jsonl_empty(tmp_path):
    path = write(tmp_path, "q.jsonl", "\n\n")
    with pytest.raises(InputError, match="the file is empty"):
        read_mcqa_jsonl(path)


ITEM = MCQAItem("q7", "Which is a fruit?", ("car", "apple", "rock", "shoe"), 1, "bio")


def test_variants_answer_moves_with_order():
    variants = render_prompt_variants(ITEM, n_variants=10, seed=3)
    assert len({(v.template_index, v.order) for v in variants}) == 10
    assert variants[0].template_index == 0 and variants[0].order == (0, 1, 2, 3)
    for variant in variants:
        # Oracle: find the line that shows "apple" and read its letter.
        line = next(line for line in variant.prompt.splitlines() if line.endswith(". apple"))
        assert line[0] == variant.answer_letter
        shown = [line.split(". ", 1)[1] for line in variant.prompt.splitlines() if line[:2] in
                 {"A.", "B.", "C.", "D."}]
        assert shown == [ITEM.options[i] for i in variant.order]


def test_variants_deterministic_and_seed_dependent():
    a = render_prompt_variants(ITEM, 5, seed=1)
    b = render_prompt_variants(ITEM, 5, seed=1)
    c = render_prompt_variants(ITEM, 5, seed=2)
    assert a == b
    assert a != c


def test_variants_all_pairs_and_limit():
    item = MCQAItem("x", "q", ("a", "b"), 0, None)
    # 3 wordings × 2! orders = 6 distinct variants at most.
    variants = render_prompt_variants(item, 6, seed=0)
    assert {(v.template_index, v.order) for v in variants} == set(itertools.product(range(3), [(0, 1), (1, 0)]))
    with pytest.raises(InputError, match="choose 1..6"):
        render_prompt_variants(item, 7)


def test_variants_many_options_are_drawn_not_listed():
    item = MCQAItem("big", "q", tuple(f"o{i}" for i in range(12)), 5, None)  # 12! orders: never listed
    variants = render_prompt_variants(item, 4, seed=0)
    assert variants == render_prompt_variants(item, 4, seed=0)
    assert len({(v.template_index, v.order) for v in variants}) == 4
    for variant in variants:
        assert variant.answer_letter == "ABCDEFGHIJKL"[variant.order.index(5)]


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes('\ufeff{"question": "q", "options": ["a", "b"], "answer": "A"}\n'.encode())
    assert read_mcqa_jsonl(path)[0].question == "q"


def test_bad_template():
    with pytest.raises(InputError, match="lacks {question} or {options}"):
        render_prompt_variants(ITEM, 1, templates=("{question}",))
    with pytest.raises(InputError, match="has a field other than {question} and {options} \\('lang'\\)"):
        render_prompt_variants(ITEM, 1, templates=("{lang} {question} {options}",))
    braces = render_prompt_variants(MCQAItem("b", "f({x})?", ("1", "2"), 0, None), 1,
                                    templates=("{{json}} {question}\n{options}",))
    assert braces[0].prompt.startswith("{json} f({x})?")
