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

from neuronscope.attribute.streaming import caption_contributions
from neuronscope.inputs import encode_images


def streaming(model, processor, images) -> None:
    batch = encode_images(processor, images, "Describe the image in few words.", assistant_prefix="An image of")
    caption_contributions(model, processor, batch, max_new_tokens=20, top_k=10_000,
                          select=lambda generation: [[0, 1, 2]] * generation.tokens.shape[0],
                          min_new_tokens=20, suppress_tokens=[4])


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "this"
    model, processor = bench_multimodal.build(False, torch.device("cuda"), torch.bfloat16)
    for size in (4, 16):
        images = bench_multimodal._images(size, 336)
        streaming(model, processor, images)
        torch.cuda.synchronize()
        walls = []
        for _ in range(5):
            start = time.perf_counter()
            streaming(model, processor, images)
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - start)
        print(f"{label} batch {size} best {min(walls) * 1e3:.1f} median {statistics.median(walls) * 1e3:.1f} ms",
              flush=True)


if __name__ == "__main__":
    main()
