"""HTML report: sections from the file-name convention, embedded images, nothing external, escaping."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from neuronscope.errors import InputError
from neuronscope.report import build_report
from neuronscope.runs import RunDir

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_report_in_chromium.py"


def load_checker():
    spec = importlib.util.spec_from_file_location("check_report_in_chromium", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections: list[str] = []
        self.images: list[tuple[str, str]] = []  # (alt, src)
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "img":
            self.images.append((attrs.get("alt", ""), attrs["src"]))
        for name in ("src", "href"):
            if name in attrs:
                self.urls.append(attrs[name])


def parse(path: Path) -> tuple[str, Collector]:
    html = path.read_text(encoding="utf-8")
    collector = Collector()
    collector.feed(html)
    return html, collector


def test_full_report(fabricated_run):
    path = build_report(fabricated_run.path)
    assert path == fabricated_run.path / "report.html"
    html, page = parse(path)
    assert page.sections == ["how", "metrics", "neurons", "captions", "tables", "plots", "heatmaps", "figures",
                             "skipped"]
    # Nothing external: no URL scheme at all, every src a data URI, every href an in-page anchor.
    without_data = re.sub(r"data:[a-z/]+;base64,[A-Za-z0-9+/=]*", "", html)
    assert not re.search(r"https?:|//[a-z]|url\(", without_data, re.IGNORECASE)
    assert all(url.startswith("data:") or url.startswith("#") for url in page.urls)
    assert load_checker().static_problems(html) == []
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    # Every PNG is embedded byte for byte (oracle: the files themselves).
    embedded = {base64.b64decode(src.split(",", 1)[1]) for _, src in page.images}
    pngs = [*fabricated_run.path.glob("plots/*.png"), *fabricated_run.path.glob("heatmaps/*.png"),
            fabricated_run.path / "overview.png", fabricated_run.path / "dog.png"]
    assert {png.read_bytes() for png in pngs} == embedded
    assert len(page.images) == len(pngs)  # the caption image is a thumbnail, not repeated under Figures


def test_report_content(fabricated_run):
    html, _ = parse(build_report(fabricated_run.path, title="Dog neurons"))
    assert "<title>Dog neurons</title>" in html
    assert "model: tiny-llama · method: contribution · site: down_proj" in html
    assert "<td>thresholds.relative</td>" in html and "<td>torch version</td>" in html
    assert '<span class="num">0.8333</span>' in html  # 4 significant digits
    assert "<th>boost</th><th>suppress</th>" in html  # {row: {column: value}} became a 2-D table
    # Top tokens joined to their neuron's row; token text escaped; scores shown.
    row = re.search(r"<tr><td><span class=\"num\">3</span></td><td><span class=\"num\">17</span></td>.*?</tr>",
                    html).group(0)
    assert '<span class="tok"> dog</span> <span class="score">2.5</span>' in row
    assert "&lt;kitten&gt;" in html and "<kitten>" not in html
    assert "a <mark>cat</mark> runs on the grass" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    # Skipped inputs from skipped.json and from metrics.json, and not repeated as a metric.
    assert "Skipped inputs (2)" in html and "image file not found" in html and "vqa.jsonl" in html
    assert "inputs.skipped_inputs" not in html
    assert "Neurons behind &#39;dog&#39; in 12 captions." in html


def test_sections_only_when_files_exist(tmp_path):
    run = RunDir(tmp_path / "run")
    html, page = parse(build_report(run.path))
    assert page.sections == [] and "holds none of the files" in html
    run.write_json("metrics.json", {"accuracy": 0.5})
    html, page = parse(build_report(run.path))
    assert page.sections == ["metrics"]
    run.write_json("top_tokens.json", [{"layer": 1, "index": 2, "tokens": [{"token": "x", "score": 0.5}]}])
    _, page = parse(build_report(run.path))
    assert page.sections == ["metrics", "neurons"]


def test_long_tables_are_cut(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_csv("neurons.csv", [[0, i, 1.0 / (i + 1)] for i in range(30)], ["layer", "index", "score"])
    html, _ = parse(build_report(run.path, max_rows=10))
    assert "showing the first 10 of 30 rows" in html
    assert html.count("<tr><td>") == 10


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("metrics.json", '{"a": 1,,}', "metrics.json: line 1: invalid JSON"),
        ("captions.json", '{"before": "x"}', "captions.json: expected a list of objects"),
        ("top_tokens.json", "[1, 2]", "top_tokens.json: expected"),
    ],
)
def test_damaged_files_are_named(tmp_path, name, text, message):
    run = RunDir(tmp_path / "run")
    run.write_text(name, text)
    with pytest.raises(InputError, match=re.escape(message)):
        build_report(run.path)


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="run folder not found"):
        build_report(tmp_path / "nope")


def test_static_checker_flags_external_references():
    checker = load_checker()
    html = ('<html><head><link rel="stylesheet" href="https://cdn.example.com/x.css">'
            '<style>body { background: url("http://example.com/bg.png") }</style></head>'
            '<body><img src="plot.png"><a href="#top">ok</a><img src="data:image/png;base64,AA=="></body></html>')
    problems = checker.static_problems(html)
    assert problems == [
        '<link href="https://cdn.example.com/x.css"> points to the network; embed it as a data: URI',
        '<img src="plot.png"> points to another file; embed it as a data: URI',
        "CSS url(http://example.com/bg.png) points outside the file; embed it as a data: URI",
    ]
    assert json.dumps(problems)  # plain strings


def test_large_images_listed_not_embedded(tmp_path, monkeypatch):
    from PIL import Image

    import neuronscope.report.html as report_html

    run = RunDir(tmp_path / "run")
    run.write_png("plots/big", Image.new("RGB", (64, 64), (10, 200, 30)))
    monkeypatch.setattr(report_html, "MAX_EMBED_BYTES", 10)
    html, page = parse(build_report(run.path))
    assert page.images == [] and "plots/big.png is 0 MiB: too large to embed" in html


def test_caption_images_outside_the_run_are_not_read(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    run = RunDir(tmp_path / "run")
    run.write_json("captions.json", [{"image": "../outside.png", "before": "a", "after": "b"}])
    html, page = parse(build_report(run.path))
    assert page.images == [] and "<td>../outside.png</td>" in html
