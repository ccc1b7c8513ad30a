"""Where a slot-decoding call's time goes (CUDA): the multimodal table's streaming call at one batch through each
of several slot counts, with the packed calls timed by CUDA events, the host's share of each part, and whether the
calls replayed from a graph.

    python benchmarks/profile_slots.py 16 3 4 5
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

import bench_multimodal
import torch

from neuronscope.trace import slot_decode


def main() -> None:
    size, counts = int(sys.argv[1]), [int(v) for v in sys.argv[2:]] or [4]
    model, processor = bench_multimodal.build(False, torch.device("cuda"), torch.bfloat16)
    images = bench_multimodal._images(size, 336)
    host: dict[str, float] = defaultdict(float)
    calls = defaultdict(int)

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                host[name] += time.perf_counter() - start
                calls[name] += 1
        return wrapper

    slot_decode._Run.admit = timed("admit (embeddings, pool)", slot_decode._Run.admit)
    slot_decode._Run.park = timed("park", slot_decode._Run.park)
    slot_decode.capture = timed("capture", slot_decode.capture)
    replays = []
    original_replay = torch.cuda.CUDAGraph.replay

    def replay(graph):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        original_replay(graph)
        end.record()
        replays.append((start, end))

    torch.cuda.CUDAGraph.replay = replay
    kept = {}
    original_run = slot_decode._Run.run

    def run(self, graphs):
        kept["run"] = self
        return original_run(self, graphs)

    slot_decode._Run.run = run
    for slots in counts:
        bench_multimodal.streaming_call(model, processor, images, False, slots=slots)
        torch.cuda.synchronize()
        host.clear(), calls.clear(), replays.clear()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        bench_multimodal.streaming_call(model, processor, images, False, slots=slots)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
        device = [s.elapsed_time(e) for s, e in replays]
        print(f"batch {size} slots {slots}: wall {wall * 1e3:.1f} ms, {len(device)} replays, device per replay "
              f"median {sorted(device)[len(device) // 2] if device else 0:.2f} ms, sum {sum(device):.1f} ms; "
              f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
        for name, seconds in host.items():
            print(f"    host {name}: {seconds * 1e3:.1f} ms over {calls[name]} calls", flush=True)
    packed = kept["run"].packed  # one more packed call, eager, under the profiler: the device's kernels
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        packed()
        torch.cuda.synchronize()
    print(profile.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=90))


if __name__ == "__main__":
    main()
