"""Data-parallel shards and the resumable example loop.

Process `rank` of `world` handles examples `i` with `i % world == rank` (`shard_indices`), writing each into the
shared run folder (`RunDir.write_example`, distinct files per example). `merge_shards` then reads every rank's
ledger and merges the examples in example order, so the merged result is the same whatever the number of
processes and however often the run was interrupted and resumed.

Merged tensors: for each tensor name, if every example has the same shape the tensors are stacked into
`[n_examples, *shape]`; otherwise they are concatenated along dim 0 and `<name>.offsets` (int64 `[n + 1]`) says
where each example's rows start and end. Examples that lack a tensor name are an error.

Example:
    >>> import tempfile, torch
    >>> folder = tempfile.mkdtemp() + "/run"
    >>> for rank in range(2):  # normally two processes, each with its own rank
    ...     run = RunDir(folder, rank=rank, world=2)
    ...     for i in shard_indices(5, rank, 2):
    ...         _ = run.write_example(i, {"y": torch.tensor([float(i * i)])})
    >>> merge_shards(folder, expected=5).tensors["y"].flatten().tolist()
    [0.0, 1.0, 4.0, 9.0, 16.0]
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from neuronscope.errors import InputError
from neuronscope.runs.folder import RunDir

Example = TypeVar("Example")


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """The example indices process `rank` of `world` handles: `i % world == rank`, ascending.

    Example:
        >>> shard_indices(7, 1, 3)
        [1, 4]
    """
    if n < 0:
        raise InputError(f"number of examples must be >= 0, got {n}")
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"rank {rank} of world {world} is impossible; need world >= 1 and 0 <= rank < world")
    return list(range(rank, n, world))


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place in a data-parallel launch (all 0 / 1 when launched alone)."""

    rank: int
    world: int
    local_rank: int


def detect_rank_world(env: Mapping[str, str] | None = None) -> ProcessInfo:
    """Rank and world size from the environment of torchrun / accelerate (RANK, WORLD_SIZE, LOCAL_RANK).

    Falls back to LOCAL_RANK / LOCAL_WORLD_SIZE when RANK is absent, and to a single process when nothing is
    set.

    Example:
        >>> detect_rank_world({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})
        ProcessInfo(rank=2, world=4, local_rank=0)
    """
    env = os.environ if env is None else env

    def number(name: str, default: int) -> int:
        value = env.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise InputError(f"environment variable {name}={value!r} is not an integer; fix the launcher "
                             "settings (torchrun / accelerate set it)") from None

    local_rank = number("LOCAL_RANK", 0)
    if "RANK" in env:
        rank, world = number("RANK", 0), number("WORLD_SIZE", 1)
    else:
        rank, world = local_rank, number("LOCAL_WORLD_SIZE", number("WORLD_SIZE", 1))
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK={rank} and WORLD_SIZE={world} from the environment are impossible; need "
                         "0 <= RANK < WORLD_SIZE")
    return ProcessInfo(rank, world, local_rank)


@dataclass
class MergedExamples:
    """All examples of a run in example order; see the module docstring for the tensor layout."""

    indices: list[int]
    keys: list[str]
    tensors: dict[str, torch.Tensor]
    records: list[Any]


def merge_shards(run: RunDir | str | os.PathLike[str], *, expected: int | None = None,
                 name: str = "merged") -> MergedExamples:
    """Merge every rank's examples in example order and write `<name>.safetensors` and `<name>.json`.

    Args:
        run: the run folder (or its path).
        expected: number of examples the run should have (default: do not check); indices 0..expected-1
            must all be present.
        name: base name of the merged files (default "merged").

    Raises:
        InputError: missing examples (with their indices), two keys for one index, or tensors that cannot be
            merged.
    """
    run = run if isinstance(run, RunDir) else RunDir.open(run)
    entries = sorted(run.ledger_entries(), key=lambda entry: int(entry["index"]))
    indices = [int(entry["index"]) for entry in entries]
    duplicates = sorted(index for index, count in Counter(indices).items() if count > 1)
    if duplicates:
        raise InputError(f"{run.path}: examples {duplicates} were stored under two keys each; rerun them with one "
                         "key scheme (overwrite the run)")
    if expected is not None:
        missing = sorted(set(range(expected)) - set(indices))
        extra = sorted(set(indices) - set(range(expected)))
        if missing or extra:
            shown = ", ".join(str(i) for i in missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise InputError(f"{run.path}: {len(missing)} of {expected} examples are not done ({shown})"
                             f"{f' and indices {extra[:20]} are out of range' if extra else ''}; resume the run "
                             "(with the same number of processes or any other) to finish them")
    if not entries:
        raise InputError(f"{run.path}: no finished examples to merge; run the example loop first")
    per_example = [run.read_example(entry["key"]) for entry in entries]
    names = sorted({tensor_name for tensors, _ in per_example for tensor_name in tensors})
    merged: dict[str, torch.Tensor] = {}
    layout: dict[str, str] = {}
    for tensor_name in names:
        lacking = [entry["key"] for entry, (tensors, _) in zip(entries, per_example, strict=True) if tensor_name not in tensors]
        if lacking:
            raise InputError(f"{run.path}: tensor '{tensor_name}' is missing from examples {lacking[:10]}; every "
                             "example must store the same tensor names")
        parts = [tensors[tensor_name] for tensors, _ in per_example]
        if all(part.shape == parts[0].shape for part in parts):
            merged[tensor_name] = torch.stack(parts)
            layout[tensor_name] = "stacked"
        else:
            if any(part.dim() == 0 or part.shape[1:] != parts[0].shape[1:] for part in parts):
                raise InputError(f"{run.path}: tensor '{tensor_name}' has shapes that differ beyond dim 0 "
                                 f"({sorted({tuple(p.shape) for p in parts})[:5]}); store it padded to one shape")
            merged[tensor_name] = torch.cat(parts)
            lengths = torch.tensor([0] + [part.shape[0] for part in parts], dtype=torch.int64)
            merged[f"{tensor_name}.offsets"] = torch.cumsum(lengths, 0)
            layout[tensor_name] = "concatenated"
    keys = [entry["key"] for entry in entries]
    records = [record for _, record in per_example]
    summary = {"indices": indices, "keys": keys, "layout": layout}
    if merged:
        run.write_tensors(f"{name}.safetensors", merged, summary)
    run.write_json(f"{name}.json", {**summary, "records": records})
    return MergedExamples(indices, keys, merged, records)
