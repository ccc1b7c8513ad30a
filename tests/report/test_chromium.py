"""The report renders in headless Chromium with no console error and no network request (skips without it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from neuronscope.report import build_report

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_report_in_chromium.py"
CHROMIUM = shutil.which("/usr/bin/chromium") or shutil.which("chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs headless chromium (apt-get install chromium)"),
]


def check(report: Path, screenshot: Path) -> tuple[int, dict]:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), str(report), "--screenshot", str(screenshot), "--json"],
        capture_output=True, text=True, timeout=180,
    )
    assert completed.returncode in (0, 1), completed.stderr
    return completed.returncode, json.loads(completed.stdout)


def test_fabricated_report_renders_cleanly(fabricated_run, tmp_path):
    report = build_report(fabricated_run.path)
    status, result = check(report, tmp_path / "shot.png")
    assert status == 0 and result["ok"], result["problems"]
    assert result["problems"] == []
    assert result["title"] == f"neuronscope run · {fabricated_run.path.name}"
    assert result["images"] == 6
    assert all(url.startswith(("file://", "data:")) for url in result["requests"])
    with Image.open(tmp_path / "shot.png") as shot:
        assert shot.format == "PNG" and shot.width == 1280
        assert shot.height == result["page_height"] > 1500  # the full page, not one viewport
        # Not a blank page: the header panel and white body differ.
        assert len(set(shot.convert("RGB").getdata())) > 50


def test_checker_catches_network_and_console_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>bad</title></head><body>"
        '<img src="http://neuronscope-test.invalid/x.png" alt="remote">'
        "<script>console.error('boom')</script></body></html>",
        encoding="utf-8",
    )
    status, result = check(page, tmp_path / "bad.png")
    assert status == 1 and not result["ok"]
    problems = "\n".join(result["problems"])
    assert '<img src="http://neuronscope-test.invalid/x.png"> points to the network' in problems
    assert "network request to http://neuronscope-test.invalid/x.png" in problems
    assert "console error: boom" in problems
    assert "image 'remote' did not decode" in problems
