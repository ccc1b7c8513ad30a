"""Readers of the data formats users already have, with validation that names file, record and field.

Every reader returns typed records (dataclasses) or raises one `neuronscope.errors.InputError` listing every
problem it found, one line each: `<file>: <record>: field '<field>': <what is wrong>; <what to do>`.

| reader | format |
| --- | --- |
| `read_qrneuron_mcqa` | qrneuron MCQA JSON `{id: {"sentences", "obj_label", "relation_name"}}` |
| `read_mcqa_jsonl` (+ `render_prompt_variants`) | `{"question", "options", "answer", "domain"}` per line |
| `read_prompts_jsonl` | `{"prompt", "target"?, "id"?, ...}` per line |
| `read_coco_captions`, `read_sbu_captions`, `read_image_folder`, `read_vqa_jsonl` | images (+ captions, QA) |
| `load_config` | YAML / JSON option files for the CLI |

Example:
    >>> from neuronscope.data import read_prompts_jsonl
    >>> prompts = read_prompts_jsonl("prompts.jsonl")  # doctest: +SKIP
"""

from neuronscope.data.config import load_config
from neuronscope.data.images import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    ImageRecord,
    SkippedInput,
    read_coco_captions,
    read_image_folder,
    read_sbu_captions,
    read_vqa_jsonl,
)
from neuronscope.data.mcqa import (
    MCQAItem,
    PromptVariant,
    QRNeuronQuery,
    read_mcqa_jsonl,
    read_qrneuron_mcqa,
    render_prompt_variants,
)
from neuronscope.data.prompts import PromptRecord, read_prompts_jsonl

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageRecord",
    "MCQAItem",
    "PromptRecord",
    "PromptVariant",
    "QRNeuronQuery",
    "SkippedInput",
    "load_config",
    "read_coco_captions",
    "read_image_folder",
    "read_mcqa_jsonl",
    "read_prompts_jsonl",
    "read_qrneuron_mcqa",
    "read_sbu_captions",
    "read_vqa_jsonl",
    "render_prompt_variants",
]
