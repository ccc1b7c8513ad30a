"""Data-parallel shards: index split, rank detection, and merged result == single-process result."""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch

from helpers.loops import each
from neuronscope.errors import InputError
from neuronscope.runs import ProcessInfo, RunDir, detect_rank_world, merge_shards, shard_indices


def test_shard_indices_partition():
    for n in range(0, 12):
        for world in range(1, 5):
            shards = [shard_indices(n, rank, world) for rank in range(world)]
            assert sorted(i for shard in shards for i in shard) == list(range(n))
            assert all(i % world == rank for rank, shard in enumerate(shards) for i in shard)
    with pytest.raises(InputError, match="rank 3 of world 3 is impossible"):
        shard_indices(5, 3, 3)


def test_detect_rank_world():
    assert detect_rank_world({}) == ProcessInfo(rank=0, world=1, local_rank=0)
    info = detect_rank_world({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert (info.rank, info.world, info.local_rank) == (5, 8, 1)
    info = detect_rank_world({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (info.rank, info.world, info.local_rank) == (1, 2, 1)
    with pytest.raises(InputError, match="RANK='x' is not an integer"):
        detect_rank_world({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(InputError, match="RANK=2 and WORLD_SIZE=2 from the environment are impossible"):
        detect_rank_world({"RANK": "2", "WORLD_SIZE": "2"})


def compute(index: int, text: str) -> tuple[dict[str, torch.Tensor], dict]:
    generator = torch.Generator().manual_seed(100 + index)
    return {"scores": torch.randn(3, 4, generator=generator), "n": torch.tensor(len(text))}, {"text": text}


TEXTS = [f"example {i}" for i in range(11)]


def single_process_reference(tmp_path):
    run = RunDir(tmp_path / "single")
    each(run, TEXTS, compute)
    return merge_shards(run, expected=len(TEXTS))


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_equals_single(tmp_path, world):
    reference = single_process_reference(tmp_path)
    # Start the higher ranks first: rank 0 must accept a fresh folder that they already write into.
    for rank in reversed(range(world)):
        run = RunDir(tmp_path / "sharded", rank=rank, world=world)
        assert each(run, TEXTS, compute) == shard_indices(len(TEXTS), rank, world)
    ledgers = sorted(p.name for p in (tmp_path / "sharded/progress").iterdir())
    assert ledgers == [f"rank-{r:05d}-of-{world:05d}.jsonl" for r in range(world)]
    merged = merge_shards(tmp_path / "sharded", expected=len(TEXTS))
    assert merged.indices == list(range(len(TEXTS)))
    assert merged.records == reference.records
    for name in ("scores", "n"):
        assert torch.equal(merged.tensors[name], reference.tensors[name])
    assert (tmp_path / "sharded/merged.safetensors").read_bytes() == \
        (tmp_path / "single/merged.safetensors").read_bytes()


def _worker(path: str, rank: int, world: int) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    info = detect_rank_world()
    run = RunDir(path, rank=info.rank, world=info.world)
    each(run, TEXTS, compute)


def test_real_processes_equal_single(tmp_path):
    reference = single_process_reference(tmp_path)
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_worker, args=(str(tmp_path / "mp"), rank, 2)) for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    merged = merge_shards(tmp_path / "mp", expected=len(TEXTS))
    assert torch.equal(merged.tensors["scores"], reference.tensors["scores"])


def test_resume_with_another_world_size(tmp_path):
    reference = single_process_reference(tmp_path)
    # Two ranks; rank 1 dies after its first example.
    each(RunDir(tmp_path / "run", rank=0, world=2), TEXTS, compute)

    def dies(index, text):
        if index > 1:
            raise RuntimeError("preempted")
        return compute(index, text)

    with pytest.raises(RuntimeError):
        each(RunDir(tmp_path / "run", rank=1, world=2), TEXTS, dies)
    # Finish with three processes instead: only the missing odd examples are computed.
    computed = []
    for rank in range(3):
        computed += each(RunDir(tmp_path / "run", resume=True, rank=rank, world=3), TEXTS, compute)
    assert sorted(computed) == [3, 5, 7, 9]
    merged = merge_shards(tmp_path / "run", expected=len(TEXTS))
    assert torch.equal(merged.tensors["scores"], reference.tensors["scores"])


def test_ranks_refuse_and_overwrite(tmp_path):
    for rank in range(2):
        each(RunDir(tmp_path / "run", rank=rank, world=2), TEXTS[:4], compute)
    for rank in range(2):
        with pytest.raises(InputError, match="already holds results"):
            RunDir(tmp_path / "run", rank=rank, world=2)
    for rank in range(2):
        RunDir(tmp_path / "run", rank=rank, world=2, overwrite=True)
    assert RunDir.open(tmp_path / "run").done_keys() == set()
    with pytest.raises(InputError, match="no finished examples"):
        merge_shards(tmp_path / "run")
