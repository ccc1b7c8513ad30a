"""Multi-GPU check: a model split over two GPUs by ``device_map`` gives what it gives on one GPU.

On a random Llama (built locally, float32, 4 layers; layers 0-1 on GPU 0, layers 2-3, the final norm and the head
on GPU 1) against the same weights on GPU 0 alone: logits; captured neuron activations; contribution scores;
logits under suppression of neurons in both halves; integrated gradients; a value-vector edit applied (logits)
and reverted (every weight bit for bit, on its own GPU). Prints a JSON summary and writes it to ``OUT/split.json``.

    PYTHONPATH=src python scripts/multi_gpu_check.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(out: Path) -> None:
    import neuronscope as ns
    from neuronscope.edit.weights import ValueVectorEdit

    sys.path.insert(0, str(Path(__file__).parent))
    from dp_smoke import build_model

    out.mkdir(parents=True, exist_ok=True)
    folder = out / "model"
    build_model(folder, hidden=256, layers=4, d_ff=512, vocab_words=200)
    a, b = (0, 1) if torch.cuda.device_count() >= 2 else ("cpu", "cpu")  # "cpu": a dry run of this script
    split = {"model.embed_tokens": a, "model.rotary_emb": a, "model.layers.0": a, "model.layers.1": a,
             "model.layers.2": b, "model.layers.3": b, "model.norm": b, "lm_head": b}
    one = ns.load_model(folder, dtype="float32", device_map={"": a})
    two = ns.load_model(folder, dtype="float32", device_map=split)
    devices = sorted({str(p.device) for p in two.model.parameters()})
    prompts = ["w1 w2 w3 w4 w5", "w7 w8 w9"]
    summary: dict = {"devices_of_split_model": devices}

    def batch_for(loaded):
        from neuronscope.inputs import to_model

        return to_model(ns.encode_prompts(loaded.tokenizer, prompts, model=loaded.model), loaded.model)

    def diff(a, b) -> float:
        return float((a.float().cpu() - b.float().cpu()).abs().max())

    with torch.no_grad():
        b1, b2 = batch_for(one), batch_for(two)
        summary["logits"] = diff(one.model(**b1.inputs).logits, two.model(**b2.inputs).logits)
        with ns.capture(one.model, "neuron", positions="last") as c1:
            one.model(**b1.inputs)
        with ns.capture(two.model, "neuron", positions="last") as c2:
            two.model(**b2.inputs)
        summary["capture"] = diff(c1.stack(device="cpu"), c2.stack(device="cpu"))
    t1 = ns.word_targets(one.tokenizer, b1, ["w10", "w11"])
    t2 = ns.word_targets(two.tokenizer, b2, ["w10", "w11"])
    s1 = ns.locate("contribution", one.model, b1, t1)
    s2 = ns.locate("contribution", two.model, b2, t2)
    summary["contribution"] = diff(s1.values, s2.values)
    g1 = ns.locate("integrated_gradients", one.model, b1, t1, layers=[1, 3], steps=8)
    g2 = ns.locate("integrated_gradients", two.model, b2, t2, layers=[1, 3], steps=8)
    summary["integrated_gradients"] = diff(g1.values, g2.values)
    neurons = torch.tensor([[0, 5], [1, 9], [2, 3], [3, 100]])
    with torch.no_grad():
        with ns.intervene(one.model, ns.suppress(neurons)):
            l1 = one.model(**b1.inputs).logits
        with ns.intervene(two.model, ns.suppress(neurons)):
            l2 = two.model(**b2.inputs).logits
        summary["suppressed_logits"] = diff(l1, l2)
        before = {k: v.detach().clone() for k, v in two.model.state_dict().items()}
        e1 = ValueVectorEdit.token_shift(one.model, neurons, 10, 11, 2.0)
        e2 = ValueVectorEdit.token_shift(two.model, neurons, 10, 11, 2.0)
        with e1.applied(one.model):
            l1 = one.model(**b1.inputs).logits
        handle = e2.apply(two.model)
        l2 = two.model(**b2.inputs).logits
        handle.revert()
        summary["edited_logits"] = diff(l1, l2)
        after = two.model.state_dict()
        summary["revert_bit_exact"] = all(torch.equal(after[k], before[k]) and after[k].device == before[k].device
                                          for k in before)
    print(json.dumps(summary, indent=1))
    (out / "split.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/multi_gpu"))
