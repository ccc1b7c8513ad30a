"""Run every benchmark and write one JSON per table into a folder: the Llama-2-7B tables in one process (one model
built once), the multimodal and MoE tables on a GPU each in a fresh process of its own (what a table leaves
allocated cannot weigh on their memory columns; in the 01:42 UTC 2026-12-02 run ~100 GB was still allocated when
the multimodal table started in the same process).

    python benchmarks/run_all.py OUT                 # CUDA (one H200: ~5-7 minutes; multimodal skipped: 400 s)
    python benchmarks/run_all.py OUT --only multimodal --budget 560   # its compilations: ~9 minutes alone
    python benchmarks/run_all.py OUT --tiny          # CPU smoke test of every table, seconds
    python benchmarks/run_all.py OUT --smollm2       # CPU figures on SmolLM2-135M-Instruct, 1 thread

Tables: ``environment.json`` (machine, versions, date), ``checks.json`` (each fast path against its plain oracle
in float32 on this device, Triton and compiled kernels included: the tests run on CPUs only), ``contribution.json``, ``integrated_gradients.json``,
``peers.json`` (all three on one Llama-2-7B-shaped bf16 model built once), ``lpi.json`` (one-layer models at
V = 32k and 128k), ``multimodal.json`` (LLaVA-1.5-7B shape), and ``run.json`` (seconds per table, tables skipped
for lack of time, errors). A table that fails is recorded in ``run.json`` and the others still run; before each
table the remaining time (``--budget`` seconds, default 470) is checked against its usual cost on an H200, and a
table that would not fit is skipped and said so.

nnsight and TransformerLens are optional (their rows say "not installed" without them); put their wheels on
``PYTHONPATH`` or install them for ``peers.json``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import bench_checks
import bench_contribution
import bench_integrated_gradients
import bench_lpi
import bench_moe
import bench_multimodal
import bench_peers
import torch
from common import LLAMA2_7B, build_llama, device, environment, free, parser, write_table

# usual cost of each table on one H200 (seconds), to skip what cannot finish within the budget: the run of
# 2026-12-02 03:36 UTC took 19-44 s per Llama table, 82 s for the multimodal table (before its compiled rows, which
# add two compilations of about 40 s and their pairs; with the prompt compiled too, 2026-12-03, over 300 s) and 36 s
# for the MoE table
COST = {"checks": 60, "contribution": 40, "integrated_gradients": 60, "peers": 60, "lpi": 40, "multimodal": 400,
        "moe": 90}
ISOLATED = ("multimodal", "moe")  # on a GPU: each in a fresh process


def _in_own_process(args: argparse.Namespace, name: str, left: float, log: dict[str, Any]) -> None:
    """Run table ``name`` as ``run_all.py OUT --only name`` in a child process and merge its ``run.json``."""
    command = [sys.executable, __file__, str(args.out), "--only", name, "--budget", str(max(left, COST[name])),
               "--in-process", "--threads", str(args.threads)] + ["--tiny"] * bool(args.tiny)
    done = subprocess.run(command, check=False)
    try:
        child = json.loads((Path(args.out) / "run.json").read_text())
    except (OSError, ValueError):
        child = {}
    log["seconds"].update(child.get("seconds", {}))
    log["errors"].update(child.get("errors", {}))
    log["skipped"] += child.get("skipped", [])
    if done.returncode and name not in log["errors"]:
        log["errors"][name] = f"its process exited with {done.returncode}"


class TableTimeout(Exception):
    """A table ran out of its time."""


def _out_of_time(signum, frame) -> None:
    raise TableTimeout("the table ran out of its time (see COST in benchmarks/run_all.py)")


def main() -> None:
    arguments: argparse.ArgumentParser = parser(__doc__.splitlines()[0])
    arguments.add_argument("--budget", type=float, default=470.0, help="seconds for all tables (default 470)")
    arguments.add_argument("--only", nargs="*", default=None, help="run only these tables")
    arguments.add_argument("--in-process", action="store_true", help="run every table in this process")
    args = arguments.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    env = environment()
    write_table(args.out, "environment", env)
    log: dict[str, Any] = {"seconds": {}, "skipped": [], "errors": {}, "mode": "tiny" if args.tiny else
                           "smollm2" if args.smollm2 else "gpu"}
    cpu_mode = args.tiny or args.smollm2
    tables = [("checks", bench_checks), ("contribution", bench_contribution), ("integrated_gradients", bench_integrated_gradients),
              ("peers", bench_peers), ("lpi", bench_lpi), ("multimodal", bench_multimodal), ("moe", bench_moe)]
    if args.smollm2:  # the laptop user's tables
        tables = [t for t in tables if t[0] in ("checks", "contribution", "integrated_gradients", "peers", "lpi")]
    if args.only:
        tables = [t for t in tables if t[0] in args.only]
    shared = None
    if not cpu_mode and any(name in ("contribution", "integrated_gradients", "peers", "lpi") for name, _ in tables):
        shared = build_llama(LLAMA2_7B, torch.bfloat16, device())  # built once for the four tables
    args.shared_model = shared
    for name, module in tables:
        left = args.budget - (time.perf_counter() - start)
        if not cpu_mode and left < COST[name]:
            log["skipped"].append({"table": name, "seconds_left": left, "usual_cost": COST[name]})
            continue
        if name == "multimodal" and shared is not None:  # the 7B model is not needed any more
            args.shared_model = shared = None
            free()
        if not cpu_mode and not args.in_process and name in ISOLATED:
            _in_own_process(args, name, left, log)
            print(f"{name}: {log['seconds'].get(name, 0.0):.1f} s (own process)"
                  f"{' (error)' if name in log['errors'] else ''}", flush=True)
            continue
        began = time.perf_counter()
        if not cpu_mode:  # a table that hangs past three times its usual cost (or the budget) is stopped
            signal.signal(signal.SIGALRM, _out_of_time)
            signal.alarm(max(1, int(min(left, 3 * COST[name]))))
        args.partial = {}  # a table that fills this as it goes keeps what it measured if it fails or runs out
        try:
            table = module.run(args)
            write_table(args.out, name, {"environment": env, **table})
        except Exception as error:  # noqa: BLE001 - one failing table must not lose the others
            log["errors"][name] = f"{type(error).__name__}: {error}\n" + traceback.format_exc()[-3000:]
            if args.partial:
                write_table(args.out, name, {"environment": env, **args.partial,
                                             "incomplete": f"{type(error).__name__}: {error}"[:300]})
        finally:
            signal.alarm(0)
        log["seconds"][name] = time.perf_counter() - began
        print(f"{name}: {log['seconds'][name]:.1f} s{' (error)' if name in log['errors'] else ''}", flush=True)
        free()
    log["total_seconds"] = time.perf_counter() - start
    print(write_table(args.out, "run", log))


if __name__ == "__main__":
    main()
