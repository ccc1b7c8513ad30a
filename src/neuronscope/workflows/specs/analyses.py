"""Options of the text analyses on prompts: ``prune`` (keep only the top-scored neurons of deep layers, vs random
keep-sets), ``query-neurons`` (the FFN neurons that make the prediction's value neurons fire) and
``causal-effect`` (does suppressing a set remove its concept from generated text, and only it, vs random sets)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neuronscope.workflows.options import BatchOptions, ModelOptions, opt, parse_key_values, parse_layers
from neuronscope.workflows.specs.common import NeuronOptions, PromptOptions
from neuronscope.workflows.specs.edits import OutputFolderOptions


def _prompt_problems(options: PromptOptions) -> list[str]:
    return [] if options.has_prompts else ["no prompts given: pass --prompts FILE.jsonl or one or more --prompt TEXT"]


@dataclass(kw_only=True)
class PruneOptions(ModelOptions, PromptOptions, OutputFolderOptions, BatchOptions):
    keep: list[int] = opt([50, 200], "Neurons kept in the pruned layers together (comma-separated counts).",
                          minimum=0)
    layers: str | None = opt(None, "Layers pruned, e.g. '26-29' (default: the deepest quarter).")
    method: str = opt("log_probability_increase", "Attribution method choosing the kept neurons (summed over "
                                                   "the prompts).")
    option: list[str] = opt([], "Method option name=value (repeatable), e.g. --option steps=20.")
    n_random: int = opt(3, "Random keep-sets per count (same count in each layer).", minimum=0)
    seed: int = opt(0, "Seed of the random keep-sets.")
    positions: str = opt("all", "Where pruned neurons are zeroed: every position (default) or the last.",
                         choices=("all", "last"))

    def problems(self) -> list[str]:
        problems = super().problems() + _prompt_problems(self)
        for check in (lambda: parse_layers(self.layers), lambda: parse_key_values(self.option)):
            try:
                check()
            except Exception as error:  # noqa: BLE001 - OptionError, reported with the others
                problems.append(str(error))
        from neuronscope.attribute.registry import get_method

        try:
            get_method(self.method)
        except Exception as error:  # noqa: BLE001 - a NeuronscopeError naming the known methods
            problems.append(f"--method: {error}")
        return problems


@dataclass(kw_only=True)
class QueryNeuronsOptions(ModelOptions, PromptOptions, OutputFolderOptions):
    top_values: int = opt(30, "Value neurons (attention neurons by LPI) summed over per prompt (1: the best one "
                              "only).", minimum=1)
    top_k: int = opt(20, "Query neurons reported.", minimum=1)
    value_k: int = opt(100, "FFN value neurons (by their own LPI) a query neuron must be among to count as "
                            "query-value.", minimum=1)
    value_layers: str | None = opt(None, "Layers whose heads compete as value neurons (default all).")
    explain_k: int = opt(10, "Top tokens shown per neuron.", minimum=1)

    def problems(self) -> list[str]:
        problems = super().problems() + _prompt_problems(self)
        try:
            parse_layers(self.value_layers, "--value-layers")
        except Exception as error:  # noqa: BLE001 - OptionError, reported with the others
            problems.append(str(error))
        return problems


@dataclass(kw_only=True)
class CausalEffectOptions(ModelOptions, NeuronOptions, OutputFolderOptions):
    prompts: Path | None = opt(None, "JSONL prompts of the concept (one {\"prompt\"} per line).")
    prompt: list[str] = opt([], "A prompt of the concept (repeatable).")
    words: list[str] = opt([], "The concept's words, name first (comma-separated), e.g. 'red,crimson'.")
    others: Path | None = opt(None, "JSONL prompts of other concepts, each {\"prompt\", \"target\": its concept's "
                                    "word}: specificity (their rates should not drop).")
    draws: int = opt(5, "Random neuron sets (same count per layer) to compare with.", minimum=0)
    seed: int = opt(0, "Seed of the random sets.")
    max_new_tokens: int = opt(12, "Greedy continuation length.", minimum=1)
    chat: bool = opt(False, "Wrap prompts in the tokenizer's chat template.")

    def problems(self) -> list[str]:
        problems = super().problems()
        if (self.prompts is None) == (not self.prompt):
            problems.append("give the concept's prompts either in a file (--prompts) or as --prompt flags")
        if not self.words:
            problems.append("--words: name the concept's words (e.g. --words red,crimson)")
        return problems
