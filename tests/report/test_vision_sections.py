"""The vision sections of the report: each appears when its files exist, shows them, and the generic "Tables",
"Plots" and "Heatmaps" sections do not repeat them."""

from __future__ import annotations

import json
import re

from PIL import Image

from neuronscope.report import build_report
from neuronscope.runs.folder import RunDir


def _png(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def _sections(html: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", html)


def test_vqa_patches_and_lens_sections(tmp_path):
    run = RunDir(tmp_path / "vqa")
    run.write_json("metrics.json", {"vqa_accuracy": 0.9, "tqa_accuracy": 0.1, "vqa_tqa_top_overlap": 0.5})
    run.write_csv("tables/heads.csv", [{"layer": 0, "head": 1, "vqa_lpi_mean": 0.2}], ["layer", "head",
                                                                                        "vqa_lpi_mean"])
    run.write_csv("tables/questions.csv", [{"index": 0, "question": "What colour is the star?", "answer": "red"}],
                  ["index", "question", "answer"])
    run.write_csv("tables/other.csv", [{"a": 1}], ["a"])
    for name in ("plots/heads_vqa_tqa.png", "plots/layers_vqa_tqa.png", "plots/extra.png",
                 "heatmaps/q0.patches.png", "heatmaps/q0.patches.mask.png", "heatmaps/q0.attention.png",
                 "heatmaps/q0.attention.mask.png", "heatmaps/neuron.png"):
        _png(run.path / name)
    run.write_json("lens/0.json", {"grid": [1, 2], "stages": [
        {"stage": "embeddings", "top": ["red", "of"], "highlight": [True, False]}]})
    _png(run.path / "lens" / "0.embeddings.png")
    html = build_report(run.path).read_text()
    sections = _sections(html)
    for title in ("VQA vs textual QA", "Important image patches", "Logit lens over image tokens", "Tables", "Plots",
                  "Heatmaps"):
        assert title in sections, (title, sections)
    assert "What colour is the star?" in html and "background:#ffe08a" in html
    tables = html.split("<h2>Tables</h2>")[1].split("<h2>")[0]
    assert "other.csv" in tables and "heads.csv" not in tables
    plots = html.split("<h2>Plots</h2>")[1].split("<h2>")[0]
    assert "extra" in plots and "heads vqa tqa" not in plots
    heatmaps = html.split("<h2>Heatmaps</h2>")[1].split("<h2>")[0]
    assert "neuron" in heatmaps and "q0" not in heatmaps
    assert html.count("data:image/png") == 8 + 1  # every PNG once (the lens PNG included), nothing twice


def test_invariance_section_draws_the_three_measures(tmp_path):
    run = RunDir(tmp_path / "inv")
    run.write_json("metrics.json", {
        "region": {"pairs": 2, "overlap": 0.5, "jaccard": 0.3, "per_concept": {"red": {"overlap": 0.5}}},
        "cross_image": {"red": {"concept": "red", "mean_overlap": 0.4}},
        "sensitivity": {"red": {"concept": "red", "rate": 0.25}}})
    for name in ("region", "cross_image", "sensitivity"):
        run.write_csv(f"tables/{name}.csv", [{"concept": "red", "value": 1}], ["concept", "value"])
    html = build_report(run.path).read_text()
    assert "Invariance and semantic sensitivity" in _sections(html) and "Tables" not in _sections(html)
    assert html.count("data:image/png") == 1
    assert json.loads((run.path / "metrics.json").read_text())["region"]["overlap"] == 0.5
