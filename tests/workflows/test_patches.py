"""Important image patches: per-source writes sum to the head's output, per-source LPIs equal a hand-computed
frozen-norm readout, a planted value lands as the top patch, the rank correlation, files and no-map families."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from helpers.pipeline_vlms import chat_vlm
from helpers.tiny_vlms import gradient_image
from neuronscope.inputs import encode_images
from neuronscope.models import get_adapter
from neuronscope.models.image_layout import image_layout
from neuronscope.runs import RunDir
from neuronscope.trace import capture
from neuronscope.workflows.patches import (
    head_source_contributions,
    important_patches,
    min_max,
    rank_correlation,
)

IMAGE = gradient_image(40, 30)


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def vlm64(request):
    vlm = chat_vlm(request.param, seed=3)
    vlm.model.to(torch.float64)
    return vlm


def test_source_writes_sum_to_the_head_output_and_their_lpi_matches_a_hand_readout(vlm64):
    model, processor = vlm64.model, vlm64.processor
    adapter = get_adapter(model)
    batch = encode_images(processor, [IMAGE], "What?")
    layer, head = 1, 2
    contributions, attention = head_source_contributions(model, batch, layer, head)
    with torch.no_grad(), capture(model, sites=["attn", "resid_pre", "resid_post"], positions="last") as acts:
        logits = model(**batch.inputs).logits[0, -1]
    head_site = acts.get("attn", layer)[0, 0, adapter.head_slice(head)]
    head_output = head_site @ adapter.attn_output_weight(layer)[adapter.head_slice(head)]
    # heads.weighted_values computes in float32, hence the float32 tolerance
    torch.testing.assert_close(contributions.sum(0), head_output, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(attention.sum(), torch.tensor(1.0), rtol=1e-6, atol=1e-6)
    # per-source LPI by hand: log softmax(W_U (g ⊙ (r + c_s) / σ))[w] − log softmax(W_U (g ⊙ r / σ))[w]
    found = important_patches(model, processor, IMAGE, "What?", heads=[(layer, head)])
    answer = int(logits.argmax())
    assert found.answer_token == answer
    norm = adapter.final_norm()
    sigma = norm.scale(acts.get("resid_post", adapter.n_layers - 1)[0, 0])
    residual = acts.get("resid_pre", layer)[0, 0]
    unembed = adapter.unembedding().double()

    def log_prob(x):
        return torch.log_softmax(unembed @ (norm.gain.double() * x / sigma), -1)[answer]

    layout = image_layout(model, batch.inputs, 0)
    expected = torch.stack([log_prob(residual + contributions[s]) - log_prob(residual) for s in layout.positions])
    torch.testing.assert_close(found.raw[0].double(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(found.scores, min_max(found.raw[0]))
    assert float(found.scores.min()) == 0.0 and float(found.scores.max()) == 1.0


def test_a_planted_value_becomes_the_top_patch():
    vlm = chat_vlm("llava", seed=4)
    vlm.model.to(torch.float64)
    model, processor = vlm.model, vlm.processor
    adapter = get_adapter(model)
    layer, head = 1, 1
    batch = encode_images(processor, [IMAGE], "What?")
    layout = image_layout(model, batch.inputs, 0)
    with torch.no_grad():
        answer = int(model(**batch.inputs).logits[0, -1].argmax())
    planted = int(layout.positions[23])
    # a value at the planted position that, through W_O of the head, writes along the answer's frozen readout
    readout = adapter.unembedding()[answer].double() * adapter.final_norm().gain.double()
    direction = adapter.attn_output_weight(layer)[adapter.head_slice(head)].double() @ readout  # [d_head]
    kv = head // (adapter.n_heads // adapter.n_kv_heads)
    v_proj = adapter.layers[layer].self_attn.v_proj

    def plant(module, args, output):
        output = output.clone()
        output[:, planted, kv * adapter.head_dim:(kv + 1) * adapter.head_dim] += 200 * direction / direction.norm()
        return output

    handle = v_proj.register_forward_hook(plant)
    try:
        found = important_patches(model, processor, IMAGE, "What?", heads=[(layer, head)], answer_token=answer)
    finally:
        handle.remove()
    assert int(found.positions[found.scores.argmax()]) == planted
    assert float(found.scores.max()) == 1.0 and float(found.scores.min()) == 0.0


def test_rank_correlation_matches_pearson_of_ranks():
    a = torch.tensor([0.3, 0.1, 0.9, 0.5, 0.7])
    b = torch.tensor([1.0, 3.0, 5.0, 2.0, 4.0])
    ra = torch.tensor([1.0, 0.0, 4.0, 2.0, 3.0])
    rb = torch.tensor([0.0, 2.0, 4.0, 1.0, 3.0])
    expected = float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
    assert rank_correlation(a, b) == pytest.approx(expected)
    assert rank_correlation(a, a * 10 + 1) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    # ties share their mean rank
    assert rank_correlation(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([0.0, 0.0, 5.0])) == pytest.approx(1.0)


def test_files_for_a_grid_model_and_a_reason_for_learned_queries(tmp_path):
    vlm = chat_vlm("idefics3")
    run = RunDir(tmp_path / "grid")
    found = important_patches(vlm.model, vlm.processor, IMAGE, "What?", top_heads=2, out=run)
    assert found.drawn and len(found.heads) == 2
    assert found.heat.shape == (IMAGE.size[1], IMAGE.size[0])
    assert len(found.files) == 4
    for path in found.files:
        with Image.open(path) as written:
            assert written.size == IMAGE.size
    blip = chat_vlm("instructblip")
    run = RunDir(tmp_path / "blip")
    found = important_patches(blip.model, blip.processor, IMAGE, "What?", out=run)
    assert not found.drawn and "instructblip" in found.reason
    assert (tmp_path / "blip" / "heatmaps" / "patches.txt").exists()
    assert not list((tmp_path / "blip").glob("heatmaps/*.png"))


def test_vqa_jsonl_run_counts_skipped_images_and_resumes(tmp_path, monkeypatch):
    import json

    from neuronscope.inputs.images import read_vqa_jsonl
    from neuronscope.workflows import patches

    IMAGE.save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"nope")
    lines = [{"image": "good.png", "question": "What?"}, {"image": "missing.png", "question": "Where?"},
             {"image": "broken.png", "question": "Why?"}, {"image": "good.png", "question": "Which?"}]
    (tmp_path / "vqa.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    vlm = chat_vlm("llava")
    metrics = patches.find_important_patches(vlm.model, vlm.processor, read_vqa_jsonl(tmp_path / "vqa.jsonl"),
                                             run_dir=tmp_path / "run")
    assert metrics["questions_declared"] == 4
    assert metrics["questions_done"] == 2 and metrics["questions_skipped"] == 2
    assert sorted(s["record"] for s in metrics["skipped_inputs"]) == ["2", "3"]  # ids are line numbers
    assert (tmp_path / "run" / "heatmaps" / "q0.patches.png").exists()
    assert (tmp_path / "run" / "patches.csv").read_text().count("\n") == 3
    calls = []
    monkeypatch.setattr(patches, "important_patches", lambda *a, **k: calls.append(1))
    again = patches.find_important_patches(vlm.model, vlm.processor, read_vqa_jsonl(tmp_path / "vqa.jsonl"),
                                           run_dir=tmp_path / "run", resume=True)
    assert not calls and again == metrics
