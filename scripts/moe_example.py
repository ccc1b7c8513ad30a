"""The worked example of docs/MOE.md: which experts, and which neurons inside them, carry "paris" in a tiny
Mixtral trained for a minute on a CPU on eight country → capital facts.

    PYTHONPATH=src python scripts/moe_example.py            # ~30 s on one CPU core; prints the report

Everything is seeded: the figures in docs/MOE.md are this script's output.
"""

from __future__ import annotations

import torch
import transformers as T

from neuronscope.aggregate.expert_sampling import random_expert_neurons_like
from neuronscope.attribute import contribution
from neuronscope.attribute.moe_router import routing_statistics
from neuronscope.explain.top_tokens import top_tokens
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models import get_adapter
from neuronscope.trace import intervene, suppress
from neuronscope.trace.expert_interventions import drop_expert
from neuronscope.trace.experts import capture_experts

FACTS = {"france": "paris", "italy": "rome", "spain": "madrid", "germany": "berlin", "japan": "tokyo",
         "egypt": "cairo", "peru": "lima", "kenya": "nairobi"}


def corpus() -> list[list[str]]:
    sentences = []
    for country, city in FACTS.items():
        sentences.append(f"the capital of {country} is {city} .".split())
        sentences.append(f"{city} is a city in {country} .".split())
    return sentences


class Vocab:
    def __init__(self, sentences: list[list[str]]):
        self.words = ["<pad>"] + sorted({w for s in sentences for w in s})
        self.ids = {w: i for i, w in enumerate(self.words)}

    def encode(self, words: list[str]) -> torch.Tensor:
        return torch.tensor([self.ids[w] for w in words])

    def decode(self, ids: list[int]) -> list[str]:
        return [self.words[i] for i in ids]


def train(vocab: Vocab, sentences: list[list[str]], steps: int = 400) -> torch.nn.Module:
    torch.manual_seed(0)
    config = T.MixtralConfig(vocab_size=len(vocab.words), hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, num_local_experts=8,
                             num_experts_per_tok=2, max_position_embeddings=32, pad_token_id=0,
                             router_aux_loss_coef=0.02, output_router_logits=True)
    model = T.AutoModelForCausalLM.from_config(config)
    width = max(len(s) for s in sentences)
    ids = torch.zeros(len(sentences), width, dtype=torch.long)
    for row, sentence in enumerate(sentences):
        ids[row, :len(sentence)] = vocab.encode(sentence)
    mask = (ids != 0).long()
    labels = ids.masked_fill(mask == 0, -100)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimiser.step()
    return model.eval()


def probability(model, ids: torch.Tensor, token: int) -> float:
    with torch.no_grad():
        return float(model(input_ids=ids).logits[0, -1].softmax(-1)[token])


def main() -> None:
    torch.set_num_threads(1)
    sentences = corpus()
    vocab = Vocab(sentences)
    model = train(vocab, sentences)
    adapter = get_adapter(model)
    prompt = vocab.encode("the capital of france is".split())[None]
    paris = vocab.ids["paris"]
    batch = Batch({"input_ids": prompt, "attention_mask": torch.ones_like(prompt)}, ["the capital of france is"],
                  torch.tensor([prompt.shape[1]]))
    targets = TargetSet(torch.tensor([[paris]]), torch.tensor([[prompt.shape[1] - 1]]), torch.tensor([[True]]),
                        [["paris"]])
    print(f"P(paris | the capital of france is) = {probability(model, prompt, paris):.3f}")

    with capture_experts(model, positions="last") as acts:
        model(**batch.inputs)
    for layer in adapter.moe.layers:
        routing = acts.moe(layer)
        chosen = ", ".join(f"expert {e} (g = {g:.2f})" for e, g in zip(routing.experts[0, 0].tolist(),
                                                                       routing.weights[0, 0].tolist(), strict=True))
        print(f"layer {layer} routes 'is' (the last token) to {chosen}")

    scores = contribution(model, batch, targets)  # ExpertNeuronScores: g_e · a · <w, u_paris> per neuron
    per_expert = scores.unit_scores()[0, 0]
    with torch.no_grad():
        logit = float(model(**batch.inputs).logits[0, -1, paris])
    print(f"\nexpert-level contributions to the 'paris' logit ({logit:.2f}; the rest comes from the embeddings "
          "and attention):")
    for unit in per_expert.abs().argsort(descending=True)[:4].tolist():
        layer, expert = scores.layout.units[unit, :2].tolist()
        print(f"  layer {layer} expert {expert}: {float(per_expert[unit]):+.2f}")
    print("\ntop neurons (layer, expert, kind, neuron, score) and their value vectors' top tokens:")
    top = scores.top_table(5)
    words = top_tokens(model, torch.tensor([[r["layer"], r["expert"], r["neuron"]] for r in top]), k=3)
    for row, ids in zip(top, words.token_ids.tolist(), strict=True):
        print(f"  ({row['layer']}, {row['expert']}, {row['kind']}, {row['neuron']}) {row['score']:+.3f}  "
              f"-> {vocab.decode(ids)}")

    rows, _ = scores.top_k(10)
    with intervene(model, suppress(rows)):
        suppressed = probability(model, prompt, paris)
    draws = random_expert_neurons_like(rows, adapter.moe.layout, n_draws=20, seed=0, exclude_given=True)
    random = []
    for draw in draws:
        with intervene(model, suppress(draw)):
            random.append(probability(model, prompt, paris))
    print(f"\nsuppress the top-10 neurons at the last position: P(paris) = {suppressed:.3f}; 20 random sets of 10 "
          f"in the same (layer, expert) units: mean {sum(random) / 20:.3f} (min {min(random):.3f})")
    layer, expert = scores.layout.units[int(per_expert.argmax()), :2].tolist()
    for mode in ("zero", "reroute"):
        with intervene(model, drop_expert(layer, expert, positions="last", mode=mode)):
            print(f"drop expert {expert} of layer {layer} ({mode}): P(paris) = {probability(model, prompt, paris):.3f}")

    cities = [[i for i, w in enumerate(s) if w in FACTS.values()] for s in sentences]
    everything = torch.zeros(len(sentences), max(len(s) for s in sentences), dtype=torch.long)
    for row, sentence in enumerate(sentences):
        everything[row, :len(sentence)] = vocab.encode(sentence)
    stats = routing_statistics(model, Batch({"input_ids": everything, "attention_mask": (everything != 0).long()},
                                            ["?"] * len(sentences), (everything != 0).sum(-1)), positions=cities)
    print("\nwhere the city tokens of the corpus are routed:\n" + stats.summary())


if __name__ == "__main__":
    main()
