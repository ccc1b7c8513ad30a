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

from neuronscope._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("Batch", "Generation", "encode_prompts", "encode_images", "generate", "to_model",
                     "DEFAULT_CAPTION_PROMPT", "DEFAULT_CAPTION_PREFIX"), "neuronscope.inputs.batch"),
    **dict.fromkeys(("TargetSet", "TargetSpec", "PREDICTION", "word_token", "word_pieces", "word_targets",
                     "token_targets", "prediction_targets", "continuation_targets", "parse_target", "resolve_target",
                     "resolve_targets", "last_position_targets", "first_token"), "neuronscope.inputs.targets"),
    **dict.fromkeys(("PromptRecord", "read_prompts_jsonl", "prompt_records"), "neuronscope.inputs.prompts"),
    **dict.fromkeys(("IMAGE_EXTENSIONS", "ImageDataset", "ImageRecord", "SkippedInput", "read_coco_captions",
                     "read_image_folder", "read_sbu_captions", "read_vqa_jsonl", "read_images", "image_records",
                     "load_image"), "neuronscope.inputs.images"),
    **dict.fromkeys(("MCQAItem", "PromptVariant", "QRNeuronQuery", "read_mcqa_jsonl", "read_qrneuron_mcqa",
                     "render_prompt_variants"), "neuronscope.inputs.mcqa"),
    **dict.fromkeys(("ICLBatch", "ICLPrompt", "ICLTemplate", "LabelledDataset", "encode_icl", "read_icl_dataset",
                     "read_labelled_tsv", "sample_prompts"), "neuronscope.inputs.icl"),
    "load_config": "neuronscope.inputs.config",
}


__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
