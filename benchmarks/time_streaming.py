"""Wall time of the multimodal table's streaming call (encode, caption, score; as profile_paths runs it) at batch 4
and 16, best and median of 5 after one warm-up call, printed with a label: for A/B runs of two versions of the code
in alternating processes (CUDA).

    python benchmarks/time_streaming.py new                       # this checkout
    git archive REV src | tar -x -C /tmp/old && PYTHONPATH=/tmp/old/src:benchmarks python benchmarks/time_streaming.py old
"""

from __future__ import annotations

import statistics
import sys
import time

import bench_multimodal
import torch


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "this"
    model, processor = bench_multimodal.build(False, torch.device("cuda"), torch.bfloat16)
    for size in (4, 16):
        images = bench_multimodal._images(size, 336)
        bench_multimodal.streaming_call(model, processor, images, False)
        torch.cuda.synchronize()
        walls = []
        for _ in range(5):
            start = time.perf_counter()
            bench_multimodal.streaming_call(model, processor, images, False)
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - start)
        print(f"{label} batch {size} best {min(walls) * 1e3:.1f} median {statistics.median(walls) * 1e3:.1f} ms",
              flush=True)


if __name__ == "__main__":
    main()
