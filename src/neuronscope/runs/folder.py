"""A results folder per run: atomic writes, run metadata, and a resumable per-example ledger.

Layout (names the HTML report picks up are listed in `neuronscope.report.html`):

    run/
      .neuronscope-run            marker: this folder is a neuronscope run (written by rank 0)
      config.json                 the exact config the run used (`write_config`)
      meta.json                   versions, time, host, command line; resumes appended (`write_meta`)
      examples/<key>.safetensors  per-example tensors (`write_example`)
      examples/<key>.json         per-example JSON record {"key", "index", "record"}
      progress/rank-R-of-W.jsonl  ledger: one line per finished example of rank R in a world of W processes
      merged.safetensors/.json    all examples merged in example order (`neuronscope.runs.shards.merge_shards`)

Every write goes to a temporary file in the same folder and is renamed into place (`os.replace`), so a crash
never leaves a half-written file. An example counts as done once its ledger line is written, which happens after
its files are complete; a run killed half-way and restarted with `resume=True` skips the done examples.

Safety: a folder that already holds results is never overwritten by accident. Opening it needs `resume=True`
(continue the run) or `overwrite=True` (delete its results first; refused unless the folder carries the
neuronscope marker, so a wrong path cannot wipe unrelated files).

Several processes (data parallel, rank R of W): each writes only its own ledger and its own examples' files;
shared files (marker, config, meta) are written by rank 0. Rank 0 decides whether the folder holds an earlier
run (marker or shared files present); ranks > 0 check only their own ledger. With `overwrite`, rank 0 removes the
shared files and the ledgers of other world sizes, each rank removes its own ledger; examples' files are left in
place (they are ignored until rewritten, since only ledger entries count).

Example:
    >>> import tempfile, torch
    >>> run = RunDir(tempfile.mkdtemp() + "/run")
    >>> run.write_config({"method": "contribution", "top_k": 10})  # doctest: +ELLIPSIS
    PosixPath('.../config.json')
    >>> _ = run.write_example(0, {"scores": torch.zeros(2, 3)}, {"prompt": "hi"})
    >>> sorted(run.done_keys())
    ['00000000']
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from neuronscope.errors import InputError, RunFolderError
from neuronscope.results.io import (
    atomic_write_bytes,
    atomic_write_text,
    check_safetensors,
    read_json,
    read_safetensors,
    to_json,
    write_csv,
    write_json,
    write_png,
    write_safetensors,
)
from neuronscope.results.provenance import run_metadata
from neuronscope.runs.ledger import EXAMPLES_DIR, PROGRESS_DIR, Ledger

RUN_MARKER = ".neuronscope-run"
_LEDGER_PATTERN = re.compile(r"^rank-(\d+)-of-(\d+)\.jsonl$")


class RunDir(Ledger):
    """One run's results folder (see the module docstring for the layout and the safety rules).

    Args:
        path: the folder; created with its parents if missing.
        resume: continue an earlier run in this folder (default False).
        overwrite: delete an earlier run's results in this folder first (default False).
        rank: this process's rank (default 0); see `neuronscope.runs.shards.detect_rank_world`.
        world: number of processes writing into the folder (default 1).

    Raises:
        InputError: the folder holds results and neither resume nor overwrite was asked for; or overwrite
            was asked for on a folder that is not a neuronscope run.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if resume and overwrite:
            raise RunFolderError("choose either resume (continue the run) or overwrite (replace it), not both")
        if world < 1 or not 0 <= rank < world:
            raise InputError(f"rank {rank} of world {world} is impossible; need world >= 1 and 0 <= rank < world")
        self.path = Path(path)
        self.rank = rank
        self.world = world
        self.resume = resume
        self._ledger_checked = False
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file, not a folder; choose a folder for the run's results")
        if rank == 0:
            self._prepare_as_rank_zero(overwrite)
        else:
            self._prepare_as_other_rank(overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        if rank == 0 and not (self.path / RUN_MARKER).exists():
            atomic_write_text(self.path / RUN_MARKER, json.dumps({"format": 1}) + "\n")

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """Open an existing run folder to read it (no safety checks, nothing written).

        Example:
            >>> RunDir.open("runs/demo").done_keys()  # doctest: +SKIP
        """
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"{path}: run folder not found; pass the folder a run wrote its results into")
        run = cls.__new__(cls)
        run.path, run.rank, run.world, run.resume, run._ledger_checked = path, 0, 1, True, False
        return run

    @classmethod
    def check(cls, path: str | Path, *, resume: bool = False, overwrite: bool = False,
              config: Mapping[str, Any] | None = None) -> None:
        """Raise now what opening ``path`` would raise (an earlier run there, a foreign folder, a resumed run with
        another ``config``), writing and deleting nothing: workflows call it before loading a model.

        Example:
            >>> RunDir.check("runs/paris", resume=False)  # doctest: +SKIP
        """
        if resume and overwrite:
            raise RunFolderError("choose either resume (continue the run) or overwrite (replace it), not both")
        run = cls.__new__(cls)
        run.path, run.rank, run.world, run.resume, run._ledger_checked = Path(path), 0, 1, resume, False
        if run.path.exists() and not run.path.is_dir():
            raise RunFolderError(f"{run.path} is a file, not a folder; choose a folder for the run's results")
        run._prepare_as_rank_zero(overwrite, dry_run=True)
        if resume and config is not None and run.exists("config.json"):
            run._compare_config(dict(config))

    def validate(self) -> None:
        """Check that the folder holds neuronscope results and that every JSON and safetensors file in it reads.

        Raises:
            RunFolderError: no neuronscope results here. ResultFileError: a damaged file (the message names it).
        """
        known = ("config.json", "metrics.json", "neurons.json", "scores.json", "edit.json")
        if not (self.path / RUN_MARKER).exists() and not any((self.path / name).exists() for name in known):
            raise RunFolderError(f"{self.path} holds no neuronscope results (no {RUN_MARKER}, config.json or "
                                 "metrics.json); pass the folder a neuronscope command wrote")
        for path in sorted(self.path.rglob("*")):
            if not path.is_file() or path.name.startswith(".") or PROGRESS_DIR in path.relative_to(self.path).parts:
                continue
            if path.suffix == ".json":
                read_json(path, what=f"run file {path.relative_to(self.path)}")
            elif path.suffix == ".safetensors":
                check_safetensors(path, what=f"run file {path.relative_to(self.path)}")

    # ------------------------------------------------------------------ safety on open
    def _prepare_as_rank_zero(self, overwrite: bool, dry_run: bool = False) -> None:
        if not self.path.is_dir():
            return
        # A folder holding only the marker (a run that stopped before writing anything) counts as empty.
        entries = [entry for entry in self.path.iterdir() if entry.name != RUN_MARKER]
        if self.world > 1:
            # Ranks > 0 may already be writing their examples and ledgers into a fresh folder.
            entries = [entry for entry in entries if entry.name not in (EXAMPLES_DIR, PROGRESS_DIR)]
        own_ledger = self._ledger_path().exists()
        if not entries and not own_ledger:
            return
        is_run = (self.path / RUN_MARKER).exists()
        if overwrite:
            if not is_run:
                raise RunFolderError(f"{self.path} is not empty and is not a neuronscope run folder (no {RUN_MARKER}); "
                                     "refusing to delete its files: choose a new or empty folder")
            if not dry_run:
                self._clear()
        elif self.resume:
            if not is_run:
                raise RunFolderError(f"{self.path} is not a neuronscope run folder (no {RUN_MARKER}); nothing to resume: "
                                 "choose a new or empty folder")
        else:
            raise RunFolderError(f"{self.path} already holds results; pass --resume to continue that run, "
                                 "--overwrite to replace it, or choose another folder")

    def _prepare_as_other_rank(self, overwrite: bool) -> None:
        ledger = self._ledger_path()
        if not ledger.exists():
            return
        if overwrite:
            ledger.unlink()
        elif not self.resume:
            raise RunFolderError(f"{self.path} already holds results of rank {self.rank} ({ledger.name}); resume the "
                             "run, overwrite it, or choose another folder")

    def _clear(self) -> None:
        for entry in self.path.iterdir():
            if self.world > 1 and entry.name == EXAMPLES_DIR:
                continue
            if self.world > 1 and entry.name == PROGRESS_DIR:
                for ledger in entry.iterdir():
                    match = _LEDGER_PATTERN.match(ledger.name)
                    other_rank_now = match and int(match[2]) == self.world and int(match[1]) != self.rank
                    if not other_rank_now:
                        ledger.unlink()
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    # ------------------------------------------------------------------ plain files
    def file(self, name: str | Path) -> Path:
        """The path of `name` inside the run folder; names may have sub-folders but may not leave the folder."""
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise InputError(f"'{name}' is not a relative path inside the run folder; use e.g. 'plots/layers.png'")
        return self.path / relative

    def exists(self, name: str | Path) -> bool:
        return self.file(name).exists()

    def write_bytes(self, name: str | Path, data: bytes) -> Path:
        return atomic_write_bytes(self.file(name), data)

    def write_text(self, name: str | Path, text: str) -> Path:
        """Write a UTF-8 text file atomically; returns its path."""
        return atomic_write_text(self.file(name), text)

    def write_json(self, name: str | Path, obj: Any) -> Path:
        """Write ``obj`` as indented JSON (tensors, numpy values, paths, dataclasses converted); returns the path.

        Example:
            >>> run.write_json("metrics.json", {"pcr": 0.25})  # doctest: +SKIP
        """
        return write_json(self.file(name), obj)

    def read_json(self, name: str | Path) -> Any:
        """The JSON file ``name`` of the run; missing or damaged is a ``ResultFileError`` that names it."""
        return read_json(self.file(name), what=f"run file {name}")

    def write_csv(
        self, name: str | Path, rows: Iterable[Mapping[str, Any] | Sequence[Any]], columns: Sequence[str]
    ) -> Path:
        """Write a CSV table with a header; rows are dicts (missing keys left empty) or sequences.

        Example:
            >>> run.write_csv("neurons.csv", [{"layer": 3, "index": 17, "score": 0.5}],
            ...               ["layer", "index", "score"])  # doctest: +SKIP
        """
        return write_csv(self.file(name), rows, columns)

    def write_tensors(
        self, name: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
    ) -> Path:
        """Write tensors as safetensors (".safetensors" appended if missing) with JSON metadata.

        Example:
            >>> run.write_tensors("scores", {"scores": torch.randn(2, 8)}, {"method": "ig"})  # doctest: +SKIP
        """
        return write_safetensors(self.file(_with_suffix(name, ".safetensors")), tensors, metadata)

    def read_tensors(self, name: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and metadata written by `write_tensors`; missing or damaged is a ``ResultFileError``."""
        return read_safetensors(self.file(_with_suffix(name, ".safetensors")), what=f"run file {name}")

    def write_png(self, name: str | Path, image: Any, dpi: int = 110) -> Path:
        """Write a matplotlib Figure or a PIL image as PNG (".png" appended if missing); returns the path."""
        return write_png(self.file(_with_suffix(name, ".png")), image, dpi)

    def write_skipped(self, skipped: Iterable[Any]) -> Path:
        """Write the inputs left out of the run to `skipped.json` (shown in the report's "Skipped inputs").

        Args:
            skipped: `SkippedInput`s (e.g. `ImageDataset.skipped`) or dicts {"source", "record", "reason", ...}.
        """
        items = [item.to_dict() if hasattr(item, "to_dict") else item for item in skipped]
        return self.write_json("skipped.json", items)

    # ------------------------------------------------------------------ config and metadata
    def write_config(self, config: Mapping[str, Any]) -> Path:
        """Record the exact config of the run in `config.json` (rank 0 writes; all ranks check on resume).

        When resuming, a config that differs from the recorded one is refused: the examples computed so far
        would not match the rest.
        """
        path = self.file("config.json")
        if path.exists():
            self._compare_config(dict(config))
            return path
        if self.rank == 0:
            atomic_write_text(path, to_json(dict(config)) + "\n")
        return path

    def _compare_config(self, config: dict[str, Any]) -> None:
        path = self.file("config.json")
        recorded = read_json(path, what="run config")
        current = json.loads(to_json(config))
        if recorded != current:
            changes = [
                f"{key}: {recorded.get(key, '<absent>')!r} -> {current.get(key, '<absent>')!r}"
                for key in sorted(set(recorded) | set(current))
                if recorded.get(key, object()) != current.get(key, object())
            ]
            raise RunFolderError(f"{path}: the run being resumed used another config ({'; '.join(changes)}); "
                                 "resume with the same options, overwrite the run, or choose another folder")

    def write_meta(self, extra: Mapping[str, Any] | None = None) -> Path:
        """Record how the run was made in `meta.json`: versions, time, host, command line (rank 0 only).

        On resume the original record is kept and this session is appended to its "resumes" list.
        """
        path = self.file("meta.json")
        if self.rank != 0:
            return path
        session = run_metadata(self.world)
        session.update(extra or {})
        if path.exists():
            recorded = json.loads(path.read_text(encoding="utf-8"))
            recorded.setdefault("resumes", []).append(
                {key: session[key] for key in ("time", "host", "command", "world_size")})
            return self.write_json("meta.json", recorded)
        return self.write_json("meta.json", session)


def _with_suffix(name: str | Path, suffix: str) -> str:
    name = str(name)
    return name if name.lower().endswith(suffix) else name + suffix
