"""In-context heads of SmolLM2-135M-Instruct (Yu & Ananiadou, EMNLP 2024) on CPU, one thread, ~10-20 minutes.

    PYTHONPATH=src python scripts/icl_smollm2.py ../shared/data/icl --out results/icl_smollm2

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
from pathlib import Path

import torch


def _sorted(tokenizer, prompts):
    """Prompts ordered by token length, so that each chunk of a batch is padded little."""
    return sorted(prompts, key=lambda p: len(tokenizer(p.text)["input_ids"]))


def _probability_of_truth(log_probs: torch.Tensor, classes: torch.Tensor) -> float:
    return float(log_probs.softmax(-1).gather(1, classes[:, None]).mean())


def main() -> None:  # noqa: PLR0915 - one experiment, step by step
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
    from neuronscope.models import load_model, smollm2_location

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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    summary: dict = {"config": vars(args), "timings_s": timings}
    clock = time.time()
    started = clock

    def lap(name: str) -> None:
        nonlocal clock
        now = time.time()
        timings[name] = round(now - clock, 1)
        clock = now
        print(f"[{timings[name]:7.1f} s] {name}", flush=True)

    folder, gguf = smollm2_location()
    loaded = load_model(folder, gguf_file=gguf)
    model, tokenizer = loaded.model, loaded.tokenizer
    adapter_sizes = (model.config.num_hidden_layers, model.config.num_attention_heads)
    lap("load SmolLM2-135M-Instruct")

    sst2 = read_icl_dataset(args.data, "sst2")
    half = [args.shots // 2, args.shots - args.shots // 2]
    kinds = {kind: label_words_for(sst2, kind) for kind in ("natural", "unrelated")}

    def prompts(kind: str, n: int, seed: int, exclude=()):
        return _sorted(tokenizer, sample_prompts(sst2, n_prompts=n, counts=half, label_words=kinds[kind], seed=seed,
                                                 exclude=exclude))

    # 1. choose the label kind on the locate prompts
    locate_sets, locate_accuracy = {}, {}
    for kind in kinds:
        locate_sets[kind] = encode_icl(tokenizer, prompts(kind, args.n_locate, args.seed + 1), model=model)
        scores = label_log_probabilities(model, locate_sets[kind])["clean"]
        locate_accuracy[kind] = accuracy_from_log_probabilities(scores, locate_sets[kind].query_classes,
                                                                kinds[kind]).as_dict()
    kind = max(kinds, key=lambda k: locate_accuracy[k]["accuracy"]) if args.label_kind == "auto" else args.label_kind
    summary["locate_accuracy"] = locate_accuracy
    summary["label_kind"] = kind
    locate = locate_sets[kind]
    lap("accuracy on the locate prompts, label kind chosen")

    # 2. locate
    by_lpi = locate_in_context_heads(model, locate, method="lpi")
    by_lpi.save(out / "heads_lpi.json")
    lap("locate by LPI")
    by_ablation = locate_in_context_heads(model, locate, method="ablation", chunk_size=16)
    by_ablation.save(out / "heads_ablation.json")
    lap("locate by ablation")
    n_layers, n_heads = adapter_sizes
    counts = {fraction: head_count(fraction, n_layers, n_heads) for fraction in args.fractions}
    summary["heads"] = {
        "lpi_top": by_lpi.top(max(counts.values())).tolist(),
        "ablation_top": by_ablation.top(max(counts.values())).tolist(),
        "lpi_per_label_top": [by_lpi.top(3, label=c).tolist() for c in range(2)],
        "ablation_per_label_top": [by_ablation.top(3, label=c).tolist() for c in range(2)],
        "counts_per_label": by_lpi.counts,
    }

    # 3. ablation on the evaluation prompts (queries disjoint from the locate prompts)
    used = {sst2.texts.index(p.query) for p in locate.prompts}
    evaluation = encode_icl(tokenizer, prompts(kind, args.n_eval, args.seed + 2, exclude=sorted(used)), model=model)
    generator = torch.Generator().manual_seed(args.seed)
    conditions = {"clean": lambda chunk: contextlib.nullcontext()}
    for n in counts.values():
        for name, ranking in (("lpi", by_lpi), ("ablation", by_ablation)):
            conditions[f"{name}_top_{n}"] = ablation_condition(model, ranking.top(n))
        exclude = torch.cat([by_lpi.top(n), by_ablation.top(n)])
        for draw in range(args.draws):
            heads = random_heads(n, n_layers, n_heads, generator, exclude=exclude)
            conditions[f"random_{n}_{draw}"] = ablation_condition(model, heads)
    scores = label_log_probabilities(model, evaluation, conditions, chunk_size=16)
    ablation = {}
    for name, value in scores.items():
        accuracy = accuracy_from_log_probabilities(value, evaluation.query_classes, kinds[kind], name)
        ablation[name] = {"accuracy": accuracy.accuracy, "p_true": _probability_of_truth(value, evaluation.query_classes),
                          "predicted_share": accuracy.predicted_share}
    for n in counts.values():
        randoms = [ablation[f"random_{n}_{d}"]["accuracy"] for d in range(args.draws)]
        ablation[f"random_{n}_summary"] = {"mean": sum(randoms) / len(randoms), "min": min(randoms),
                                           "max": max(randoms)}
    summary["ablation"] = ablation
    summary["eval_accuracy"] = {kind: ablation["clean"]["accuracy"]}
    lap("ablation vs random heads on the evaluation prompts")
    other = "unrelated" if kind == "natural" else "natural"
    other_set = encode_icl(tokenizer, prompts(other, args.n_eval_other, args.seed + 2, exclude=sorted(used)),
                           model=model)
    other_scores = label_log_probabilities(model, other_set)["clean"]
    other_accuracy = accuracy_from_log_probabilities(other_scores, other_set.query_classes, kinds[other])
    summary["eval_accuracy"][other] = other_accuracy.accuracy
    summary["eval_accuracy_detail"] = {other: other_accuracy.as_dict()}
    lap("accuracy of the other label kind")

    # 4. per-demonstration projection of the top heads
    top = by_lpi.top(head_count(args.mitigate_fraction, n_layers, n_heads))
    attribution = attribute_head_positions(model, locate.select(range(min(args.n_attribution, len(locate)))), top)
    attribution.save(out / "positions.json")
    summary["positions"] = {"heads": attribution.heads, "mean_by_class": attribution.mean_by_class,
                            "label_share": attribution.label_share,
                            "mass_output_correlation": attribution.mass_output_correlation}
    lap("per-position projection")

    # 5. two towers and the shallow merge
    towers = two_towers(model, locate, top)
    towers.save(out / "towers.json")
    summary["towers"] = {"heads": towers.heads, "correlation": towers.correlation,
                         "same_label_attention": towers.same_label_attention,
                         "other_label_attention": towers.other_label_attention}
    merge = label_merge(model, locate.select(range(min(args.n_merge, len(locate)))))
    merge.save(out / "merge.json")
    summary["merge"] = merge.as_dict()
    lap("two towers and shallow merge")

    # 6. bias
    calibration, _ = label_attention(model, locate)
    calibration = calibration.view(len(locate), n_layers, n_heads, -1)
    controls = [random_heads(len(top), n_layers, n_heads, generator, exclude=top) for _ in range(args.draws)]
    majority_prompts = []
    for mix in ([3 * args.shots // 4, args.shots - 3 * args.shots // 4], [args.shots - 3 * args.shots // 4,
                                                                           3 * args.shots // 4]):
        majority_prompts += sample_prompts(sst2, n_prompts=args.n_bias, counts=mix, label_words=kinds[kind],
                                           seed=args.seed + 3, exclude=sorted(used))
    majority = encode_icl(tokenizer, _sorted(tokenizer, majority_prompts), model=model)
    majority_bias = measure_bias(model, majority, majority_classes(majority.demo_classes, 2), top, kind="majority",
                                 factors_for=lambda h: majority_factors(majority, h), control_heads=controls)
    majority_bias.save(out / "bias_majority.json")
    lap("majority-label bias")
    base = sample_prompts(sst2, n_prompts=args.n_bias, counts=half, label_words=kinds[kind], order="sorted",
                          seed=args.seed + 4, exclude=sorted(used))
    recency_prompts = base + [reorder(p, "reverse_sorted") for p in base]
    recency = encode_icl(tokenizer, _sorted(tokenizer, recency_prompts), model=model)
    recency_bias = measure_bias(model, recency, recent_classes(recency.demo_classes), top, kind="recency",
                                factors_for=lambda h: recency_factors(calibration, h, len(recency)),
                                control_heads=controls)
    recency_bias.save(out / "bias_recency.json")
    summary["bias"] = {"majority": majority_bias.as_dict(), "recency": recency_bias.as_dict()}
    lap("recency bias")

    # 7. AG News
    if args.agnews:
        agnews = read_icl_dataset(args.data, "agnews")
        summary["agnews"] = {}
        for name in ("natural", "unrelated"):
            words = label_words_for(agnews, name)
            chosen = sample_prompts(agnews, n_prompts=args.agnews, counts=[1, 1, 1, 1], label_words=words,
                                    template=TOPIC_TEMPLATE, seed=args.seed + 5)
            icl = encode_icl(tokenizer, _sorted(tokenizer, chosen), model=model)
            value = label_log_probabilities(model, icl)["clean"]
            summary["agnews"][name] = accuracy_from_log_probabilities(value, icl.query_classes, words).as_dict()
        lap("AG News accuracy")

    summary["total_wall_s"] = round(time.time() - started, 1)
    summary["machine"] = f"CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("label_kind", "eval_accuracy", "total_wall_s")}, indent=1))


if __name__ == "__main__":
    main()
