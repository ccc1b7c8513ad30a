"""scripts/bundled_sweep.py's bookkeeping, on hand-written candidate files: the goal check, the ranking, and what
``--collect`` packs (the device machine returns at most 8 files, so the number packed is capped)."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bundled_sweep.py"


def _script():
    spec = importlib.util.spec_from_file_location("bundled_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scores(caption, mcqa, colours, shapes, test):
    place = lambda share: {"on_object": share, "area": 0.08, "images": 4}  # noqa: E731
    return {"held_out": {"caption_exact": caption, "mcqa": mcqa},
            "localisation": {"test_figure": place(test), "absolute": {"colours": place(colours),
                                                                      "shapes": place(shapes)}},
            "history": [{"step": 0}], "train_seconds": 1.0}  # fmt: skip


def test_the_goal_needs_every_figure():
    sweep = _script()
    assert sweep.figures(_scores(1.0, 0.7, 0.5, 0.6, 0.55))["meets_goal"]
    assert not sweep.figures(_scores(0.98, 0.9, 0.9, 0.9, 0.9))["meets_goal"]  # captions below 99 %
    assert not sweep.figures(_scores(1.0, 0.69, 0.9, 0.9, 0.9))["meets_goal"]  # MCQA below 0.7
    assert not sweep.figures(_scores(1.0, 0.9, 0.9, 0.49, 0.9))["meets_goal"]  # shapes below 50 %
    assert not sweep.figures(_scores(1.0, 0.9, 0.9, 0.9, 0.4))["meets_goal"]  # the test's figure below 50 %
    cut = sweep.figures({"held_out": {"caption_exact": 1.0, "mcqa": 0.9}})  # stopped before localisation
    assert cut["localisation_colours"] is None and not cut["meets_goal"]


def test_collect_ranks_packs_the_trained_and_keeps_the_log_of_a_failure(tmp_path):
    sweep = _script()
    work, dest = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    candidates = {"good": _scores(1.0, 0.75, 0.6, 0.7, 0.6), "close": _scores(1.0, 0.72, 0.3, 0.4, 0.2),
                  "broken": _scores(0.5, 0.2, 0.9, 0.9, 0.9), "scored": _scores(1.0, 0.7, 0.0, 0.2, 0.0)}  # fmt: skip
    for name, scores in candidates.items():
        (work / f"{name}.json").write_text(json.dumps(scores))
        (work / f"{name}.log").write_text(f"log of {name}\n")
        if name != "scored":  # a model scored in place (--score) has no folder here
            (work / name).mkdir()
            (work / name / "model.safetensors").write_bytes(b"weights")
    (work / "killed.log").write_text("".join(f"line {i}\n" for i in range(40)))  # cut short before any JSON
    table = sweep.collect(work, dest, pack=2)
    assert table["ranked"][0] == "good" and table["ranked"][1] == "close" and set(table["ranked"]) == {
        "good", "close", "broken", "scored", "killed"}
    assert table["packed"] == ["good", "close"] and table["not_packed"] == ["broken"]
    assert sorted(path.name for path in dest.iterdir()) == ["close.tar.gz", "good.tar.gz", "summary.json"]
    with tarfile.open(dest / "good.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["good", "good.json", "good.log", "good/model.safetensors"]
    written = json.loads((dest / "summary.json").read_text())
    assert written["figures"]["good"]["meets_goal"] and not written["figures"]["close"]["meets_goal"]
    assert written["candidates"]["killed"]["log_tail"][-1] == "line 39"
    assert "log_tail" not in written["candidates"]["good"] and "history" not in written["candidates"]["good"]["scores"]
