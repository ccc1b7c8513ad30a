"""``python -m neuronscope.recipes --out DIR [--only a,b] [--limit N]``: run every recipe in one process.

Each recipe writes ``DIR/<name>/``; the model is loaded once. Failures of one recipe are reported and the others
still run; ``DIR/all_metrics.json`` collects every recipe's metrics (or its error).
"""

from __future__ import annotations

import argparse
import json
import traceback
from pathlib import Path

import torch

from neuronscope.recipes import RECIPES, get_recipe
from neuronscope.recipes.common import default_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the papers' text-model experiments on SmolLM2")
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default=",".join(RECIPES), help=f"comma-separated subset of {', '.join(RECIPES)}")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = default_model()
    collected = {}
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        try:
            collected[name] = get_recipe(name)(out / name, model=loaded, limit=args.limit, seed=args.seed)
            print(f"[recipes] {name}: done in {collected[name].get('wall_time', {}).get('total_s')} s", flush=True)
        except Exception as error:  # one failing recipe must not stop the others
            collected[name] = {"error": f"{type(error).__name__}: {error}"}
            traceback.print_exc()
        (out / "all_metrics.json").write_text(json.dumps(collected, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
