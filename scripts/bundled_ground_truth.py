"""The bundled model's ground truth, as written in MODEL_CARD.md and the README (CPU, a few minutes).

1. locate each colour's and shape's neurons by contribution on held-out captions (``find_multimodal_neurons``);
2. suppress each concept's top-k neurons while captioning (``concept_removal``), against random neurons with the
   same number per layer: the concept's rate in the captions of its images, and the other words' rates;
3. QRNCA on the model's own multiple-choice questions in five domains (``run_qrnca_domains(source="shapes")``).

    python scripts/bundled_ground_truth.py --out results/bundled [--model DIR]
    python scripts/bundled_ground_truth.py --out results/bundled --per-word-only   # specificity per word's images
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    from bundled_sweep import score_neurons  # scripts/ is on the path when run as ``python scripts/...``
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from neuronscope.bundled import SHAPES_VLM_PATH
    from neuronscope.models.loading import LoadedModel
    from neuronscope.workflows.papers.qrnca import run_qrnca_domains

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=str(SHAPES_VLM_PATH))
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 30, 100, 300])
    parser.add_argument("--random", type=int, default=3)
    parser.add_argument("--qrnca-per-domain", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--per-word-only", action="store_true",
                        help="only the suppression table with each other word's rate over the images that show it "
                             "(suppression_per_word.json); no QRNCA")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model = LlavaForConditionalGeneration.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    records = score_neurons(model, processor, args.images, args.ks, n_random=args.random,
                            per_word=args.per_word_only)
    name = "suppression_per_word.json" if args.per_word_only else "suppression.json"
    (out / name).write_text(json.dumps(records, indent=1) + "\n")
    if args.per_word_only:
        return
    for record in records:
        print(record, flush=True)
    seconds_removal = time.time() - started

    loaded = LoadedModel(model, processor, source=args.model)
    metrics = run_qrnca_domains(out / "qrnca_run", model=loaded, source="shapes", limit=args.qrnca_per_domain,
                                per_domain_screened=2 * args.qrnca_per_domain, min_correct=2, n_random=3,
                                n_unrelated=4)  # fmt: skip
    summary = {"model": args.model, "images": args.images, "ks": args.ks, "random_draws": args.random,
               "seconds_suppression": round(seconds_removal, 1), "qrnca": {
                   "n_queries": metrics["n_queries"], "queries_per_domain": metrics["queries_per_domain"],
                   "screening": metrics["screening"], "pcr_mean": metrics["pcr_mean"],
                   "prediction": metrics["prediction"], "wall_time": metrics["wall_time"]},
               "seconds": round(time.time() - started, 1), "torch": torch.__version__}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(json.dumps(summary["qrnca"], indent=1, default=str))


if __name__ == "__main__":
    main()
