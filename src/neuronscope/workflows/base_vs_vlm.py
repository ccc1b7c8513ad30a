"""``recipe base-vs-vlm``: the VLM's language model against the text LM it was trained from, by comparative neuron
analysis (CNA, Yu & Ananiadou 2024) on text prompts.

Yu & Ananiadou find that LLaVA's language model answers text questions with neurons and heads its base (Vicuna)
already used, and enhances them. Per prompt and target (the same token in both models):

- condition A = the base LM, condition B = the VLM run on the text alone (no image);
- every FFN neuron's LPI in each, and CNA = LPI_B − LPI_A
  (:func:`neuronscope.attribute.comparative.comparative` with ``model_b``); the same for every head.

Across prompts: each model's accuracy (top-1 == target) and mean log-probability of the target; the mean LPI maps;
the overlap of the two top-``k`` neuron sets and of the top heads; the Spearman correlation of the two maps over
every neuron (and head); the ``k`` neurons CNA raises most, with both LPIs and the VLM's top tokens of each.

The two models must share an architecture and a vocabulary, and their tokenizers must split each prompt alike
(checked; the error says which prompt). The bundled shapes VLM ships without its base: rebuild it with
``python -m neuronscope.bundled.base_lm --out DIR`` (:mod:`neuronscope.bundled.base_lm`) and pass
``--base-model DIR``; ``--bundled-facts`` takes the bundled model's text facts as the prompts.

Example:
    >>> run("recipe base-vs-vlm", model="./llava", base_model="./vicuna", prompts="facts.jsonl", out="runs/cna")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from neuronscope.errors import InputError, NothingProcessedError
from neuronscope.runs.folder import RunDir


def _records(options: Any) -> list[Any]:
    from neuronscope.inputs.prompts import PromptRecord, prompt_records

    if options.bundled_facts:
        from neuronscope.bundled import facts_dataset

        return [PromptRecord(f"{fact.domain}:{fact.subject}", fact.prompt, fact.answer, {})
                for fact in facts_dataset()]
    return prompt_records(options.prompts, options.prompt, options.target)


def _encode_pair(base: Any, vlm: Any, record: Any, options: Any) -> tuple[Any, Any, int]:
    """The prompt through each model's tokenizer (refused when they differ) and the target token."""
    from neuronscope.inputs.batch import encode_prompts, to_model
    from neuronscope.inputs.targets import resolve_target

    batch_a = encode_prompts(base.processor, record.prompt, chat=options.chat, model=base.model)
    batch_b = encode_prompts(vlm.tokenizer, record.prompt, chat=options.chat, model=base.model)
    if not torch.equal(batch_a.input_ids, batch_b.input_ids):
        raise InputError(f"prompt {record.id!r}: the two tokenizers split it differently; CNA compares one token "
                         "sequence in both models (use the VLM's tokenizer for the base, or prompts both split alike)")
    spec = resolve_target(vlm.tokenizer, record.target, vlm.model.config.get_text_config().vocab_size,
                          leading_space=options.leading_space, first_piece=options.first_piece)
    if spec is None:  # "prediction": the base model's own next token (condition A's, as CNA defaults to)
        with torch.no_grad():
            spec = int(base.model(**to_model(batch_a, base.model).inputs).logits[0, -1].argmax())
    return to_model(batch_a, base.model), to_model(batch_b, vlm.model), int(spec)


def _score(base: Any, vlm: Any, record: Any, options: Any) -> Any:
    from neuronscope.attribute.comparative import comparative
    from neuronscope.inputs.targets import token_targets
    from neuronscope.runs.loop import Example, Skip

    try:
        batch_a, batch_b, token = _encode_pair(base, vlm, record, options)
    except InputError as error:
        return Skip(str(error), {"id": record.id})
    targets = token_targets(batch_a, token, base.tokenizer)
    neurons = comparative(base.model, batch_a, targets, batch_b=batch_b, model_b=vlm.model)
    heads = comparative(base.model, batch_a, targets, batch_b=batch_b, model_b=vlm.model, unit="head")
    with torch.no_grad():
        logits_a = base.model(**batch_a.inputs).logits[0, -1].double().log_softmax(-1)
        logits_b = vlm.model(**batch_b.inputs).logits[0, -1].double().log_softmax(-1)
    return Example({"neurons_a": neurons.condition_a.values[0, 0], "neurons_b": neurons.condition_b.values[0, 0],
                    "heads_a": heads.condition_a.values[0, 0], "heads_b": heads.condition_b.values[0, 0]},
                   {"id": record.id, "prompt": record.prompt, "target": vlm.tokenizer.decode([token]),
                    "base_correct": int(logits_a.argmax()) == token, "vlm_correct": int(logits_b.argmax()) == token,
                    "base_log_prob": round(float(logits_a[token]), 6),
                    "vlm_log_prob": round(float(logits_b[token]), 6)})


def base_vs_vlm(options: Any, *, loaded: Any = None) -> Any:
    """``recipe base-vs-vlm``: see the module docstring."""
    from neuronscope.runs.loop import run_loop
    from neuronscope.workflows.common import load

    records = _records(options)
    RunDir.check(options.out, resume=options.resume, overwrite=options.overwrite)
    if options.bundled_facts and not options.model:
        from neuronscope.bundled import SHAPES_VLM_PATH

        options = replace(options, model=str(SHAPES_VLM_PATH))
    vlm = load(options, loaded)
    base = load(replace(options, model=options.base_model, gguf_file=options.base_gguf_file))
    run = RunDir(options.out, resume=options.resume, overwrite=options.overwrite)
    run.write_config({"command": "recipe base-vs-vlm", **options.recorded(),
                      "prompts_used": [[r.id, r.prompt, r.target] for r in records]})
    run.write_meta({"runtime": options.runtime()})
    run_loop(run, records, lambda chunk: [_score(base, vlm, record, options) for _, record in chunk],
             batch_size=1, label="prompts")
    done, skipped = [], []
    for entry in sorted(run.ledger_entries(), key=lambda e: int(e["index"])):
        tensors, record = run.read_example(entry["key"])
        if record.get("skipped"):
            skipped.append({"source": "prompts", "record": record.get("id"), "reason": record["skipped"]})
        else:
            done.append((tensors, record))
    run.write_skipped(skipped)
    if not done:
        raise NothingProcessedError(f"no prompt could be compared ({len(skipped)} skipped); the reasons are in "
                                    f"{run.path / 'skipped.json'}")
    return summarise(run, done, skipped, vlm, options)


def _top(mean: torch.Tensor, k: int) -> torch.Tensor:
    """``[k, 2]`` (layer, index) of the largest values of ``[layers, width]`` (ties: lower flat index)."""
    flat = torch.sort(mean.flatten(), descending=True, stable=True).indices[:k]
    return torch.stack([flat // mean.shape[1], flat % mean.shape[1]], dim=1)


def _agreement(a: torch.Tensor, b: torch.Tensor, k: int) -> dict[str, Any]:
    from neuronscope.workflows.invariance import set_overlap
    from neuronscope.workflows.patches import rank_correlation

    top_a, top_b = _top(a, k), _top(b, k)
    return {"spearman": rank_correlation(a.flatten(), b.flatten()),
            "top_overlap": set_overlap(top_a, top_b)["overlap"], "k": k}


def summarise(run: RunDir, done: list[tuple[dict[str, torch.Tensor], dict[str, Any]]],
              skipped: list[dict[str, Any]], vlm: Any, options: Any) -> Any:
    """Tables, plot and metrics of a finished comparison; returns its RunResult."""
    from neuronscope.explain.top_tokens import top_tokens
    from neuronscope.report.plots import layer_histogram_figure
    from neuronscope.workflows.common import finish_run, write_png, write_table
    from neuronscope.workflows.result import RunResult

    mean = {key: torch.stack([tensors[key].double() for tensors, _ in done]).mean(0)
            for key in ("neurons_a", "neurons_b", "heads_a", "heads_b")}
    k = options.top_k
    cna = mean["neurons_b"] - mean["neurons_a"]
    raised = _top(cna, k)
    explained = top_tokens(vlm.model, raised, vlm.tokenizer, k=5)
    write_table(run, "tables/cna_neurons.csv", [
        {"layer": int(layer), "index": int(index), "cna": round(float(cna[layer, index]), 6),
         "base_lpi": round(float(mean["neurons_a"][layer, index]), 6),
         "vlm_lpi": round(float(mean["neurons_b"][layer, index]), 6), "vlm_top_tokens": " ".join(tokens)}
        for (layer, index), tokens in zip(raised.tolist(), explained.tokens, strict=True)])
    records = [record for _, record in done]
    write_table(run, "tables/prompts.csv", records)
    heads_rank = _top(mean["heads_b"], mean["heads_b"].numel())
    write_table(run, "tables/heads.csv", [
        {"layer": int(layer), "head": int(head), "base_lpi": round(float(mean["heads_a"][layer, head]), 6),
         "vlm_lpi": round(float(mean["heads_b"][layer, head]), 6)} for layer, head in heads_rank.tolist()])
    n_layers = cna.shape[0]
    write_png(run, "plots/top_neurons_per_layer.png", layer_histogram_figure(
        {"base top-k": _top(mean["neurons_a"], k), "VLM top-k": _top(mean["neurons_b"], k), "CNA top-k": raised},
        n_layers, f"Layers of the top {k} neurons by mean LPI, and of the {k} CNA raises most"))
    neurons = _agreement(mean["neurons_a"], mean["neurons_b"], k)
    heads = _agreement(mean["heads_a"], mean["heads_b"], min(options.top_heads, mean["heads_a"].numel()))
    top_b = _top(mean["neurons_b"], k)
    metrics = {
        "prompts_done": len(done), "prompts_skipped": len(skipped),
        "base_accuracy": sum(r["base_correct"] for r in records) / len(records),
        "vlm_accuracy": sum(r["vlm_correct"] for r in records) / len(records),
        "base_mean_log_prob": sum(r["base_log_prob"] for r in records) / len(records),
        "vlm_mean_log_prob": sum(r["vlm_log_prob"] for r in records) / len(records),
        "neurons": neurons, "heads": heads,
        "vlm_top_k_mean_lpi": {"in_vlm": float(mean["neurons_b"][top_b[:, 0], top_b[:, 1]].mean()),
                               "in_base": float(mean["neurons_a"][top_b[:, 0], top_b[:, 1]].mean())},
        "skipped_inputs": skipped}
    lines = [f"{len(done)} prompts ({len(skipped)} skipped); accuracy base {metrics['base_accuracy']:.3f}, VLM "
             f"{metrics['vlm_accuracy']:.3f}",
             f"top-{k} neurons by mean LPI shared by base and VLM: {neurons['top_overlap']:.2f}; Spearman over all "
             f"neurons {neurons['spearman']:.3f}; heads: top-{heads['k']} overlap {heads['top_overlap']:.2f}, "
             f"Spearman {heads['spearman']:.3f}",
             f"the VLM's top-{k} neurons: mean LPI {metrics['vlm_top_k_mean_lpi']['in_vlm']:.4f} in the VLM, "
             f"{metrics['vlm_top_k_mean_lpi']['in_base']:.4f} in the base"]
    finish_run(run, metrics, "\n".join(lines), title="neuronscope · base LM vs VLM language model (CNA)")
    return RunResult("recipe base-vs-vlm", str(run.path), metrics, lines)


__all__ = ["base_vs_vlm", "summarise"]
