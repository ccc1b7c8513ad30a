"""A fabricated run folder holding every file the HTML report knows about."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from neuronscope.report.plots import bar_chart_figure, layer_histogram_figure, score_histogram_figure
from neuronscope.runs import RunDir


@pytest.fixture
def fabricated_run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.write_config({"model": "tiny-llama", "method": "contribution", "site": "down_proj", "top_k": 50,
                      "thresholds": {"relative": 0.2}})
    run.write_meta()
    run.write_text("summary.txt", "Neurons behind 'dog' in 12 captions.")
    run.write_json("metrics.json", {
        "examples": 12,
        "specificity": 0.8333333,
        "pcr": {"biology": {"boost": 0.31, "suppress": -0.52}, "physics": {"boost": 0.12, "suppress": -0.08}},
        "per_concept": [{"concept": "dog", "rate_before": 0.9, "rate_after": 0.1}],
        "inputs": {"declared": 13, "skipped": 1, "skipped_inputs": [
            {"source": "captions.json", "record": "7", "image": "img/7.jpg", "reason": "image file not found"}]},
    })
    neurons = torch.tensor([[3, 17], [2, 5], [3, 40], [1, 9]])
    scores = torch.linspace(-1, 1, 4 * 64).reshape(4, 64)
    run.write_csv("neurons.csv", [{"layer": int(layer), "index": int(index), "score": float(scores[layer, index])}
                                  for layer, index in neurons], ["layer", "index", "score"])
    run.write_json("top_tokens.json", {"3:17": [[" dog", 2.5], [" puppy", 2.125]], "2:5": [" cat", "<kitten>"]})
    Image.new("RGB", (12, 8), (200, 120, 40)).save(run.file("dog.png"))
    run.write_json("captions.json", [
        {"id": "0", "image": "dog.png", "before": "a dog runs on the grass", "after": "a cat runs on the grass"},
        {"id": "1", "before": "<script>alert(1)</script>", "after": "two dogs"},
    ])
    run.write_png("plots/layer_histogram", layer_histogram_figure(neurons, 4))
    run.write_png("plots/score_distribution", score_histogram_figure(scores))
    run.write_png("plots/pcr", bar_chart_figure(["boost", "suppress"], [0.31, -0.52]))
    grid = (np.outer(np.linspace(0, 1, 24), np.linspace(1, 0, 24)) * 255).astype("uint8")
    run.write_png("heatmaps/neuron_3_17", Image.fromarray(grid).convert("RGB"))
    run.write_png("overview", Image.new("RGB", (5, 5), (0, 90, 200)))
    run.write_csv("tables/per_layer.csv", [[0, 1.5], [1, 2.5]], ["layer", "mean"])
    run.write_json("skipped.json", [{"source": "vqa.jsonl", "record": "3", "reason": "cannot be read as an image"}])
    return run
