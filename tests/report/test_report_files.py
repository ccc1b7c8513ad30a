"""The report's figure order and its "Files" section: digit runs sort as numbers (top1, top10, top50, top100 —
not as text), and with ``link_files=True`` every file of the folder is linked by a relative path that leads to it."""

from __future__ import annotations

import importlib.util
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

from PIL import Image

from neuronscope.report import build_report
from neuronscope.report.cells import natural_key
from neuronscope.runs import RunDir

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_report_in_chromium.py"


def load_checker():
    spec = importlib.util.spec_from_file_location("check_report_in_chromium", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []
        self.captions: list[str] = []
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.append(dict(attrs)["href"])
        self._in_caption = tag == "figcaption"

    def handle_data(self, data):
        if self._in_caption:
            self.captions.append(data.strip())
            self._in_caption = False


class Sections(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.ids.append(dict(attrs)["id"])


def parse(path: Path) -> tuple[str, Sections]:
    html = path.read_text(encoding="utf-8")
    page = Sections()
    page.feed(html)
    return html, page


def _run(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.write_json("metrics.json", {"accuracy": 0.5})
    for k in (1000, 1, 100, 10, 500, 50):
        run.write_png(f"heatmaps/red.image0.mean_top{k}", Image.new("RGB", (4, 4), (k % 256, 0, 0)))
    run.write_text("locate/heatmaps/deep name.txt", "x")
    return run


def test_natural_key_orders_numbers_numerically():
    names = ["top1", "top10", "top100", "top1000", "top50", "top500"]  # the text order
    assert sorted(names, key=natural_key) == ["top1", "top10", "top50", "top100", "top500", "top1000"]
    assert sorted(["b2", "a10", "a9"], key=natural_key) == ["a9", "a10", "b2"]


def test_heatmaps_are_shown_in_numeric_order_of_k(tmp_path):
    html, _ = parse(build_report(_run(tmp_path).path))
    links = Links()
    links.feed(html)
    ks = [int(caption.rsplit("top", 1)[1]) for caption in links.captions if "mean top" in caption]
    assert ks == [1, 10, 50, 100, 500, 1000]


def test_link_files_links_every_file_of_the_folder(tmp_path):
    run = _run(tmp_path)
    html, page = parse(build_report(run.path))
    assert "files" not in page.ids  # off by default
    html, page = parse(build_report(run.path, link_files=True))
    assert page.ids[-1] == "files"
    links = Links()
    links.feed(html)
    files = [href for href in links.hrefs if not href.startswith("#")]
    on_disk = {p.relative_to(run.path).as_posix() for p in run.path.rglob("*") if p.is_file()} - {"report.html"}
    assert {unquote(href) for href in files} == on_disk and len(files) == len(on_disk)
    assert all((run.path / unquote(href)).is_file() for href in files)
    assert load_checker().static_problems(html) == []


def test_the_checker_allows_links_into_the_folder_only():
    checker = load_checker()
    good = '<a href="locate/heatmaps/x.png">x</a><a href="metrics.json#k">m</a>'
    assert checker.static_problems(good) == []
    for bad in ("../secret.txt", "/etc/passwd", "file:///etc/passwd", "http://example.com/x", "//example.com/x",
                "a/../../b"):
        problems = checker.static_problems(f'<a href="{bad}">x</a>')
        assert len(problems) == 1 and bad in problems[0], bad
    assert checker.static_problems('<img src="locate/x.png">')  # images must still be embedded


def test_wide_pngs_span_the_row_of_figures(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_png("heatmaps/sheet", Image.new("RGB", (1400, 300)))
    run.write_png("heatmaps/single", Image.new("RGB", (64, 64)))
    html, _ = parse(build_report(run.path))
    figures = html.split('<div class="figures">', 1)[1].split("</div>", 1)[0]
    assert figures.count('<figure class="wide">') == 1 and figures.count("<figure>") == 1
    assert figures.index('<figure class="wide">') < figures.index("sheet") < figures.index("<figure>")
