"""``recipe vqa``: VQA and TQA head rankings equal the brute-force ablation order (each head zeroed by a plain hook
on the stock o_proj input) on a tiny LLaVA where the two must agree; the ``--ablation`` effects equal those hooks;
the TQA prompt, the comparison math, the bundled run against direct forwards, and the refusals."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from helpers.pipeline_vlms import chat_vlm
from helpers.tiny_vlms import gradient_image
from neuronscope.errors import OptionError
from neuronscope.models.loading import LoadedModel
from neuronscope.runs.folder import RunDir
from neuronscope.workflows import run
from neuronscope.workflows.specs.vision import VQAOptions
from neuronscope.workflows.vqa_mechanism import (
    compare_head_maps,
    head_order,
    layer_shares,
    text_question_batch,
)

QUESTION, CONTEXT = "What?", "the sky is blue."


def _agreeing_llava(active_layer: int):
    """A tiny float64 LLaVA whose heads' LPI order and ablation order must agree: only ``active_layer``'s heads
    write (the other layer's attention output and every FFN output are zero, so nothing reads a head's write but
    the final norm), and the final norm's epsilon is so large that the read-out is almost linear (LPI and zeroing
    then both measure ``∇ log p · v_h``)."""
    vlm = chat_vlm("llava", seed=4)
    model = vlm.model.double()
    language_model = model.model.language_model
    with torch.no_grad():
        for number, layer in enumerate(language_model.layers):
            layer.mlp.down_proj.weight.zero_()
            if number != active_layer:
                layer.self_attn.o_proj.weight.zero_()
    language_model.norm.variance_epsilon = 100.0
    return vlm


def _zeroed_by_hand(model, inputs, token: int) -> torch.Tensor:
    """``[layers, heads]`` drop of log p(token) when a head's slice of o_proj's input is zeroed at the last position."""
    config = model.config.text_config
    head_dim = config.hidden_size // config.num_attention_heads

    def log_prob() -> float:
        with torch.no_grad():
            return float(model(**inputs).logits[0, -1].double().log_softmax(-1)[token])

    base = log_prob()
    layers = model.model.language_model.layers
    drops = torch.zeros(len(layers), config.num_attention_heads, dtype=torch.float64)
    for number, layer in enumerate(layers):
        for head in range(config.num_attention_heads):
            def zero(module, args, head=head):
                x = args[0].clone()
                x[:, -1, head * head_dim:(head + 1) * head_dim] = 0
                return (x,)

            handle = layer.self_attn.o_proj.register_forward_pre_hook(zero)
            try:
                drops[number, head] = base - log_prob()
            finally:
                handle.remove()
    return drops


@pytest.mark.parametrize("active_layer", [0, 1])
def test_vqa_and_tqa_rankings_equal_the_brute_force_ablation_order(tmp_path, active_layer):
    vlm = _agreeing_llava(active_layer)
    model, processor = vlm.model, vlm.processor
    gradient_image(40, 30).save(tmp_path / "a.png")
    answer = "b"
    line = {"image": "a.png", "question": QUESTION, "answer": answer, "context": CONTEXT}
    (tmp_path / "vqa.jsonl").write_text(json.dumps(line) + "\n")
    result = run("recipe vqa", loaded=LoadedModel(model, processor, "tiny"), model="tiny",
                 questions=tmp_path / "vqa.jsonl", leading_space=False, ablation=True, top_heads=2,
                 out=tmp_path / "vqa")
    folder = RunDir.open(tmp_path / "vqa")
    tensors, record = folder.read_example(folder.ledger_entries()[0]["key"])
    token = processor.tokenizer.convert_tokens_to_ids(answer)
    vqa_inputs = processor(images=[gradient_image(40, 30)], return_tensors="pt",
                           text=processor.apply_chat_template([{"role": "user", "content": [
                               {"type": "image"}, {"type": "text", "text": QUESTION}]}],
                               add_generation_prompt=True, tokenize=False))
    tqa_text = processor.apply_chat_template([{"role": "user", "content": [
        {"type": "text", "text": f"{CONTEXT} {QUESTION}"}]}], add_generation_prompt=True, tokenize=False)
    tqa_inputs = processor.tokenizer([tqa_text], return_tensors="pt")
    for condition, inputs in (("vqa", vqa_inputs), ("tqa", tqa_inputs)):
        by_hand = _zeroed_by_hand(model, dict(inputs), token)
        assert by_hand[active_layer].abs().min() > 0 and by_hand[1 - active_layer].abs().max() == 0
        torch.testing.assert_close(tensors[f"{condition}_ablation"], by_hand, rtol=1e-9, atol=1e-12)
        assert torch.equal(head_order(tensors[f"{condition}_lpi"]), head_order(by_hand)), condition
    with open(tmp_path / "vqa" / "tables" / "heads.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert all(row["vqa_lpi_rank"] == row["vqa_ablation_rank"] for row in rows)
    assert result.metrics["vqa_lpi_vs_ablation"]["spearman"] == pytest.approx(1.0)
    assert result.metrics["tqa_lpi_vs_ablation"]["spearman"] == pytest.approx(1.0)
    assert record["question"] == QUESTION and (tmp_path / "vqa" / "plots" / "heads_vqa_tqa.png").is_file()
    assert (tmp_path / "vqa" / "heatmaps" / "q0.patches.png").is_file()


def test_tqa_prompt_is_the_chat_template_without_the_image():
    vlm = chat_vlm("llava")
    batch = text_question_batch(vlm.processor, f"{CONTEXT} {QUESTION}")
    assert batch.texts == [f"{CONTEXT} {QUESTION}A:"]  # the tiny template's generation prompt (trim_blocks)
    assert vlm.model.config.image_token_id not in batch.input_ids[0].tolist()


def test_comparison_math_by_hand():
    a = torch.tensor([[3.0, 1.0], [2.0, -1.0]])
    b = torch.tensor([[0.0, 1.0], [5.0, -2.0]])
    assert head_order(a).tolist() == [[0, 0], [1, 0], [0, 1], [1, 1]]
    compared = compare_head_maps(a, b, 2)
    assert compared["top_a"] == [[0, 0], [1, 0]] and compared["top_b"] == [[1, 0], [0, 1]]
    assert compared["top_overlap"] == 0.5
    # ranks a: 4, 2, 3, 1 (ascending 0-based: 3, 1, 2, 0); b: 0 -> 1, 1 -> 2, 5 -> 3, -2 -> 0
    assert compared["spearman"] == pytest.approx(float(torch.corrcoef(
        torch.tensor([[3.0, 1.0, 2.0, 0.0], [1.0, 2.0, 3.0, 0.0]]))[0, 1]))
    assert layer_shares(a).tolist() == [4 / 6, 2 / 6]
    assert layer_shares(-a.abs()).tolist() == [0.0, 0.0]


def test_bundled_colour_questions_against_direct_forwards(tmp_path):
    from neuronscope.bundled import load_shapes_vlm
    from neuronscope.workflows.vqa_mechanism import bundled_colour_questions

    result = run("recipe vqa", bundled_scenes=2, drawn=1, out=tmp_path / "vqa")
    model, processor = load_shapes_vlm()
    with open(tmp_path / "vqa" / "tables" / "questions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for question, row in zip(bundled_colour_questions(2), rows, strict=True):
        record = question.record
        assert row["question"] == record.question and row["answer"] == record.answer
        assert record.context == f"The {record.question.split()[-1][:-1]} is {record.answer}."
        text = processor.apply_chat_template([{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": record.question}]}], add_generation_prompt=True,
            tokenize=False)
        with torch.no_grad():
            logits = model(**processor(text=text, images=record.load(), return_tensors="pt")).logits[0, -1]
        assert row["vqa_prediction"] == processor.tokenizer.decode([int(logits.argmax())])
    assert result.metrics["questions_done"] == 2 and result.metrics["top_patch_on_object"] is not None
    # the patch figures by hand: the best cell of the stored patch map against the scene's object mask
    from neuronscope.runs.folder import RunDir

    stored = RunDir(tmp_path / "vqa", resume=True)
    by_hand = []
    for entry in sorted(stored.ledger_entries(), key=lambda e: int(e["index"])):
        tensors, record = stored.read_example(entry["key"])
        question = bundled_colour_questions(2)[int(entry["index"])]
        # LLaVA's 64 image tokens are the 8 x 8 grid row-major (tests/models/test_image_layout_bundled.py)
        assert tensors["patch_scores"].shape == question.coverage.shape
        best = question.coverage[int(tensors["patch_scores"].argmax())]
        by_hand.append((float(best >= 0.5), float(best > 0), float((question.coverage >= 0.5).double().mean()),
                        float((question.coverage > 0).double().mean())))
        assert (record["top_patch_on_object"], record["top_patch_touches_object"], record["on_object_chance"],
                record["touches_object_chance"]) == pytest.approx(by_hand[-1])
    for column, key in enumerate(("top_patch_on_object", "top_patch_touches_object", "on_object_chance",
                                  "touches_object_chance")):
        assert result.metrics[key] == pytest.approx(sum(row[column] for row in by_hand) / 2)


def test_options_are_checked_before_any_model(tmp_path):
    with pytest.raises(OptionError, match="--questions .* or --bundled-scenes"):
        VQAOptions(out=tmp_path / "x")
    with pytest.raises(OptionError, match="--model"):
        VQAOptions(questions=tmp_path / "q.jsonl", out=tmp_path / "x")
    with pytest.raises(OptionError, match="--top-heads 0"):
        VQAOptions(bundled_scenes=2, top_heads=0, out=tmp_path / "x")
