"""RunDir: file writers, safety against losing results, config/meta records, resumable example loop."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from helpers.loops import each
from neuronscope.errors import InputError
from neuronscope.runs import RunDir, merge_shards


def test_writers_round_trip(tmp_path):
    run = RunDir(tmp_path / "run")
    tensors = {"scores": torch.arange(6, dtype=torch.float32).reshape(2, 3), "ids": torch.tensor([3, 1])}
    run.write_tensors("scores", tensors, {"method": "ig", "layers": [0, 1], "nested": {"m": 20}})
    loaded, metadata = run.read_tensors("scores.safetensors")
    assert metadata == {"method": "ig", "layers": [0, 1], "nested": {"m": 20}}
    assert torch.equal(loaded["scores"], tensors["scores"]) and torch.equal(loaded["ids"], tensors["ids"])

    run.write_csv("neurons.csv", [{"layer": 1, "index": 7, "score": 0.1 + 0.2}, [0, torch.tensor(3), ""]],
                  ["layer", "index", "score"])
    with open(run.path / "neurons.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["layer", "index", "score"], ["1", "7", repr(0.1 + 0.2)], ["0", "3", ""]]
    assert float(rows[1][2]) == 0.1 + 0.2  # full precision survives

    run.write_json("metrics.json", {"t": torch.tensor([1.5, 2.0]), "path": tmp_path})
    assert run.read_json("metrics.json") == {"t": [1.5, 2.0], "path": str(tmp_path)}
    run.write_text("notes/summary.txt", "héllo")
    assert (run.path / "notes/summary.txt").read_text(encoding="utf-8") == "héllo"


def test_csv_and_names_are_checked(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(InputError, match=r"row 0 of t.csv has columns \['z'\] not in \['a'\]"):
        run.write_csv("t.csv", [{"z": 1}], ["a"])
    with pytest.raises(InputError, match="row 0 of t.csv has 2 values for 1 columns"):
        run.write_csv("t.csv", [[1, 2]], ["a"])
    for bad in ["../x.json", "/etc/x.json"]:
        with pytest.raises(InputError, match="not a relative path inside the run folder"):
            run.write_json(bad, {})


def test_refuses_to_overwrite_results(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_json("metrics.json", {"pcr": 0.5})
    with pytest.raises(InputError) as excinfo:
        RunDir(tmp_path / "run")
    assert str(excinfo.value) == (f"{tmp_path / 'run'} already holds results; pass --resume to continue that run, "
                                  "--overwrite to replace it, or choose another folder")
    assert run.read_json("metrics.json") == {"pcr": 0.5}
    # Resume keeps the results, overwrite removes them.
    assert RunDir(tmp_path / "run", resume=True).read_json("metrics.json") == {"pcr": 0.5}
    RunDir(tmp_path / "run", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".neuronscope-run"]


def test_overwrite_refused_on_foreign_folder(tmp_path):
    folder = tmp_path / "my_documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    for kwargs in ({"overwrite": True}, {"resume": True}, {}):
        with pytest.raises(InputError, match="my_documents"):
            RunDir(folder, **kwargs)
    assert (folder / "thesis.tex").read_text() == "precious"
    RunDir(tmp_path / "empty_ok")  # an empty or new folder is fine
    with pytest.raises(InputError, match="not both"):
        RunDir(tmp_path / "x", resume=True, overwrite=True)


def test_config_and_meta(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_config({"method": "ig", "steps": 20})
    run.write_meta({"model": "tiny"})
    meta = run.read_json("meta.json")
    assert set(meta["versions"]) == {"neuronscope", "torch", "transformers", "python"}
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["model"] == "tiny" and meta["host"] and meta["time"].endswith("+00:00")
    resumed = RunDir(tmp_path / "run", resume=True)
    resumed.write_config({"method": "ig", "steps": 20})  # same config: fine
    with pytest.raises(InputError, match=r"another config \(steps: 20 -> 40\)"):
        resumed.write_config({"method": "ig", "steps": 40})
    resumed.write_meta()
    meta_after = resumed.read_json("meta.json")
    assert meta_after["time"] == meta["time"] and len(meta_after["resumes"]) == 1


class Boom(RuntimeError):
    pass


def score(index: int, prompt: str) -> tuple[dict[str, torch.Tensor], dict]:
    generator = torch.Generator().manual_seed(index)
    return {"scores": torch.randn(2, 3, generator=generator)}, {"prompt": prompt, "length": len(prompt)}


PROMPTS = [f"prompt number {i}" + "!" * i for i in range(7)]


def test_resume_equals_uninterrupted(tmp_path):
    straight = RunDir(tmp_path / "straight")
    assert each(straight, PROMPTS, score) == list(range(7))
    reference = merge_shards(straight, expected=7)

    calls = []

    def crashing(index, prompt):
        calls.append(index)
        if index == 4:
            raise Boom("killed half-way")
        return score(index, prompt)

    interrupted = RunDir(tmp_path / "interrupted")
    with pytest.raises(Boom):
        each(interrupted, PROMPTS, crashing)
    assert interrupted.done_indices() == {0, 1, 2, 3}
    with pytest.raises(InputError, match=r"3 of 7 examples are not done \(4, 5, 6\)"):
        merge_shards(interrupted, expected=7)
    with pytest.raises(InputError, match="already holds results"):
        RunDir(tmp_path / "interrupted")
    calls.clear()
    resumed = RunDir(tmp_path / "interrupted", resume=True)
    assert each(resumed, PROMPTS, lambda i, p: (calls.append(i), score(i, p))[1]) == [4, 5, 6]
    assert calls == [4, 5, 6]
    merged = merge_shards(resumed, expected=7)
    assert merged.records == reference.records and merged.keys == reference.keys
    assert torch.equal(merged.tensors["scores"], reference.tensors["scores"])
    assert (tmp_path / "interrupted/merged.safetensors").read_bytes() == \
        (tmp_path / "straight/merged.safetensors").read_bytes()
    # Oracle: the merged tensor is the per-example tensors stacked in order.
    expected = torch.stack([score(i, p)[0]["scores"] for i, p in enumerate(PROMPTS)])
    assert torch.equal(merged.tensors["scores"], expected)


def test_cut_ledger_line_is_ignored_and_repaired(tmp_path):
    run = RunDir(tmp_path / "run")
    each(run, PROMPTS[:2], score)
    ledger = next((run.path / "progress").glob("*.jsonl"))
    with open(ledger, "ab") as handle:
        handle.write(b'{"key":"00000002","ind')  # a crash in the middle of an append
    resumed = RunDir(tmp_path / "run", resume=True)
    assert resumed.done_indices() == {0, 1}
    assert each(resumed, PROMPTS[:3], score) == [2]
    assert resumed.done_indices() == {0, 1, 2}


def test_example_whose_file_vanished_is_recomputed(tmp_path):
    run = RunDir(tmp_path / "run")
    each(run, PROMPTS[:3], score)
    (run.path / "examples/00000001.safetensors").unlink()
    assert each(RunDir(tmp_path / "run", resume=True), PROMPTS[:3], score) == [1]


def test_variable_length_tensors_are_concatenated(tmp_path):
    run = RunDir(tmp_path / "run")
    each(run, PROMPTS[:3], lambda i, p: ({"tokens": torch.arange(i + 1)}, None))
    merged = merge_shards(run)
    assert merged.tensors["tokens"].tolist() == [0, 0, 1, 0, 1, 2]
    assert merged.tensors["tokens.offsets"].tolist() == [0, 1, 3, 6]
    assert json.loads((run.path / "merged.json").read_text())["layout"] == {"tokens": "concatenated"}


def test_folder_with_only_the_marker_counts_as_empty(tmp_path):
    RunDir(tmp_path / "run")
    RunDir(tmp_path / "run")  # nothing was written: reopening is safe


def test_write_skipped_from_dataset(tmp_path):
    from neuronscope.inputs import SkippedInput

    run = RunDir(tmp_path / "run")
    run.write_skipped([SkippedInput("c.json", "3", "a.png", "image file not found"),
                       {"source": "v.jsonl", "record": "9", "reason": "bad"}])
    assert run.read_json("skipped.json") == [
        {"source": "c.json", "record": "3", "image": "a.png", "reason": "image file not found"},
        {"source": "v.jsonl", "record": "9", "reason": "bad"},
    ]


def test_the_loop_batches_only_this_shards_pending_examples(tmp_path):
    from neuronscope.runs.loop import Example, run_loop

    run = RunDir(tmp_path / "run", rank=1, world=2)
    for index in (1, 5):
        run.write_example(index, {"x": torch.tensor([index])})
    chunks = []
    report = run_loop(run, list(range(9)), lambda chunk: chunks.append([i for i, _ in chunk]) or
                      [Example({"x": torch.tensor([i])}, {}) for i, _ in chunk], batch_size=8)
    assert chunks == [[3, 7]] and report.total == 4 and report.done_before == 2 and report.processed == 2


def test_views_and_shared_memory_are_stored(tmp_path):
    run = RunDir(tmp_path / "run")
    whole = torch.arange(12.0).reshape(3, 4)
    run.write_tensors("t", {"whole": whole, "row": whole[1], "column": whole[:, 2], "again": whole})
    loaded, _ = run.read_tensors("t")
    assert torch.equal(loaded["whole"], whole) and torch.equal(loaded["again"], whole)
    assert loaded["row"].tolist() == [4.0, 5.0, 6.0, 7.0] and loaded["column"].tolist() == [2.0, 6.0, 10.0]
    with pytest.raises(InputError, match="tensor 'bad' is a list"):
        run.write_tensors("u", {"bad": [1, 2]})
