"""Options of the edit workflows: ``edit make / apply / revert / export`` and the word use cases."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neuronscope.workflows.options import ModelOptions, Options, missing, opt
from neuronscope.workflows.specs.common import NeuronOptions, SpecificityOptions

KINDS = ("erase", "noise", "token-shift", "knowledge-neuron")
REMOVE_METHODS = ("optimised", "erase", "token_shift")
REPLACE_METHODS = ("optimised", "token_shift", "knowledge_neuron")


@dataclass(kw_only=True)
class OutputFolderOptions(Options):
    out: Path | None = opt(None, "Output folder.", short="-o", runtime=True)
    overwrite: bool = opt(False, "Replace an earlier result in --out (only a neuronscope folder is replaced).",
                          runtime=True)

    def problems(self) -> list[str]:
        return super().problems() + missing(self, "out")


@dataclass(kw_only=True)
class EditMakeOptions(ModelOptions, NeuronOptions, SpecificityOptions, OutputFolderOptions):
    kind: str = opt("erase", "erase, noise, token-shift or knowledge-neuron.", choices=KINDS)
    source: str | None = opt(None, "Source token (word or id:N) for token-shift / knowledge-neuron.")
    target: str | None = opt(None, "Target token (word or id:N) for token-shift / knowledge-neuron.")
    strength: float = opt(1.0, "lambda of token-shift.")
    signed: bool = opt(False, "token-shift signed per neuron by sign(<w_i, u_source>), for gated FFN neurons that "
                              "fire negatively (see ValueVectorEdit.token_shift).")
    lambda1: float = opt(1.0, "lambda1 (source) of knowledge-neuron.")
    lambda2: float = opt(1.0, "lambda2 (target) of knowledge-neuron.")
    sigma: float = opt(1.0, "Noise scale of noise.", minimum=0.0)
    seed: int = opt(0, "Seed of noise and of the random edits of the locality measurement.")
    reason: str = opt("", "Why: recorded in the edit file.")
    prompt: list[str] = opt([], "A prompt the edit is for (repeatable): its answer's change is measured before the edit "
                                "is saved (default: the --run's prompts).")
    prompts: Path | None = opt(None, "JSONL prompts the edit is for ({\"prompt\", \"target\"?} per line).")
    chat: bool = opt(False, "Wrap the measured prompts in the chat template.")

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.kind in ("token-shift", "knowledge-neuron") and self.target is None:
            problems.append(f"--kind {self.kind} needs --target (and usually --source)")
        if self.signed and self.source is None:
            problems.append("--signed needs --source (the signs are those of <w_i, u_source>)")
        if self.prompt and self.prompts is not None:
            problems.append("give the edit's prompts either in a file (--prompts) or as --prompt flags, not both")
        return problems


@dataclass(kw_only=True)
class EditApplyOptions(ModelOptions, OutputFolderOptions):
    edit: Path | None = opt(None, "An edit folder made by 'edit make' (or the path prefix of an edit file pair).",
                            short="-e")

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.edit is None:
            problems.append("no edit given: pass --edit EDIT_DIR (made by 'neuronscope edit make')")
        return problems


@dataclass(kw_only=True)
class EditRevertOptions(ModelOptions, OutputFolderOptions):
    def problems(self) -> list[str]:
        return super().problems() + missing(self, "model")


@dataclass(kw_only=True)
class WordPromptOptions(ModelOptions, OutputFolderOptions):
    prompt: list[str] = opt([], "A prompt whose answer says the word (repeatable).")
    prompts: Path | None = opt(None, "JSONL prompts ({\"prompt\": ...} per line).")
    unrelated: list[str] = opt([], "A prompt whose answer must not change (repeatable).")
    chat: bool = opt(False, "Wrap prompts in the chat template.")

    def problems(self) -> list[str]:
        return super().problems() + missing(self, "model")


@dataclass(kw_only=True)
class RemoveWordOptions(WordPromptOptions):
    word: str | None = opt(None, "The word to remove from the answers.")
    method: str = opt("optimised", "optimised (Adam on the value vectors), erase or token_shift.",
                      choices=REMOVE_METHODS)
    top_k: int = opt(20, "Neurons to edit (located where the model says the word).", minimum=1)

    def problems(self) -> list[str]:
        return super().problems() + missing(self, "word")


@dataclass(kw_only=True)
class ReplaceWordOptions(WordPromptOptions):
    source: str | None = opt(None, "The word the model says now (e.g. a hallucinated object).")
    target: str | None = opt(None, "The word it should say instead.")
    method: str = opt("optimised", "optimised, token_shift or knowledge_neuron.", choices=REPLACE_METHODS)
    top_k: int = opt(20, "Neurons to edit (located where the model says the word).", minimum=1)

    def problems(self) -> list[str]:
        return super().problems() + missing(self, "source", "target")


@dataclass(kw_only=True)
class SuppressConceptOptions(NeuronOptions, ModelOptions, OutputFolderOptions):
    words: str | None = opt(None, "Comma-separated words of the concept, for the report.")
    prompt: list[str] = opt([], "A prompt whose answer says the concept (repeatable).")
    prompts: Path | None = opt(None, "JSONL prompts ({\"prompt\": ...} per line).")
    unrelated: list[str] = opt([], "A prompt whose answer must not change (repeatable).")
    chat: bool = opt(False, "Wrap prompts in the chat template.")
