"""Option groups shared by several workflows: prompts with their targets, and a neuron set to act on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neuronscope.workflows.options import Options, opt, parse_neurons

#: The target spec meaning "the model's own top-1 next token".
PREDICTION = "prediction"


@dataclass(kw_only=True)
class PromptOptions(Options):
    """Prompts (a JSONL file or ``--prompt`` flags) and their targets."""

    prompts: Path | None = opt(None, "JSONL file, one {\"prompt\", \"target\"?, \"id\"?} per line.")
    prompt: list[str] = opt([], "A prompt (repeatable).")
    target: list[str] = opt([], "Target: a word, id:N, or 'prediction' (default); one for all prompts or one "
                                   "per prompt.")
    leading_space: bool = opt(True, "Target words get a leading space (' Paris'); --no-leading-space for bare "
                                       "tokens ('A').")
    first_piece: bool = opt(False, "Score the first piece of a target word that the tokenizer splits (off: such "
                                      "a target is refused).")
    chat: bool = opt(False, "Wrap prompts in the tokenizer's chat template.")

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.prompts is not None and self.prompt:
            problems.append("give prompts either in a file (--prompts) or as --prompt flags, not both")
        if self.prompt and len(self.target) not in (0, 1, len(self.prompt)):
            problems.append(f"{len(self.target)} --target flags for {len(self.prompt)} --prompt flags: give one "
                            "target for all prompts or one per prompt")
        if self.prompts is not None and len(self.target) > 1:
            problems.append("with --prompts, --target gives one default target for records without one")
        empty = [str(number) for number, text in enumerate(self.prompt) if not text.strip()]
        if empty:
            problems.append(f"prompts {', '.join(empty)} are empty; give text to run the model on")
        return problems

    @property
    def has_prompts(self) -> bool:
        return self.prompts is not None or bool(self.prompt)


@dataclass(kw_only=True)
class NeuronOptions(Options):
    """A neuron set: ``--neurons layer:index,...`` or the selection of a locate run (``--run``)."""

    neurons: str | None = opt(None, "Neurons as layer:index pairs, e.g. '3:17,5:2' (mixture-of-experts models: "
                                    "layer:expert:index, e.g. '1:5:26').")
    run: Path | None = opt(None, "A locate run folder whose selected neurons (neurons.json) to use.")

    def neurons_optional(self) -> bool:
        """Whether the workflow can run without neurons (e.g. ``intervene --drop-expert``)."""
        return False

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.neurons and self.run:
            problems.append("give either --neurons or --run, not both")
        elif not self.neurons and not self.run and not self.neurons_optional():
            problems.append("no neurons given: pass --neurons 'layer:index,...' or --run RUN_DIR (a locate run)")
        elif self.neurons:
            try:
                parse_neurons(self.neurons)
            except Exception as error:  # noqa: BLE001 - OptionError; reported with the others
                problems.append(str(error))
        return problems
