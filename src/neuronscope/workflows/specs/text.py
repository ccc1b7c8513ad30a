"""Options of the workflows on prompts: ``models``, ``locate``, ``explain``, ``intervene``, ``evaluate``, ``report``,
``routing``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neuronscope.workflows.options import (
    BatchOptions,
    ModelOptions,
    Options,
    RunOptions,
    missing,
    opt,
    parse_expert_lists,
    parse_heads,
    parse_key_values,
    parse_layers,
)
from neuronscope.workflows.specs.common import (
    BACKGROUND_HELP,
    NeuronOptions,
    PromptOptions,
    SelectionOptions,
    SpecificityOptions,
)

NEURON_SITES = ("neuron", "act", "up", "gate", "pre")
MODES = ("suppress", "amplify", "both")
DROP_MODES = ("zero", "reroute")
POSITIONS = ("last", "all")
HEAD_RANKINGS = ("lpi", "ablation")
DEFAULT_TOP_K = 20


@dataclass(kw_only=True)
class ModelsOptions(Options):
    as_json: bool = opt(False, "Print machine-readable JSON.", flag="--json")
    installed: bool = opt(False, "Also list model types of the installed transformers that the registry does not "
                                 "name (imports transformers).")


@dataclass(kw_only=True)
class LocateOptions(ModelOptions, PromptOptions, SelectionOptions, SpecificityOptions, RunOptions, BatchOptions):
    method: str = opt("contribution", "Attribution method (see 'neuronscope models').")
    site: str = opt("neuron", "Neuron site: neuron (default), act, up, gate, pre.", choices=NEURON_SITES)
    layers: str | None = opt(None, "Layers to score, e.g. '0,2,5' or '4-7' (default all).")
    threshold: float | None = opt(None, "Keep neurons above this fraction of the maximum mean score.",
                                     minimum=0.0, maximum=1.0)
    top_k: int | None = opt(None, f"Keep the k best neurons (default {DEFAULT_TOP_K} when no --threshold).",
                               minimum=1)
    option: list[str] = opt([], "Method option name=value (repeatable), e.g. --option steps=20.")
    explain_k: int = opt(10, "Top tokens shown per selected neuron.", minimum=1)
    keep_top: int | None = opt(None, "Store only each prompt's k best neurons (sparse; for big models and "
                                        "datasets).", minimum=1)
    raising_pool: int | None = opt(None, "Choose among the N best-scored neurons those that raise the target when "
                                         "each alone is scaled by --raising-factor (one forward per candidate and "
                                         "prompt; docs/EFFECTS.md).", minimum=1)
    raising_factor: float = opt(2.0, "The scale --raising-pool measures each candidate at.", minimum=0.0)

    def problems(self) -> list[str]:
        problems = super().problems()
        if not self.has_prompts:
            problems.append("no prompts given: pass --prompts FILE.jsonl or one or more --prompt TEXT")
        for check in (lambda: parse_layers(self.layers), lambda: parse_key_values(self.option)):
            try:
                check()
            except Exception as error:  # noqa: BLE001 - OptionError, reported with the others
                problems.append(str(error))
        problems += missing(self, "out")
        if self.raising_pool is not None and self.threshold is not None:
            problems.append("--raising-pool chooses among the top neurons: use it with --top-k, not --threshold")
        if self.raising_pool is not None and self.raising_pool < (self.top_k or DEFAULT_TOP_K):
            problems.append(f"--raising-pool {self.raising_pool} is smaller than --top-k "
                            f"{self.top_k or DEFAULT_TOP_K}: give a pool at least as large")
        from neuronscope.attribute.registry import get_method

        try:
            get_method(self.method)
        except Exception as error:  # noqa: BLE001 - a NeuronscopeError naming the known methods
            problems.append(f"--method: {error}")
        return problems


@dataclass(kw_only=True)
class ExplainOptions(ModelOptions, NeuronOptions):
    k: int = opt(10, "Tokens per neuron.", minimum=1, short="-k")
    bottom: bool = opt(False, "Also the k most suppressed tokens.")
    out: Path | None = opt(None, "Results folder (optional: without it, only the terminal output).", short="-o",
                              runtime=True)
    overwrite: bool = opt(False, "Replace an earlier run in --out.", runtime=True)


@dataclass(kw_only=True)
class InterveneOptions(ModelOptions, NeuronOptions, PromptOptions, SpecificityOptions, BatchOptions):
    mode: str = opt("both", "Neurons: suppress (x0), amplify (x factor) or both. --drop-expert: zero (its output "
                            "weight 0), reroute (the router's next choice) or both.", choices=MODES + DROP_MODES)
    factor: float = opt(2.0, "Amplification factor.")
    positions: str = opt("last", "Positions changed: last or all.", choices=POSITIONS)
    site: str | None = opt(None, "Neuron site (default: the run's, else neuron).", choices=NEURON_SITES)
    drop_expert: list[str] = opt([], "Mixture-of-experts models: drop experts of a layer, layer:expert[,expert] "
                                     "(repeatable), e.g. '1:5'; --mode zero, reroute or both.")
    force_routing: list[str] = opt([], "Mixture-of-experts models: route the tokens of a layer to exactly these "
                                       "top_k experts, layer:expert,expert (repeatable), e.g. '0:2,3'.")
    heads: str | None = opt(None, "Attention heads as layer.head pairs, e.g. '22.7,24.7': scaled (suppress x0, "
                                  "amplify x factor) at the input of the attention output projection.")
    heads_from: Path | None = opt(None, "A 'recipe icl' results folder: act on its top in-context heads "
                                        "(--top-heads, --head-ranking); without prompts, on its evaluation prompts "
                                        "with their true labels as targets.")
    top_heads: int = opt(3, "With --heads-from: how many of its top heads.", minimum=1)
    head_ranking: str = opt("lpi", "With --heads-from: the ranking, lpi or ablation.", choices=HEAD_RANKINGS)
    draws: int = opt(5, "Random sets: same-layer neuron sets of the specificity measurement, or with heads as "
                        "many random heads (never the chosen ones), reported as random_<mode>.", minimum=0)
    out: Path | None = opt(None, "Results folder (optional).", short="-o", runtime=True)
    overwrite: bool = opt(False, "Replace an earlier run in --out.", runtime=True)

    @property
    def on_heads(self) -> bool:
        return bool(self.heads or self.heads_from)

    def neurons_optional(self) -> bool:
        return bool(self.drop_expert or self.force_routing or self.on_heads)

    def problems(self) -> list[str]:
        problems = super().problems()
        for flag, specs in (("--drop-expert", self.drop_expert), ("--force-routing", self.force_routing)):
            try:
                parse_expert_lists(specs, flag)
            except Exception as error:  # noqa: BLE001 - OptionError, reported with the others
                problems.append(str(error))
        neurons = bool(self.neurons or self.run)
        if neurons and self.drop_expert:
            problems.append("give neurons (--neurons / --run, --mode suppress|amplify|both) or --drop-expert "
                            "(--mode zero|reroute|both), not both: run intervene once for each")
        elif neurons and self.mode in DROP_MODES:
            problems.append(f"--mode {self.mode} drops experts (with --drop-expert); neurons take suppress, amplify "
                            "or both")
        elif self.drop_expert and self.mode not in DROP_MODES + ("both",):
            problems.append(f"--mode {self.mode} changes neurons; --drop-expert takes zero, reroute or both")
        problems += self._head_problems(neurons)
        if self.neurons_optional() and not self.has_prompts and not self.run and not self.heads_from:
            problems.append("no prompts given: pass --prompts FILE.jsonl or one or more --prompt TEXT")
        return problems

    def _head_problems(self, neurons: bool) -> list[str]:
        problems = []
        if self.heads and self.heads_from:
            problems.append("give heads either as --heads layer.head,... or with --heads-from RUN_DIR, not both")
        elif self.heads:
            try:
                parse_heads(self.heads)
            except Exception as error:  # noqa: BLE001 - OptionError, reported with the others
                problems.append(str(error))
        if self.on_heads and (neurons or self.drop_expert or self.force_routing):
            problems.append("give heads (--heads / --heads-from), neurons (--neurons / --run) or experts "
                            "(--drop-expert / --force-routing), not several: run intervene once for each")
        elif self.on_heads and self.mode in DROP_MODES:
            problems.append(f"--mode {self.mode} drops experts; heads take suppress, amplify or both")
        return problems


@dataclass(kw_only=True)
class EvaluateOptions(ModelOptions, BatchOptions):
    run_dir: Path | None = opt(None, "A locate run folder.", argument=True)
    draws: int = opt(10, "Random neuron sets to compare with (at least 1: the baseline is the point).", minimum=1)
    seed: int = opt(0, "Seed of the random sets.")
    mode: str = opt("both", "suppress, amplify or both.", choices=MODES)
    factor: float = opt(2.0, "Amplification factor.")
    positions: str = opt("last", "Positions changed: last or all.", choices=POSITIONS)
    prompts: Path | None = opt(None, "Evaluate on these JSONL prompts instead of the run's (e.g. held-out ones).")
    background: Path | None = opt(None, BACKGROUND_HELP + " Default: the locate run's, else the built-in set.")

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.run_dir is None:
            problems.append("missing argument RUN_DIR: give the folder of a 'neuronscope locate' run")
        return problems


@dataclass(kw_only=True)
class ReportOptions(Options):
    run_dir: Path | None = opt(None, "A results folder written by a neuronscope command.", argument=True)
    title: str | None = opt(None, "Page title (default: from the run's config).")
    max_rows: int = opt(200, "Rows shown per table.", minimum=1)

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.run_dir is None:
            problems.append("missing argument RUN_DIR: give a folder written by a neuronscope command")
        return problems


@dataclass(kw_only=True)
class RoutingOptions(ModelOptions, BatchOptions):
    prompts: Path | None = opt(None, "JSONL file, one {\"prompt\", \"id\"?} per line.")
    prompt: list[str] = opt([], "A prompt (repeatable).")
    chat: bool = opt(False, "Wrap prompts in the tokenizer's chat template.")
    positions: str = opt("all", "Tokens counted: all (every prompt token) or last (each prompt's last token).",
                         choices=POSITIONS)
    words: str | None = opt(None, "Count only the tokens that are one of these words (comma-separated, whole "
                                  "tokens, case and leading space ignored), e.g. 'paris,rome': where a concept goes.")
    layers: str | None = opt(None, "MoE layers, e.g. '0,2' or '4-7' (default all).")
    top: int = opt(3, "Experts shown per layer in the terminal.", minimum=1)
    out: Path | None = opt(None, "Results folder (optional).", short="-o", runtime=True)
    overwrite: bool = opt(False, "Replace an earlier run in --out.", runtime=True)

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.prompts is None and not self.prompt:
            problems.append("no prompts given: pass --prompts FILE.jsonl or one or more --prompt TEXT")
        if self.prompts is not None and self.prompt:
            problems.append("give prompts either in a file (--prompts) or as --prompt flags, not both")
        if self.words is not None and self.positions == "last":
            problems.append("--words counts the tokens of those words wherever they are; drop --positions last")
        try:
            parse_layers(self.layers)
        except Exception as error:  # noqa: BLE001 - OptionError, reported with the others
            problems.append(str(error))
        return problems
