"""GPU smoke run of ``neuronscope locate``: one process vs a torchrun data-parallel launch, and a real
out-of-memory back-off, on a random Llama built locally (no downloads). Run it on a machine with GPUs.

    PYTHONPATH=src python scripts/dp_smoke.py /tmp/smoke --prompts 64 --words 200

Steps (each a separate process, as a user would run them):
1. ``locate`` in one process (bf16, batch 16) on GPU 0;
2. ``torchrun --nproc-per-node G`` with G = the visible GPUs (2 processes sharing GPU 0 on a one-GPU machine):
   each rank scores its shard on its own GPU, rank 0 merges; the scores must equal step 1's up to the rounding
   of the dtype (the batches are composed differently, so padding and matmul shapes differ);
3. ``locate`` with batch 64 in a process whose CUDA allocator may use only the model plus ``--headroom-gb``:
   a real ``torch.OutOfMemoryError`` must halve the batch until it fits, and the scores must equal step 1's.

Prints a JSON summary (times, batch back-offs, max differences) and writes it to ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path


def build_model(folder: Path, hidden: int, layers: int, d_ff: int, vocab_words: int) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "<s>": 2, "</s>": 3}
    for i in range(vocab_words):
        vocab[f"w{i}"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 128, num_key_value_heads=hidden // 256,
                         intermediate_size=d_ff, max_position_embeddings=4096, pad_token_id=1, bos_token_id=2,
                         eos_token_id=3)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_prompts(path: Path, n: int, words: int, vocab_words: int) -> None:
    rng = random.Random(0)
    with open(path, "w") as handle:
        for i in range(n):
            length = rng.randint(words // 2, words)
            text = " ".join(f"w{rng.randrange(vocab_words)}" for _ in range(length))
            target = "prediction" if i % 3 == 0 else f"w{rng.randrange(vocab_words)}"
            handle.write(json.dumps({"prompt": text, "target": target}) + "\n")


def run(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        print(completed.stdout[-4000:], completed.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"failed: {' '.join(command)}")
    return seconds, completed.stderr


def limited_cli(fraction_of: float, arguments: list[str]) -> None:
    """Run the CLI with the CUDA allocator capped at ``fraction_of`` GB (a small GPU, for real OOMs)."""
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, fraction_of * 1e9 / total), 0)
    from neuronscope.cli.main import app

    app(arguments, standalone_mode=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--limited-cli":
        limited_cli(float(sys.argv[2]), sys.argv[3:])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d-ff", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--headroom-gb", type=float, default=2.0)
    parser.add_argument("--dtype", default="bf16", help="dtype the CLI loads the model in (bf16, fp32)")
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file

    args.out.mkdir(parents=True, exist_ok=True)
    model_dir, prompts = args.out / "model", args.out / "prompts.jsonl"
    build_model(model_dir, args.hidden, args.layers, args.d_ff, args.vocab)
    write_prompts(prompts, args.prompts, args.words, args.vocab)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "neuronscope.cli.main"]
    common = ["locate", "-m", str(model_dir), "--prompts", str(prompts), "--dtype", args.dtype, "--top-k", "50"]
    summary: dict = {"gpus": torch.cuda.device_count(), "device": torch.cuda.get_device_name(0),
                     "model": {"hidden": args.hidden, "layers": args.layers, "d_ff": args.d_ff,
                               "vocab": args.vocab}, "prompts": args.prompts, "words": args.words,
                     "dtype": args.dtype}

    seconds, _ = run(cli + common + ["--batch-size", "16", "--out", str(args.out / "single")], env)
    summary["single_process_s"] = round(seconds, 2)
    single = load_file(str(args.out / "single" / "scores.safetensors"))["values"].float()

    def compare(name: str) -> dict:
        other = load_file(str(args.out / name / "scores.safetensors"))["values"].float()
        def top10(run: str) -> list[list[str]]:  # (layer, index) of the 10 best; the score column is compared above
            return [line.split(",")[1:3] for line in (args.out / run / "neurons.csv").read_text().splitlines()[1:11]]

        same_neurons = top10("single") == top10(name)
        scale = single.abs().max().item()
        return {"max_abs_diff": (other - single).abs().max().item(), "max_abs_score": scale,
                "top10_same": same_neurons}

    gpus = torch.cuda.device_count()
    if gpus >= 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(max(2, gpus)),
                    "-m", "neuronscope.cli.main"]
        seconds, _ = run(launcher + common + ["--batch-size", "16", "--out", str(args.out / "parallel")], env)
        summary["data_parallel_s"] = round(seconds, 2)
        summary["data_parallel_vs_single"] = compare("parallel")
        summary["ledgers"] = sorted(p.name for p in (args.out / "parallel" / "progress").iterdir())

    model_gb = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 1e9  # saved in bf16
    model_gb *= 2 if args.dtype in ("fp32", "float32") else 1
    cap = model_gb + args.headroom_gb
    seconds, stderr = run([sys.executable, __file__, "--limited-cli", str(cap)] + common
                          + ["--batch-size", "64", "--out", str(args.out / "small_gpu")], env)
    summary["small_gpu"] = {"cap_gb": round(cap, 2), "seconds": round(seconds, 2),
                            "backoffs": [line for line in stderr.splitlines() if "out of memory" in line],
                            **compare("small_gpu")}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
