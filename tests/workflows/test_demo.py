"""The demo, short version (CI): runs end to end on the bundled model, writes its report, and the located neurons'
edit removes the colour where the same edit of random neurons does not."""

from __future__ import annotations

import json

import pytest

from neuronscope.bundled import SHAPES_VLM_PATH


@pytest.mark.integration
def test_quick_demo(tmp_path):
    if not (SHAPES_VLM_PATH / "model.safetensors").is_file():
        pytest.skip("bundled model missing")
    from neuronscope.workflows.demo import run_demo

    out = run_demo(tmp_path / "demo", quick=True)
    metrics = json.loads((out / "metrics.json").read_text())
    concept = metrics["concept"]
    located = next(v for k, v in metrics.items() if k.startswith("edit to") and "located" in k)
    random = next(v for k, v in metrics.items() if k.startswith("edit to") and "random" in k)
    assert metrics[f"'{concept}' rate in their captions, before"] > 0.8
    assert located < random - 0.5, metrics
    assert metrics["edit: other words, mean absolute change in rate (each over the images that show it)"] < 0.2
    rows = metrics["suppression, every colour"]  # every colour shown, at k = 10 and 300, located and random
    assert {row["k"] for row in rows} == {10, 300} and concept in {row["concept"] for row in rows}
    top = [row for row in rows if row["k"] == 300]
    assert sum(r["after_located"] for r in top) / len(top) < sum(r["after_random"] for r in top) / len(top) - 0.3
    assert all(0 <= row[key] <= 1 for row in rows for key in ("before", "after_located", "after_random"))
    assert (out / "tables" / "suppression.csv").is_file() and "after_located" in (out / "report.html").read_text()
    report = (out / "report.html").read_text()
    assert "data:image/png;base64" in report and "http://" not in report and "https://" not in report
    assert (out / "edit.safetensors").is_file() and any((out / "heatmaps").glob("*.png"))
    _check_heatmaps_and_links(out, metrics, report)


def _check_heatmaps_and_links(out, metrics, report):
    """One heatmap sheet per located concept, its table in numeric order of k, and a link to every file written."""
    from urllib.parse import quote

    from neuronscope.workflows.demo_heatmaps import LOCALISATION_KEY

    table = metrics[LOCALISATION_KEY]
    concepts = json.loads((out / "locate" / "concepts.json").read_text())
    assert set(table) == {c["concept"] for c in concepts}  # every concept the demo located
    sheets = sorted(path.name for path in (out / "heatmaps").glob("*.png"))
    assert sheets == sorted(f"concept-{concept}.png" for concept in table)
    for row in table.values():
        ks = [int(key.split()[1]) for key in row if key.startswith("top ")]
        assert ks == sorted(ks) and ks[0] == 1 and 1 <= row["images"] <= 3
        assert all(0 <= row[f"top {k}"] <= 1 for k in ks) and 0 < row["object area"] < 0.5
    written = [path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()]
    assert len(written) > 100  # the pipeline's own heatmaps under locate/heatmaps/ too
    missing = [name for name in written if name != "report.html" and f'href="{quote(name)}"' not in report]
    assert missing == []
