"""The ledger of a run folder: per-example results and the record of which examples are done, per rank.

    examples/<key>.safetensors  per-example tensors
    examples/<key>.json         per-example JSON record {"key", "index", "record"}
    progress/rank-R-of-W.jsonl  one line per finished example of rank R in a world of W processes

An example counts as done once its ledger line is written, which happens after its files are complete; a run
killed half-way and restarted with ``resume=True`` skips the done examples. :class:`Ledger` is a part of
:class:`~neuronscope.runs.folder.RunDir`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from neuronscope.errors import InputError

EXAMPLES_DIR = "examples"
PROGRESS_DIR = "progress"
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def example_key(index: int) -> str:
    """The default key of example `index`: zero-padded so that file names sort in example order."""
    return f"{index:08d}"


class Ledger:
    """Per-example results of a run folder (``self.path``, ``self.rank``, ``self.world`` come from RunDir)."""

    path: Path
    rank: int
    world: int
    _ledger_checked: bool

    def write_example(
        self,
        index: int,
        tensors: Mapping[str, torch.Tensor] | None = None,
        record: Any = None,
        *,
        key: str | None = None,
    ) -> str:
        """Store example `index`'s results and mark it done; returns its key.

        Writes `examples/<key>.safetensors` (if `tensors`), then `examples/<key>.json` with
        {"key", "index", "record"}, then appends the ledger line; a crash before the ledger line means the
        example is simply computed again on resume.

        Args:
            index: the example's position in the dataset (merge order).
            tensors: name -> tensor for this example (optional).
            record: JSON-able per-example data (optional).
            key: file-name-safe key (default: `example_key(index)`).
        """
        key = example_key(index) if key is None else key
        if not _KEY_PATTERN.match(key):
            raise InputError(f"example key {key!r} is not a safe file name; use letters, digits, '.', '_', '-'")
        files = []
        if tensors:
            self.write_tensors(f"{EXAMPLES_DIR}/{key}.safetensors", tensors, {"key": key, "index": index})
            files.append(f"{EXAMPLES_DIR}/{key}.safetensors")
        self.write_json(f"{EXAMPLES_DIR}/{key}.json", {"key": key, "index": index, "record": record})
        files.append(f"{EXAMPLES_DIR}/{key}.json")
        self._append_ledger({"key": key, "index": index, "files": files})
        return key

    def ledger_entries(self) -> list[dict[str, Any]]:
        """Every finished example of every rank (later lines win for a repeated key), whose files exist."""
        entries: dict[str, dict[str, Any]] = {}
        progress = self.path / PROGRESS_DIR
        if not progress.is_dir():
            return []
        for ledger in sorted(progress.glob("rank-*.jsonl")):
            for line in ledger.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash: that example is not done
                if isinstance(entry, dict) and "key" in entry and "index" in entry:
                    entries[entry["key"]] = entry
        return [entry for entry in entries.values()
                if all((self.path / name).exists() for name in entry.get("files", []))]

    def done_keys(self) -> set[str]:
        """Keys of the examples finished by any rank (a resumed run skips these)."""
        return {entry["key"] for entry in self.ledger_entries()}

    def done_indices(self) -> set[int]:
        """Indices of the examples finished by any rank."""
        return {int(entry["index"]) for entry in self.ledger_entries()}

    def read_example(self, key: str) -> tuple[dict[str, torch.Tensor], Any]:
        """The tensors and record stored for example `key`."""
        info = self.read_json(f"{EXAMPLES_DIR}/{key}.json")
        tensor_file = f"{EXAMPLES_DIR}/{key}.safetensors"
        tensors = self.read_tensors(tensor_file)[0] if self.exists(tensor_file) else {}
        return tensors, info.get("record")

    def _ledger_path(self) -> Path:
        return self.path / PROGRESS_DIR / f"rank-{self.rank:05d}-of-{self.world:05d}.jsonl"

    def _append_ledger(self, entry: dict[str, Any]) -> None:
        ledger = self._ledger_path()
        ledger.parent.mkdir(parents=True, exist_ok=True)
        with open(ledger, "a+b") as handle:
            if not self._ledger_checked:
                # A crash mid-append can leave a cut line; start ours on a fresh line.
                handle.seek(0, os.SEEK_END)
                if handle.tell() > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        handle.write(b"\n")
                self._ledger_checked = True
            handle.write((json.dumps(entry, separators=(",", ":")) + "\n").encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
