"""Options of the image workflows: multimodal neurons, important patches, invariance, and the demo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neuronscope.errors import OptionError
from neuronscope.workflows.options import (
    BatchOptions,
    ModelOptions,
    Options,
    RunOptions,
    missing,
    opt,
    parse_layers,
    split_words,
)
from neuronscope.workflows.specs.common import PromptOptions

CAPTION_PROMPT = "Describe the image in few words."
CAPTION_PREFIX = "An image of"


@dataclass(kw_only=True)
class ImageOptions(Options):
    images: Path | None = opt(None, "An image folder, or a COCO / SBU-style captions JSON with image paths.")
    image_root: Path | None = opt(None, "Folder the captions JSON's image paths are relative to.")

    def problems(self) -> list[str]:
        return super().problems() + missing(self, "images")


@dataclass(kw_only=True)
class MultimodalOptions(ModelOptions, ImageOptions, RunOptions, BatchOptions):
    concepts: str | None = opt(None, "Comma-separated concept words (default: the nouns of each caption, through "
                                     "spaCy).")
    top_k: int = opt(10_000, "Neurons kept per (image, noun).", minimum=1)
    site: str = opt("neuron", "neuron (default) or act (the authors' hook).", choices=("neuron", "act"))
    final_norm: bool = opt(False, "Scale scores by the final norm frozen at the target position.")
    max_new_tokens: int = opt(20, "Caption length limit.", minimum=1)
    prompt: str = opt(CAPTION_PROMPT, "The user turn of the captioning prompt.")
    assistant_prefix: str = opt(CAPTION_PREFIX, "How the answer starts ('' for none).")
    rank_by: str = opt("sum", "Rank a concept's neurons by their summed score or their frequency.",
                       choices=("sum", "frequency"))
    report_neurons: int = opt(100, "Neurons listed per concept.", minimum=1)
    heatmaps: int = opt(1, "Images per concept drawn as heatmaps (0: none).", minimum=0)
    heatmap_neurons: int = opt(3, "Single neurons drawn per heatmap image.", minimum=0)
    heatmap_concepts: int = opt(10, "Concepts drawn (the ones with most pairs).", minimum=0)
    heatmap_absolute: bool = opt(False, "Draw |activation| instead of the signed activation.")
    compile: bool = opt(False, "Caption through the torch.compile'd text decoder, prompt and decode steps (dense "
                               "models; the first two batches compile, 50-135 s for a 7B on an H200; a smaller "
                               "last batch is padded to the batch size so as not to compile again). In bf16 its "
                               "fused kernels round differently: captions can differ from uncompiled.",
                        runtime=True)

    def problems(self) -> list[str]:
        return super().problems() + missing(self, "model", "out")


@dataclass(kw_only=True)
class PatchesOptions(ModelOptions, RunOptions):
    questions: Path | None = opt(None, "VQA JSONL: {\"image\", \"question\", \"answer\"?} per line.")
    image_root: Path | None = opt(None, "Folder the JSONL's image paths are relative to.")
    answer_prefix: str | None = opt(None, "How the answer starts (default none).")
    top_heads: int = opt(1, "Heads whose per-patch contributions are summed.", minimum=1)
    percentile: float = opt(95.0, "Heatmap mask: pixels above this percentile.", minimum=0.0, maximum=100.0)

    def problems(self) -> list[str]:
        return super().problems() + missing(self, "model", "questions", "out")


@dataclass(kw_only=True)
class InvarianceOptions(ModelOptions, ImageOptions):
    run: Path | None = opt(None, "A finished 'recipe multimodal' run folder (its captions and neurons).")
    k: int = opt(1000, "Neurons per set compared.", minimum=1)
    seeds: str = opt("0", "Shuffle seeds, comma-separated.")
    scope: str = opt("tile", "Shuffle within each tile or within the whole image.", choices=("tile", "image"))
    concepts: str | None = opt(None, "Only these comma-separated concepts (default all).")
    max_images: int | None = opt(None, "Stop after this many images.", minimum=1)
    sensitivity_k: int = opt(10, "Top tokens per neuron for semantic sensitivity.", minimum=1)
    sensitivity_neurons: int = opt(20, "A concept's neurons checked for semantic sensitivity.", minimum=1)
    synonyms: str | None = opt(None, "Other words that count for a concept in semantic sensitivity, e.g. "
                                     "'dog=puppy,hound;cat=kitten'.")
    out: Path | None = opt(None, "Results folder.", short="-o", runtime=True)
    overwrite: bool = opt(False, "Replace an earlier run in --out.", runtime=True)

    def problems(self) -> list[str]:
        problems = super().problems() + missing(self, "run", "out")
        try:
            parse_synonyms(self.synonyms)
        except Exception as error:  # noqa: BLE001 - an OptionError naming the flag
            problems.append(str(error))
        try:
            [int(seed) for seed in self.seeds.split(",") if seed.strip()]
        except ValueError:
            problems.append(f"--seeds {self.seeds!r}: write integers separated by commas, e.g. '0,1,2'")
        return problems


def parse_synonyms(text: str | None) -> dict[str, list[str]]:
    """``"dog=puppy,hound;cat=kitten"`` -> ``{"dog": ["puppy", "hound"], "cat": ["kitten"]}``.

    Raises:
        OptionError: a group without ``=``, or without a concept or words.

    Example:
        >>> parse_synonyms("dog=puppy, hound; cat=kitten")
        {'dog': ['puppy', 'hound'], 'cat': ['kitten']}
    """
    found: dict[str, list[str]] = {}
    for group in str(text or "").split(";"):
        if not group.strip():
            continue
        concept, sep, words = group.partition("=")
        if not sep or not concept.strip() or not split_words(words):
            raise OptionError(f"--synonyms {text!r}: write concept=word,word groups separated by ';', e.g. "
                              "'dog=puppy,hound;cat=kitten'")
        found.setdefault(concept.strip(), []).extend(split_words(words))
    return found


@dataclass(kw_only=True)
class BundledScenesOptions(Options):
    """Held-out scenes of the bundled shapes world instead of user images (the model defaults to the bundled one)."""

    bundled_scenes: int | None = opt(None, "Instead of --images / --questions: this many held-out scenes of the "
                                           "bundled shapes world, with their object masks.", minimum=1)
    seed: int = opt(0, "Seed of the bundled scenes.")


@dataclass(kw_only=True)
class LogitLensOptions(ModelOptions, BundledScenesOptions, RunOptions):
    images: Path | None = opt(None, "An image folder, or a COCO / SBU-style captions JSON with image paths.")
    image_root: Path | None = opt(None, "Folder the captions JSON's image paths are relative to.")
    prompt: str = opt(CAPTION_PROMPT, "The user turn that holds the image.")
    assistant_prefix: str = opt(CAPTION_PREFIX, "How the answer starts ('' for none).")
    words: str | None = opt(None, "Comma-separated words whose rank is kept per patch and stage (with "
                                  "--bundled-scenes: the six colours).")
    leading_space: bool = opt(True, "The words get a leading space (' dog'); --no-leading-space for bare tokens.")
    k: int = opt(3, "Top tokens kept per patch and stage.", minimum=1, short="-k")
    stages: str | None = opt(None, "Read-outs: 0 = the visual embeddings after the projector, l = the output of "
                                   "layer l-1; e.g. '0,8,16' (default all).")
    drawn: int = opt(4, "Images drawn as token grids (PNG per stage).", minimum=0)
    max_images: int | None = opt(None, "Stop after this many images.", minimum=1)

    def problems(self) -> list[str]:
        problems = super().problems() + missing(self, "out")
        if (self.images is None) == (self.bundled_scenes is None):
            problems.append("give --images (a folder or captions file) or --bundled-scenes N, not both or neither")
        elif self.bundled_scenes is None:
            problems += missing(self, "model")
        try:
            layers = parse_layers(self.stages, "--stages")
            if layers is not None and any(stage < 0 for stage in layers):
                problems.append(f"--stages {self.stages!r}: stages count from 0 (the embeddings)")
        except Exception as error:  # noqa: BLE001 - an InputError naming the flag
            problems.append(str(error))
        return problems


@dataclass(kw_only=True)
class VQAOptions(ModelOptions, BundledScenesOptions, RunOptions):
    questions: Path | None = opt(None, "VQA JSONL: {\"image\", \"question\", \"answer\", \"context\"?} per line "
                                       "(context states the answer in words, for the question asked as text).")
    image_root: Path | None = opt(None, "Folder the JSONL's image paths are relative to.")
    answer_prefix: str | None = opt(None, "How the answer starts (default none).")
    leading_space: bool = opt(True, "Answers get a leading space (' red'); --no-leading-space for bare tokens.")
    top_heads: int = opt(3, "Top heads compared between VQA and TQA (overlap, framed in the plot).", minimum=1)
    patch_heads: int = opt(1, "Top VQA heads whose per-patch contributions make the patch map.", minimum=1)
    ablation: bool = opt(False, "Also zero each head at the last position (one forward per head and question) "
                                "and compare that ranking with LPI.")
    drawn: int = opt(4, "Questions whose important patches are drawn over the image.", minimum=0)
    max_questions: int | None = opt(None, "Stop after this many questions.", minimum=1)

    def problems(self) -> list[str]:
        problems = super().problems() + missing(self, "out")
        if (self.questions is None) == (self.bundled_scenes is None):
            problems.append("give --questions (a VQA JSONL) or --bundled-scenes N, not both or neither")
        elif self.bundled_scenes is None:
            problems += missing(self, "model")
        return problems


@dataclass(kw_only=True)
class BaseVsVLMOptions(ModelOptions, PromptOptions, RunOptions):
    base_model: str | None = opt(None, "The text LM the VLM (--model) was trained from: a folder or hub id.")
    base_gguf_file: str | None = opt(None, "A GGUF file inside the --base-model folder.")
    bundled_facts: bool = opt(False, "Use the bundled shapes model's text facts as the prompts (and it as --model "
                                     "when none is given).")
    top_k: int = opt(20, "Neurons compared (top-k overlap) and listed (those CNA raises most).", minimum=1)
    top_heads: int = opt(5, "Heads compared (top-k overlap).", minimum=1)

    def problems(self) -> list[str]:
        problems = super().problems() + missing(self, "base_model", "out")
        if self.bundled_facts == self.has_prompts:
            problems.append("give prompts (--prompts FILE or --prompt TEXT) or --bundled-facts, not both or neither")
        elif not self.bundled_facts:
            problems += missing(self, "model")
        return problems


@dataclass(kw_only=True)
class DemoOptions(Options):
    out: Path = opt(Path("neuronscope-demo"), "Folder for the demo's results.", short="-o", runtime=True)
    quick: bool = opt(False, "A shorter run (fewer images), e.g. for CI.")
    overwrite: bool = opt(False, "Replace another neuronscope run in --out (an earlier demo is always replaced).",
                          runtime=True)
