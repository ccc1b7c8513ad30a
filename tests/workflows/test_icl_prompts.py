"""``icl-prompts`` on a toy SST-2 file: every written prompt, read back by splitting its text, is made of rows of the
file with the asked label mix and order, its target is the query's true label; the file runs through ``locate``,
``evaluate`` and ``intervene`` (whose p(label) equals a plain forward); bad input is one line and exit 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import LlamaForCausalLM

from helpers.icl_words import save_icl_toy, word_tokenizer
from neuronscope.cli.main import app


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    return save_icl_toy(tmp_path_factory.mktemp("icl-prompts"))


def invoke(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def tsv_rows(data_dir: Path) -> set[tuple[str, int]]:
    lines = (data_dir / "icl" / "sst2_872.tsv").read_text().splitlines()[1:]
    return {(text, int(label)) for text, label in (line.split("\t") for line in lines)}


@pytest.mark.parametrize(("counts", "order"), [("3,1", "sorted"), (None, "random")])
def test_prompts_are_rows_of_the_file_with_the_label_mix_and_order(toy, tmp_path, counts, order) -> None:
    _, data_dir = toy
    out = tmp_path / "p.jsonl"
    done = invoke("icl-prompts", "--data", data_dir, "--n", 6, "--order", order, "--out", out,
                  *(["--counts", counts] if counts else ["--shots", 4]))
    assert done.exit_code == 0, done.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    items = tsv_rows(data_dir)
    assert len(rows) == 6 and len({row["id"] for row in rows}) == 6
    assert sorted(row["query_class"] for row in rows) == [0, 0, 0, 1, 1, 1]  # queries balanced over the classes
    for row in rows:
        words = row["label_words"]
        assert words == ["negative", "positive"]
        *demos, query = row["prompt"].split("\n\n")
        classes = []
        for demo, span in zip(demos, row["label_spans"], strict=True):
            text, label = demo.removeprefix("Review: ").split("\nSentiment: ")
            assert (text, words.index(label)) in items
            assert row["prompt"][span[0]:span[1]] == label
            classes.append(words.index(label))
        assert classes == row["demo_classes"]
        assert sorted(classes) == ([0, 0, 0, 1] if counts else [0, 0, 1, 1])
        if order == "sorted":
            assert classes == sorted(classes)
        assert query.startswith("Review: ") and query.endswith("\nSentiment:")
        query_text = query.removeprefix("Review: ").removesuffix("\nSentiment:")
        assert (query_text, row["query_class"]) in items
        assert query_text not in [demo.removeprefix("Review: ").split("\n")[0] for demo in demos]
        assert row["target"] == words[row["query_class"]]


def test_the_prompts_run_through_locate_evaluate_and_intervene(toy, tmp_path) -> None:
    model_dir, data_dir = toy
    prompts = tmp_path / "icl.jsonl"
    assert invoke("icl-prompts", "--data", data_dir, "--n", 4, "--out", prompts).exit_code == 0
    run = tmp_path / "neurons"
    done = invoke("locate", "-m", model_dir, "--prompts", prompts, "--top-k", 3, "--out", run)
    assert done.exit_code == 0, done.output
    done = invoke("evaluate", run, "--draws", 2)
    assert done.exit_code == 0, done.output
    out = tmp_path / "iv"
    done = invoke("intervene", "-m", model_dir, "--prompts", prompts, "--heads", "1.0", "--mode", "suppress",
                  "--out", out)
    assert done.exit_code == 0, done.output
    model, tokenizer = LlamaForCausalLM.from_pretrained(model_dir).eval(), word_tokenizer()
    with open(out / "tables" / "intervene.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    for line, row in zip(prompts.read_text().splitlines(), table, strict=True):
        record = json.loads(line)
        token = tokenizer.convert_tokens_to_ids(record["target"])
        with torch.no_grad():
            logits = model(**tokenizer(record["prompt"], return_tensors="pt")).logits[0, -1].double()
        assert int(row["token_id"]) == token
        assert float(row["p_before"]) == pytest.approx(float(logits.softmax(-1)[token]), rel=1e-5)


def test_icl_prompts_bad_input(toy, tmp_path) -> None:
    _, data_dir = toy
    out = tmp_path / "p.jsonl"
    for args, fragment in ((["--counts", "3"], "one count per class"), (["--counts", "0,0"], "adds up to 0"),
                           (["--data", tmp_path / "nowhere"], "icl/sst2_872.tsv"),
                           (["--out", tmp_path / "p.txt"], ".jsonl file")):
        base = {"--data": data_dir, "--out": out}
        flags = [str(a) for a in args]
        for key, value in base.items():
            if key not in flags:
                flags += [key, str(value)]
        result = invoke("icl-prompts", *flags)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], (args, result.stderr)
        assert not out.exists()
    out.write_text("keep\n")
    result = invoke("icl-prompts", "--data", data_dir, "--out", out)
    assert result.exit_code == 2 and "--overwrite" in result.stderr and out.read_text() == "keep\n"
