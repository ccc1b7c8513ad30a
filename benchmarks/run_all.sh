#!/usr/bin/env bash
# Run every benchmark on a CUDA machine and write one JSON line per benchmark into $OUT (or ./benchmark-results).
# Usage (from the repository root): bash benchmarks/run_all.sh
set -u
OUT=${OUT:-benchmark-results}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" >> "$OUT/gpu.txt"
run() {  # name, timeout, command...
    local name=$1 limit=$2; shift 2
    echo "== $name" >&2
    timeout "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log" || echo "{\"error\": \"$name failed or timed out\"}" >> "$OUT/$name.json"
    tail -c 2000 "$OUT/$name.json" >&2
}
run contribution 120 python3 benchmarks/bench_contribution.py --layers 32 --batch 8 --length 128
run integrated_gradients 200 python3 benchmarks/bench_integrated_gradients.py --layers 32 --steps 20
run lpi 100 python3 benchmarks/bench_lpi.py --rows 1
run multimodal 180 python3 benchmarks/bench_multimodal.py --images 16 --batch 8 --tokens 20 --reference-images 2
run moe 600 python3 benchmarks/bench_moe.py
