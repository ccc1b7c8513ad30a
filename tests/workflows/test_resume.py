"""Resume equals an uninterrupted run, for every workflow that loops over examples (the registry says which).

Each workflow runs once straight through, and once killed after its first stored example (a KeyboardInterrupt
inside the one run loop) and resumed with ``resume=True``: the examples' ledger, merged, and the result files must
be identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.pipeline_vlms import chat_vlm
from helpers.tiny_vlms import gradient_image
from helpers.word_models import save_tiny_llama
from neuronscope.runs.shards import merge_shards
from neuronscope.workflows import run
from neuronscope.workflows.registry import list_workflows

LOOPING = sorted(workflow.name for workflow in list_workflows() if workflow.loops)


def _tiny_llama(tmp_path: Path) -> dict:
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "the capital of france is", "target": "paris"}, {"prompt": "grass is", "target": "green"},
            {"prompt": "the colour of the sky is", "target": "blue"}, {"prompt": "the cat and the dog"}]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"model": str(save_tiny_llama(tmp_path / "llama")), "prompts": prompts, "batch_size": 1, "top_k": 4}


def _tiny_llava(tmp_path: Path) -> str:
    vlm = chat_vlm("llava")
    folder = tmp_path / "llava"
    vlm.model.save_pretrained(folder)
    vlm.processor.save_pretrained(folder)
    return str(folder)


def _images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, size in (("a.png", (40, 30)), ("b.png", (50, 50)), ("c.png", (30, 40))):
        gradient_image(*size).save(folder / name)
    return folder


def _multimodal(tmp_path: Path) -> dict:
    return {"model": _tiny_llava(tmp_path), "images": _images(tmp_path), "concepts": "a,b", "top_k": 20,
            "max_new_tokens": 3, "batch_size": 1, "heatmaps": 0}


def _patches(tmp_path: Path) -> dict:
    images = _images(tmp_path)
    lines = [{"image": "a.png", "question": "What?"}, {"image": "b.png", "question": "Where?"},
             {"image": "c.png", "question": "Which?"}]
    questions = images / "vqa.jsonl"
    questions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {"model": _tiny_llava(tmp_path), "questions": questions}


def _logit_lens(tmp_path: Path) -> dict:
    return {"model": _tiny_llava(tmp_path), "images": _images(tmp_path), "prompt": "What?", "words": "a",
            "leading_space": False, "drawn": 1}


def _vqa(tmp_path: Path) -> dict:
    images = _images(tmp_path)
    lines = [{"image": name, "question": "What?", "answer": "a", "context": "it is a."} for name in
             ("a.png", "b.png", "c.png")]
    questions = images / "vqa.jsonl"
    questions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {"model": _tiny_llava(tmp_path), "questions": questions, "leading_space": False, "drawn": 1}


def _base_vs_vlm(tmp_path: Path) -> dict:
    from neuronscope.bundled.base_lm import text_model_of

    vlm = chat_vlm("llava")
    text_model_of(vlm.model).save_pretrained(tmp_path / "base")
    vlm.processor.tokenizer.save_pretrained(tmp_path / "base")
    return {"model": _tiny_llava(tmp_path), "base_model": str(tmp_path / "base"), "prompt": ["ab", "cd", "ef"],
            "top_k": 4}


CASES = {"recipe base-vs-vlm": _base_vs_vlm, "locate": _tiny_llama, "recipe multimodal": _multimodal, "recipe patches": _patches,
         "recipe logit-lens": _logit_lens, "recipe vqa": _vqa}
RESULT_FILES = ("scores.safetensors", "neurons.csv", "top_tokens.json", "pairs.safetensors", "pairs.json",
                "concepts.json", "captions.json", "patches.csv", "tables/lens_top_tokens.csv",
                "tables/lens_word_ranks.csv", "tables/heads.csv",
                "tables/questions.csv", "tables/cna_neurons.csv", "tables/prompts.csv")


def test_every_looping_workflow_has_a_case():
    assert set(LOOPING) == set(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("name", LOOPING)
def test_resume_equals_uninterrupted(name, tmp_path, monkeypatch):
    import neuronscope.runs.loop as loop

    torch.manual_seed(0)
    options = CASES[name](tmp_path)
    run(name, out=tmp_path / "whole", **options)
    real, calls = loop._store, {"n": 0}

    def killed_after_the_first(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(loop, "_store", killed_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        run(name, out=tmp_path / "cut", **options)
    monkeypatch.setattr(loop, "_store", real)
    assert calls["n"] == 2
    assert len((tmp_path / "cut").glob("progress/*.jsonl").__next__().read_text().splitlines()) == 1
    run(name, out=tmp_path / "cut", resume=True, **options)
    whole, cut = merge_shards(tmp_path / "whole", name="check"), merge_shards(tmp_path / "cut", name="check")
    assert whole.records == cut.records and whole.indices == cut.indices
    assert whole.tensors.keys() == cut.tensors.keys()
    for key, tensor in whole.tensors.items():
        assert torch.equal(tensor, cut.tensors[key]), key
    compared = 0
    for file in RESULT_FILES:
        if (tmp_path / "whole" / file).exists():
            compared += 1
            assert (tmp_path / "whole" / file).read_bytes() == (tmp_path / "cut" / file).read_bytes(), file
    assert compared >= 1
