"""What goes into a model: batches, targets, and readers of the formats users already have.

| module | what |
| --- | --- |
| :mod:`.batch` | :class:`Batch` (left-padded, with attention mask), ``encode_prompts``, ``encode_images``, ``generate`` |
| :mod:`.targets` | :class:`TargetSet`, target specs (``word``, ``id:N``, ``prediction``) resolved to one token each |
| :mod:`.prompts` | :class:`PromptRecord` and ``read_prompts_jsonl`` |
| :mod:`.images` | :class:`ImageRecord`, :class:`ImageDataset`: COCO / SBU captions, image folders, VQA JSONL |
| :mod:`.mcqa` | multiple-choice questions (qrneuron JSON, JSONL) and their prompt variants |
| :mod:`.icl` | in-context-learning prompts: labelled TSVs (``data/icl``), k-shot prompts, label-token positions |
| :mod:`.config` | YAML / JSON option files |

Every reader returns typed records or raises one :class:`~neuronscope.errors.InputError` listing every problem
it found, one line each: ``<file>: <record>: field '<field>': <what is wrong>; <what to do>``.

Names are imported lazily (``from neuronscope.inputs import read_prompts_jsonl`` loads only that reader).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    **dict.fromkeys(("Batch", "Generation", "encode_prompts", "encode_images", "generate", "to_model",
                     "DEFAULT_CAPTION_PROMPT", "DEFAULT_CAPTION_PREFIX"), "neuronscope.inputs.batch"),
    **dict.fromkeys(("TargetSet", "word_token", "word_targets", "token_targets", "prediction_targets",
                     "continuation_targets"), "neuronscope.inputs.targets"),
    **dict.fromkeys(("PromptRecord", "read_prompts_jsonl"), "neuronscope.inputs.prompts"),
    **dict.fromkeys(("IMAGE_EXTENSIONS", "ImageDataset", "ImageRecord", "SkippedInput", "read_coco_captions",
                     "read_image_folder", "read_sbu_captions", "read_vqa_jsonl"), "neuronscope.inputs.images"),
    **dict.fromkeys(("MCQAItem", "PromptVariant", "QRNeuronQuery", "read_mcqa_jsonl", "read_qrneuron_mcqa",
                     "render_prompt_variants"), "neuronscope.inputs.mcqa"),
    **dict.fromkeys(("ICLBatch", "ICLPrompt", "ICLTemplate", "LabelledDataset", "encode_icl", "read_icl_dataset",
                     "read_labelled_tsv", "sample_prompts"), "neuronscope.inputs.icl"),
    "load_config": "neuronscope.inputs.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'neuronscope.inputs' has no attribute '{name}'")
