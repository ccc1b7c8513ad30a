"""Option groups shared by several workflows: prompts with their targets, and a neuron set to act on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


#: ``--selection`` choices (see :mod:`neuronscope.aggregate.specific`).
SELECTIONS = ("plain", "contrast", "inverse-frequency", "paraphrase")
BACKGROUND_HELP = ("JSONL prompts whose answers should not change: other facts of the same template, other templates "
                   "(a record's \"group\" names its group, its \"target\" its answer, default the model's own next "
                   "token). Default: a built-in set of short facts in 8 templates.")


@dataclass(kw_only=True)
class SpecificityOptions(Options):
    """Background prompts and the specificity measurement every run reports (target / background / random)."""

    background: Path | None = opt(None, BACKGROUND_HELP)
    specificity: bool = opt(True, "Measure specificity: the change of the target and background prompts' answers, and "
                                  "of random same-layer sets (--no-specificity skips it).")
    draws: int = opt(5, "Random same-layer neuron sets of the specificity measurement.", minimum=0)
    seed: int = opt(0, "Seed of the random sets.")


@dataclass(kw_only=True)
class SelectionOptions(Options):
    """How the neurons are selected from the scores: plain, or specific against the background prompts."""

    selection: str = opt("plain", "plain (the mean score), contrast (mean normalised score minus --strength x the "
                                  "background's, as CNA), inverse-frequency (QRNCA's ICA and common-neuron removal "
                                  "against the background) or paraphrase (plain among the neurons in the top set of "
                                  "--agreement prompts, default more than half: the prompts are paraphrases of one "
                                  "fact, as Dai et al.).", choices=SELECTIONS)
    strength: float | None = opt(None, "Background strength: contrast's weight (default 1) or inverse-frequency's "
                                       "common-neuron fraction (default 0.3).", minimum=0.0)
    agreement: int | None = opt(None, "Paraphrase agreement: keep neurons in the top set of at least this many of the "
                                      "prompts (paraphrases of one fact, as Dai et al.).", minimum=1)
    membership: float = opt(0.2, "A prompt's top set: scores above this fraction of its maximum.", minimum=0.0,
                            maximum=0.99)

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.selection == "inverse-frequency" and self.strength is not None and self.strength > 1:
            problems.append(f"--strength {self.strength}: inverse-frequency's strength is a fraction in [0, 1]")
        if self.agreement is not None and len(getattr(self, "prompt", [])) and self.agreement > len(self.prompt):
            problems.append(f"--agreement {self.agreement} needs at least {self.agreement} prompts (paraphrases of "
                            f"the fact); {len(self.prompt)} given")
        return problems

    def specific_selection(self, n_prompts: int = 1) -> Any:
        """The :class:`~neuronscope.aggregate.specific.SpecificSelection` these options name (``paraphrase``: the
        plain rule with ``--agreement``, default ``n_prompts // 2 + 1``)."""
        from neuronscope.aggregate.specific import SpecificSelection

        if self.selection == "paraphrase":
            agreement = self.agreement if self.agreement is not None else n_prompts // 2 + 1
            return SpecificSelection("plain", 1.0, agreement, self.membership)
        default = 0.3 if self.selection == "inverse-frequency" else 1.0
        return SpecificSelection(self.selection, default if self.strength is None else self.strength,
                                 self.agreement, self.membership)
