"""In-context heads of SmolLM2-135M-Instruct (Yu & Ananiadou, EMNLP 2024) on CPU, one thread, ~10-20 minutes.

    PYTHONPATH=src python scripts/icl_smollm2.py ../shared/data/icl --out results/icl

Steps (docs/ICL.md says what each figure is):
1. ICL accuracy on SST-2 with natural labels (negative/positive) and unrelated ones (foo/bar), k-shot balanced
   prompts in random order; the label kind the mechanism is studied on is the one with the higher accuracy on the
   locate prompts (``--label-kind auto``), or the one asked for;
2. locate in-context heads on the locate prompts: LPI of each head's last-position output for the predicted label,
   and last-position ablation, per predicted class;
3. on disjoint evaluation prompts: accuracy with the top 1 % / 2 % heads of each ranking zeroed at the last
   position, against as many random heads (``--draws`` draws);
4. per-demonstration projection (attention, logit minus, LPI at each label position) of the top heads;
5. two towers (attention vs query/key and embedding similarity) and the shallow merge into label positions;
6. majority-label bias (3:1 and 1:3 label mixes, same queries) and recency bias (label-sorted and reverse-sorted
   orders of the same demonstrations), before and after re-weighting the top heads' attention to the label
   positions, against the same re-weighting of random heads;
7. AG News accuracy (natural and unrelated labels), unless ``--agnews 0``.

Writes ``summary.json`` (every figure and the wall time of each step) and each result's own JSON file in ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from neuronscope.attribute.icl_bias import (
    label_attention,
    majority_classes,
    majority_factors,
    measure_bias,
    recency_factors,
    recent_classes,
)
from neuronscope.attribute.icl_heads import (
    ablation_condition,
    accuracy_from_log_probabilities,
    head_count,
    label_log_probabilities,
    locate_in_context_heads,
    random_heads,
)
from neuronscope.attribute.icl_projection import attribute_head_positions
from neuronscope.attribute.icl_towers import label_merge, two_towers
from neuronscope.inputs.icl import (
    TOPIC_TEMPLATE,
    encode_icl,
    label_words_for,
    read_icl_dataset,
    reorder,
    sample_prompts,
)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", help="the data/icl folder (sst2_872.tsv, agnews_test_7600.tsv)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--shots", type=int, default=4, help="demonstrations per prompt (balanced)")
    parser.add_argument("--n-locate", type=int, default=32)
    parser.add_argument("--n-eval", type=int, default=80)
    parser.add_argument("--n-eval-other", type=int, default=48, help="evaluation prompts of the other label kind")
    parser.add_argument("--n-bias", type=int, default=40, help="queries per bias experiment (x2 prompts)")
    parser.add_argument("--n-attribution", type=int, default=16)
    parser.add_argument("--n-merge", type=int, default=12)
    parser.add_argument("--agnews", type=int, default=32, help="AG News prompts per label kind (0: skip)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.02])
    parser.add_argument("--mitigate-fraction", type=float, default=0.02)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--label-kind", choices=["auto", "natural", "unrelated"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


@dataclass
class Run:
    """What the steps share: the model, the data, the arguments, the figures and the clock."""

    args: argparse.Namespace
    model: Any
    tokenizer: Any
    sst2: Any
    out: Path
    summary: dict = field(default_factory=dict)
    clock: float = field(default_factory=time.time)
    generator: torch.Generator = field(default_factory=torch.Generator)

    @property
    def sizes(self) -> tuple[int, int]:
        return self.model.config.num_hidden_layers, self.model.config.num_attention_heads

    @property
    def half(self) -> list[int]:
        return [self.args.shots // 2, self.args.shots - self.args.shots // 2]

    def words(self, kind: str) -> list[str]:
        return label_words_for(self.sst2, kind)

    def lap(self, name: str) -> None:
        now = time.time()
        self.summary.setdefault("timings_s", {})[name] = round(now - self.clock, 1)
        self.clock = now
        print(f"[{self.summary['timings_s'][name]:7.1f} s] {name}", flush=True)

    def encode(self, prompts: list) -> Any:
        """Encode prompts ordered by token length, so that each chunk of a batch is padded little."""
        ordered = sorted(prompts, key=lambda p: len(self.tokenizer(p.text)["input_ids"]))
        return encode_icl(self.tokenizer, ordered, model=self.model)

    def balanced(self, kind: str, n: int, seed: int, exclude=()) -> Any:
        return self.encode(sample_prompts(self.sst2, n_prompts=n, counts=self.half, label_words=self.words(kind),
                                          seed=seed, exclude=exclude))


def _probability_of_truth(log_probs: torch.Tensor, classes: torch.Tensor) -> float:
    return float(log_probs.softmax(-1).gather(1, classes[:, None]).mean())


def choose_label_kind(run: Run) -> tuple[str, Any]:
    """Step 1: accuracy of both label kinds on the locate prompts; the kind to study and its locate prompts."""
    sets, accuracy = {}, {}
    for kind in ("natural", "unrelated"):
        sets[kind] = run.balanced(kind, run.args.n_locate, run.args.seed + 1)
        scores = label_log_probabilities(run.model, sets[kind])["clean"]
        accuracy[kind] = accuracy_from_log_probabilities(scores, sets[kind].query_classes, run.words(kind)).as_dict()
    kind = run.args.label_kind
    if kind == "auto":
        kind = max(accuracy, key=lambda k: accuracy[k]["accuracy"])
    run.summary.update(locate_accuracy=accuracy, label_kind=kind)
    run.lap("accuracy on the locate prompts, label kind chosen")
    return kind, sets[kind]


def locate(run: Run, prompts: Any) -> tuple[Any, Any]:
    """Step 2: in-context heads by LPI and by last-position ablation."""
    by_lpi = locate_in_context_heads(run.model, prompts, method="lpi")
    by_lpi.save(run.out / "heads_lpi.json")
    run.lap("locate by LPI")
    by_ablation = locate_in_context_heads(run.model, prompts, method="ablation", chunk_size=16)
    by_ablation.save(run.out / "heads_ablation.json")
    run.lap("locate by ablation")
    most = max(head_count(f, *run.sizes) for f in run.args.fractions)
    run.summary["heads"] = {
        "lpi_top": by_lpi.top(most).tolist(), "ablation_top": by_ablation.top(most).tolist(),
        "lpi_per_label_top": [by_lpi.top(3, label=c).tolist() for c in range(2)],
        "ablation_per_label_top": [by_ablation.top(3, label=c).tolist() for c in range(2)],
        "counts_per_label": by_lpi.counts,
    }
    return by_lpi, by_ablation


def ablate(run: Run, kind: str, rankings: dict[str, Any], used: list[int]) -> None:
    """Step 3: accuracy with the top heads zeroed at the last position vs random heads; the other label kind."""
    evaluation = run.balanced(kind, run.args.n_eval, run.args.seed + 2, exclude=used)
    conditions = {"clean": lambda chunk: contextlib.nullcontext()}
    counts = [head_count(f, *run.sizes) for f in run.args.fractions]
    for n in counts:
        for name, ranking in rankings.items():
            conditions[f"{name}_top_{n}"] = ablation_condition(run.model, ranking.top(n))
        exclude = torch.cat([ranking.top(n) for ranking in rankings.values()])
        for draw in range(run.args.draws):
            heads = random_heads(n, *run.sizes, run.generator, exclude=exclude)
            conditions[f"random_{n}_{draw}"] = ablation_condition(run.model, heads)
    scores = label_log_probabilities(run.model, evaluation, conditions, chunk_size=16)
    figures = {}
    for name, value in scores.items():
        accuracy = accuracy_from_log_probabilities(value, evaluation.query_classes, run.words(kind), name)
        figures[name] = {"accuracy": accuracy.accuracy, "predicted_share": accuracy.predicted_share,
                         "p_true": _probability_of_truth(value, evaluation.query_classes)}
    for n in counts:
        randoms = [figures[f"random_{n}_{d}"]["accuracy"] for d in range(run.args.draws)]
        figures[f"random_{n}_summary"] = {"mean": sum(randoms) / len(randoms), "min": min(randoms),
                                          "max": max(randoms)}
    run.summary.update(ablation=figures, eval_accuracy={kind: figures["clean"]["accuracy"]})
    run.lap("ablation vs random heads on the evaluation prompts")
    other = "unrelated" if kind == "natural" else "natural"
    other_set = run.balanced(other, run.args.n_eval_other, run.args.seed + 2, exclude=used)
    value = label_log_probabilities(run.model, other_set)["clean"]
    accuracy = accuracy_from_log_probabilities(value, other_set.query_classes, run.words(other))
    run.summary["eval_accuracy"][other] = accuracy.accuracy
    run.summary["eval_accuracy_detail"] = {other: accuracy.as_dict()}
    run.lap("accuracy of the other label kind")


def mechanism(run: Run, prompts: Any, top: torch.Tensor) -> None:
    """Steps 4-5: per-demonstration projection, two towers, shallow merge."""
    attribution = attribute_head_positions(run.model, prompts.select(range(min(run.args.n_attribution,
                                                                                 len(prompts)))), top)
    attribution.save(run.out / "positions.json")
    run.summary["positions"] = {"heads": attribution.heads, "mean_by_class": attribution.mean_by_class,
                                "label_share": attribution.label_share,
                                "mass_output_correlation": attribution.mass_output_correlation}
    run.lap("per-position projection")
    towers = two_towers(run.model, prompts, top)
    towers.save(run.out / "towers.json")
    run.summary["towers"] = {"heads": towers.heads, "correlation": towers.correlation,
                             "same_label_attention": towers.same_label_attention,
                             "other_label_attention": towers.other_label_attention}
    merge = label_merge(run.model, prompts.select(range(min(run.args.n_merge, len(prompts)))))
    merge.save(run.out / "merge.json")
    run.summary["merge"] = merge.as_dict()
    run.lap("two towers and shallow merge")


def bias(run: Run, kind: str, calibration_prompts: Any, top: torch.Tensor, used: list[int]) -> None:
    """Step 6: majority-label and recency bias before/after re-weighting the top heads, vs random heads."""
    layers, heads = run.sizes
    calibration = label_attention(run.model, calibration_prompts)[0].view(len(calibration_prompts), layers, heads, -1)
    controls = [random_heads(len(top), layers, heads, run.generator, exclude=top) for _ in range(run.args.draws)]
    shots, words = run.args.shots, run.words(kind)
    major = 3 * shots // 4
    mixed = []
    for mix in ([major, shots - major], [shots - major, major]):  # the same queries under both mixes
        mixed += sample_prompts(run.sst2, n_prompts=run.args.n_bias, counts=mix, label_words=words,
                                seed=run.args.seed + 3, exclude=used)
    majority = run.encode(mixed)
    result = measure_bias(run.model, majority, majority_classes(majority.demo_classes, 2), top, kind="majority",
                          factors_for=lambda h: majority_factors(majority, h), control_heads=controls)
    result.save(run.out / "bias_majority.json")
    run.summary["bias"] = {"majority": result.as_dict()}
    run.lap("majority-label bias")
    base = sample_prompts(run.sst2, n_prompts=run.args.n_bias, counts=run.half, label_words=words, order="sorted",
                          seed=run.args.seed + 4, exclude=used)
    recency = run.encode(base + [reorder(p, "reverse_sorted") for p in base])
    result = measure_bias(run.model, recency, recent_classes(recency.demo_classes), top, kind="recency",
                          factors_for=lambda h: recency_factors(calibration, h, len(recency)), control_heads=controls)
    result.save(run.out / "bias_recency.json")
    run.summary["bias"]["recency"] = result.as_dict()
    run.lap("recency bias")


def agnews(run: Run) -> None:
    """Step 7: AG News accuracy with natural and unrelated labels (one demonstration per class)."""
    data = read_icl_dataset(run.args.data, "agnews")
    run.summary["agnews"] = {}
    for kind in ("natural", "unrelated"):
        words = label_words_for(data, kind)
        icl = run.encode(sample_prompts(data, n_prompts=run.args.agnews, counts=[1, 1, 1, 1], label_words=words,
                                        template=TOPIC_TEMPLATE, seed=run.args.seed + 5))
        value = label_log_probabilities(run.model, icl)["clean"]
        run.summary["agnews"][kind] = accuracy_from_log_probabilities(value, icl.query_classes, words).as_dict()
    run.lap("AG News accuracy")


def main() -> None:
    from neuronscope.models import load_model, smollm2_location

    args = _arguments()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    folder, gguf = smollm2_location()
    loaded = load_model(folder, gguf_file=gguf)
    run = Run(args, loaded.model, loaded.tokenizer, read_icl_dataset(args.data, "sst2"), out,
              {"config": vars(args)}, started, torch.Generator().manual_seed(args.seed))
    run.lap("load SmolLM2-135M-Instruct")

    kind, prompts = choose_label_kind(run)
    by_lpi, by_ablation = locate(run, prompts)
    used = sorted({run.sst2.texts.index(p.query) for p in prompts.prompts})  # no locate query is used again
    ablate(run, kind, {"lpi": by_lpi, "ablation": by_ablation}, used)
    top = by_lpi.top(head_count(args.mitigate_fraction, *run.sizes))
    mechanism(run, prompts, top)
    bias(run, kind, prompts, top, used)
    if args.agnews:
        agnews(run)

    run.summary["total_wall_s"] = round(time.time() - started, 1)
    run.summary["machine"] = f"CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    (out / "summary.json").write_text(json.dumps(run.summary, indent=1))
    print(json.dumps({k: run.summary[k] for k in ("label_kind", "eval_accuracy", "total_wall_s")}, indent=1))


if __name__ == "__main__":
    main()
