"""Atomic writes: a failure mid-write leaves the old file intact and no temporary file behind."""

from __future__ import annotations

import os

import pytest

from neuronscope.results.io import atomic_open, atomic_write_bytes, atomic_write_text
from neuronscope.runs import RunDir


def test_write_and_replace(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one\n")
    atomic_write_text(path, "two\n")
    assert path.read_text() == "two\n"
    assert os.listdir(path.parent) == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failure_mid_write_keeps_old_file(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write_bytes(path, b"old contents")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_open(path) as handle:
            handle.write(b"new contents, half")
            raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_rundir_json_failure_keeps_old_file(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_json("metrics.json", {"a": 1})
    with pytest.raises(TypeError, match="cannot write a object as JSON"):
        run.write_json("metrics.json", {"a": 2, "b": object()})
    assert run.read_json("metrics.json") == {"a": 1}
    assert sorted(os.listdir(run.path)) == [".neuronscope-run", "metrics.json"]


def test_png_failure_keeps_old_file(tmp_path):
    from PIL import Image

    run = RunDir(tmp_path / "run")
    run.write_png("plots/x.png", Image.new("RGB", (2, 2)))
    before = (run.path / "plots/x.png").read_bytes()

    class BrokenFigure:
        def savefig(self, buffer, **kwargs):
            buffer.write(b"\x89PNG partial")
            raise OSError("renderer crashed")

    with pytest.raises(OSError, match="renderer crashed"):
        run.write_png("plots/x.png", BrokenFigure())
    assert (run.path / "plots/x.png").read_bytes() == before


def test_unwritable_place_is_a_clear_error(tmp_path):
    from neuronscope.errors import NeuronscopeError

    (tmp_path / "plain_file").write_text("x")
    with pytest.raises(NeuronscopeError, match="cannot write .*plain_file/a.json: .*check that its folder is "
                                               "writable"):
        atomic_write_text(tmp_path / "plain_file" / "a.json", "{}")
