"""Options of the workflows on prompts: ``models``, ``locate``, ``explain``, ``intervene``, ``evaluate``, ``report``."""

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
POSITIONS = ("last", "all")
DEFAULT_TOP_K = 20


@dataclass(kw_only=True)
class ModelsOptions(Options):
    as_json: bool = opt(False, "Print machine-readable JSON.", flag="--json")


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
    mode: str = opt("both", "suppress (x0), amplify (x factor) or both.", choices=MODES)
    factor: float = opt(2.0, "Amplification factor.")
    positions: str = opt("last", "Positions changed: last or all.", choices=POSITIONS)
    site: str | None = opt(None, "Neuron site (default: the run's, else neuron).", choices=NEURON_SITES)
    out: Path | None = opt(None, "Results folder (optional).", short="-o", runtime=True)
    overwrite: bool = opt(False, "Replace an earlier run in --out.", runtime=True)


@dataclass(kw_only=True)
class EvaluateOptions(ModelOptions, BatchOptions):
    run_dir: Path | None = opt(None, "A locate run folder.", argument=True)
    draws: int = opt(10, "Random neuron sets to compare with.", minimum=0)
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
