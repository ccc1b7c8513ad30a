"""Why amplifying the located "Paris" neurons ×2 lowers P(Paris) on SmolLM2, and the selection that raises it.

    python scripts/amplification_smollm2.py results/amplification      # CPU, 1 thread: about a minute idle

Writes ``amplification.json`` (every figure of docs/EFFECTS.md). Prompt "The capital of France is", target " Paris",
top-20 neurons, interventions at the last position, float32 (the GGUF de-quantised), as ``neuronscope intervene``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

import neuronscope as ns
from neuronscope.measure.effects import raising_neurons, single_neuron_effects
from neuronscope.trace import intervene, scale_neurons

FACTORS = (0.0, 0.5, 1.5, 2.0, 3.0)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    start = time.time()
    folder, gguf = ns.smollm2_location()
    loaded = ns.load_model(folder, gguf_file=gguf)
    model, tok = loaded.model.eval(), loaded.tokenizer
    batch = ns.encode_prompts(tok, ["The capital of France is"], model=model)
    targets = ns.word_targets(tok, batch, ["Paris"])
    token = int(targets.token_ids[0, 0])

    @torch.no_grad()
    def logits(neurons: torch.Tensor | None = None, factor: float = 1.0) -> torch.Tensor:
        if neurons is None or len(neurons) == 0:
            return model(**batch.inputs).logits[0, -1].double()
        with intervene(model, scale_neurons(neurons, factor)):
            return model(**batch.inputs).logits[0, -1].double()

    base = logits()
    result: dict = {"p_before": float(base.softmax(-1)[token])}

    def probabilities(neurons: torch.Tensor) -> dict[str, float]:
        return {str(f): float(logits(neurons, f).softmax(-1)[token]) for f in FACTORS}

    contribution = ns.locate("contribution", model, batch, targets)
    top, direct = contribution.top_k(20, example=0)
    result["contribution_top20"] = {"neurons": top.tolist(), "direct_effect": direct.tolist(),
                                    "p_after": probabilities(top)}
    result["per_layer_x2"] = {str(layer): {"n": int((top[:, 0] == layer).sum()),
                                           "p_after": float(logits(top[top[:, 0] == layer], 2.0)
                                                            .softmax(-1)[token])}
                              for layer in top[:, 0].unique().tolist()}
    singles = []
    for neuron, score in zip(top.tolist(), direct.tolist(), strict=True):
        doubled = logits(torch.tensor([neuron]), 2.0)
        singles.append({"neuron": neuron, "direct_effect": score,
                        "target_logit_change": float(doubled[token] - base[token]),
                        "logsumexp_change": float(doubled.logsumexp(-1) - base.logsumexp(-1)),
                        "log_p_change": float(doubled.log_softmax(-1)[token] - base.log_softmax(-1)[token])})
    result["single_x2"] = singles
    for method, kwargs in (("log_probability_increase", {}), ("contribution", {"final_norm": True})):
        chosen, _ = ns.locate(method, model, batch, targets, **kwargs).top_k(20, example=0)
        result[f"{method}{'_final_norm' if kwargs else ''}_top20"] = {"p_after": probabilities(chosen)}

    pool, _ = contribution.top_k(100, example=0)
    effects = single_neuron_effects(model, batch, targets, pool, factor=2.0)
    kept = pool[raising_neurons(effects, k=20)]
    result["raising_top20_of_100"] = {"neurons": kept.tolist(), "p_after": probabilities(kept),
                                      "pool_raising": int((effects[0] > 0).sum())}
    result["seconds"] = round(time.time() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "amplification.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v["p_after"] for k, v in result.items() if isinstance(v, dict) and "p_after" in v},
                     indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/amplification"))
