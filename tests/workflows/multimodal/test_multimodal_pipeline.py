"""The multimodal-neurons pipeline on tiny random VLMs: targets at the producing positions, scores equal the
contribution method on a re-forward of the generated sequence, resume == uninterrupted, skipped images counted,
heatmap files, and models without a spatial map saying so."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from helpers.interrupt import interrupt_at_call
from helpers.pipeline_vlms import chat_vlm
from helpers.tiny_vlms import gradient_image
from neuronscope.attribute.contribution import contribution
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models import get_adapter
from neuronscope.trace import capture
from neuronscope.vision.heatmap import image_heatmap
from neuronscope.workflows.multimodal import pipeline as multimodal
from neuronscope.workflows.multimodal.heatmaps import image_token_activations, neuron_heatmaps
from neuronscope.workflows.multimodal.pipeline import find_multimodal_neurons
from neuronscope.workflows.multimodal.results import MultimodalNeurons
from neuronscope.workflows.multimodal.scoring import caption_and_score, encode_captioning

IMAGES = [gradient_image(40, 30), gradient_image(30, 40), gradient_image(48, 48).rotate(90),
          gradient_image(20, 60)]


def _first_word(caption: str) -> str:
    return caption.split()[0]


def _concepts_of(model, processor, images, max_new_tokens=6):
    """Concepts that occur in the captions: the first word of each (the captions are random characters)."""
    _, _, records, _ = caption_and_score(model, processor, images, concepts=["\x00"], top_k=1,
                                         max_new_tokens=max_new_tokens)
    return sorted({_first_word(r["caption"]) for r in records if r["caption"].strip()})


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def vlm64(request):
    vlm = chat_vlm(request.param, seed=1)
    vlm.model.to(torch.float64)
    return vlm


@pytest.mark.parametrize("final_norm", [False, True])
def test_targets_sit_at_producing_positions_and_scores_equal_a_reforward(vlm64, final_norm):
    model, processor = vlm64.model, vlm64.processor
    adapter = get_adapter(model)
    images = IMAGES[:3]  # qwen2_vl: different token counts, so rows are left-padded
    concepts = _concepts_of(model, processor, images)
    assert concepts, "the tiny model produced no caption characters"
    n_all = adapter.n_layers * adapter.d_ff
    batch, sequences, records, tops = caption_and_score(model, processor, images, concepts=concepts,
                                                        top_k=n_all, final_norm=final_norm, max_new_tokens=6)
    rows = [(r, t) for r, record in enumerate(records) for t in record["targets"]]
    assert rows
    for row, target in rows:
        # the token after the producing position is the target token, and it starts the concept's word
        assert int(sequences[row, target["position"] + 1]) == target["token_id"]
        assert processor.tokenizer.decode([target["token_id"]]).strip() == target["word"][0]
    # oracle: the contribution method on one forward of the generated sequences
    width = max(len(record["targets"]) for record in records)
    ids = torch.zeros(len(records), width, dtype=torch.long)
    positions = torch.zeros_like(ids)
    valid = torch.zeros_like(ids, dtype=torch.bool)
    for row, record in enumerate(records):
        for j, target in enumerate(record["targets"]):
            ids[row, j], positions[row, j], valid[row, j] = target["token_id"], target["position"], True
    extra = sequences.shape[1] - batch.seq_len
    mask = torch.cat([batch.inputs["attention_mask"], torch.ones(len(records), extra, dtype=torch.long)], 1)
    inputs = {**batch.inputs, "input_ids": sequences, "attention_mask": mask}
    for key, value in batch.inputs.items():  # per-token extras (qwen2_vl's mm_token_type_ids): text tokens = 0
        if key not in ("input_ids", "attention_mask") and isinstance(value, torch.Tensor) and \
                value.shape[:2] == batch.input_ids.shape:
            inputs[key] = torch.cat([value, value.new_zeros(len(records), extra)], 1)
    reforward = Batch(inputs, batch.texts, mask.sum(-1))
    oracle = contribution(model, reforward, TargetSet(ids, positions, valid), final_norm=final_norm).values
    for row, record in enumerate(records):
        for j in range(len(record["targets"])):
            dense = tops[row].to_dense()[j]
            torch.testing.assert_close(dense, oracle[row, j].to(dense.dtype), rtol=1e-6, atol=1e-9)
            # kept in descending order
            assert bool((tops[row].values[j][:-1] >= tops[row].values[j][1:]).all())


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    vlm = chat_vlm("llava", seed=2)
    model, processor = vlm.model, vlm.processor
    concepts = _concepts_of(model, processor, IMAGES)
    options = dict(concepts=concepts, top_k=16, batch_size=2, max_new_tokens=5, heatmaps=0)
    whole = find_multimodal_neurons(model, processor, IMAGES, run_dir=tmp_path / "whole", **options)

    calls = interrupt_at_call(monkeypatch, multimodal, "caption_and_score")
    with pytest.raises(KeyboardInterrupt):
        find_multimodal_neurons(model, processor, IMAGES, run_dir=tmp_path / "cut", **options)
    calls["n"] = 10  # no more crashes; count the batches the resumed run computes
    resumed = find_multimodal_neurons(model, processor, IMAGES, run_dir=tmp_path / "cut", resume=True, **options)
    assert calls["n"] == 11  # only the second batch was computed again
    assert [c["caption"] for c in resumed.captions] == [c["caption"] for c in whole.captions]
    assert resumed.pairs == whole.pairs
    torch.testing.assert_close(resumed.values, whole.values)
    assert torch.equal(resumed.flat_indices, whole.flat_indices)
    for concept in whole.concepts:
        torch.testing.assert_close(resumed.concept_totals(concept)[0], whole.concept_totals(concept)[0])
    loaded = MultimodalNeurons.load(tmp_path / "cut")
    assert loaded.pairs == whole.pairs and torch.equal(loaded.flat_indices, whole.flat_indices)


def test_concept_totals_are_sums_and_counts_over_pairs(tmp_path):
    vlm = chat_vlm("llava", seed=2)
    concepts = _concepts_of(vlm.model, vlm.processor, IMAGES)
    result = find_multimodal_neurons(vlm.model, vlm.processor, IMAGES, concepts=concepts, top_k=8, batch_size=4,
                                     max_new_tokens=5, run_dir=tmp_path / "run", heatmaps=0)
    adapter = get_adapter(vlm.model)
    for concept in result.concepts:
        total = torch.zeros(adapter.n_layers, adapter.d_ff)
        count = torch.zeros(adapter.n_layers, adapter.d_ff, dtype=torch.long)
        for row in result.pair_rows(concept):  # brute force over the pairs
            for value, (layer, index) in zip(result.values[row], result.pair_neurons(row).tolist(), strict=True):
                total[layer, index] += value
                count[layer, index] += 1
        got_total, got_count = result.concept_totals(concept)
        torch.testing.assert_close(got_total, total)
        assert torch.equal(got_count, count)
        neurons, sums, _ = result.concept_ranking(concept)
        assert bool((sums[:-1] >= sums[1:]).all())
        assert len(neurons) == int((count > 0).sum())
    files = json.loads((tmp_path / "run" / "concepts.json").read_text())
    assert [entry["concept"] for entry in files] == result.concepts
    assert (tmp_path / "run" / "neurons.csv").read_text().startswith("concept,rank,layer,neuron,sum")


def test_missing_and_unreadable_images_are_reported_and_counted(tmp_path):
    vlm = chat_vlm("llava")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    good = tmp_path / "good.png"
    IMAGES[0].save(good)
    inputs = [str(good), str(tmp_path / "missing.png"), str(broken), IMAGES[1]]
    result = find_multimodal_neurons(vlm.model, vlm.processor, inputs, concepts=["x"], top_k=4, batch_size=2,
                                     max_new_tokens=3, run_dir=tmp_path / "run", heatmaps=0)
    assert result.metrics["images_declared"] == 4
    assert result.metrics["images_skipped"] == 2
    assert result.metrics["images_captioned"] == 2
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert sorted(s["record"] for s in skipped) == sorted([str(tmp_path / "missing.png"), str(broken)])
    assert [bool(c["skipped"]) for c in result.captions] == [False, True, True, False]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["images_skipped"] == 2


def test_a_run_that_captions_no_image_fails_and_keeps_its_skip_reasons(tmp_path):
    from neuronscope.errors import NothingProcessedError

    vlm = chat_vlm("llava")
    missing = [str(tmp_path / "missing.png"), str(tmp_path / "gone.png")]
    with pytest.raises(NothingProcessedError, match=r"no image could be captioned \(2 skipped; first: .*missing"):
        find_multimodal_neurons(vlm.model, vlm.processor, missing, concepts=["x"], top_k=4, max_new_tokens=3,
                                run_dir=tmp_path / "run", heatmaps=0)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["images_captioned"] == 0 and metrics["images_skipped"] == 2
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert sorted(s["record"] for s in skipped) == sorted(missing)
    with pytest.raises(NothingProcessedError, match=r"\(2 skipped; first: [^)]*missing[^)]*\)$"):  # in memory
        find_multimodal_neurons(vlm.model, vlm.processor, missing, concepts=["x"], top_k=4, max_new_tokens=3,
                                heatmaps=0)


def test_heatmap_values_are_the_neurons_activations_at_the_image_tokens(tmp_path):
    from neuronscope.runs import RunDir

    vlm = chat_vlm("llava")
    model, processor = vlm.model, vlm.processor
    image = IMAGES[0]
    neurons = torch.tensor([[1, 5], [0, 7], [1, 60]])
    layout, acts = image_token_activations(model, processor, image, neurons)
    # oracle: a plain forward capturing every position
    batch = encode_captioning(processor, [image], multimodal.DEFAULT_CAPTION_PROMPT,
                               multimodal.DEFAULT_CAPTION_PREFIX)
    with torch.no_grad(), capture(model, sites="neuron", positions="all") as everything:
        model(**batch.inputs)
    for column, (layer, index) in enumerate(neurons.tolist()):
        expected = everything.get("neuron", layer)[0, layout.positions, index]
        torch.testing.assert_close(acts[:, column], expected.float())
    run = RunDir(tmp_path / "run")
    result = neuron_heatmaps(model, processor, image, neurons, out=run, name="demo", single_neurons=2, ks=(1, 3))
    assert result.drawn
    assert set(result.heat) == {"top1.L1N5", "top2.L0N7", "mean_top1", "mean_top3"}
    torch.testing.assert_close(result.heat["mean_top3"], image_heatmap(acts.mean(1), layout, 0, image.size),
                               equal_nan=True)
    for path in result.files:
        with Image.open(path) as written:
            assert written.format == "PNG" and written.size == image.size
    mask = result.masks["top1.L1N5"]
    assert 0 < mask.float().mean() <= 0.06  # above the 95th percentile
    absolute = neuron_heatmaps(model, processor, image, neurons, single_neurons=0, ks=(3,), absolute=True)
    torch.testing.assert_close(absolute.heat["mean_top3"], image_heatmap(acts.abs().mean(1), layout, 0, image.size),
                               equal_nan=True)


def test_a_model_without_a_spatial_map_says_so(tmp_path):
    from neuronscope.runs import RunDir

    vlm = chat_vlm("instructblip")
    run = RunDir(tmp_path / "run")
    result = neuron_heatmaps(vlm.model, vlm.processor, IMAGES[0], torch.tensor([[0, 1]]), out=run, name="blip")
    assert not result.drawn
    assert "no heatmap" in result.reason and "instructblip" in result.reason
    assert (tmp_path / "run" / "heatmaps" / "blip.txt").exists()
    assert not list((tmp_path / "run").glob("heatmaps/*.png"))


def test_an_image_folder_with_an_unreadable_file(tmp_path):
    from neuronscope.inputs.images import read_image_folder

    IMAGES[0].save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG broken")
    IMAGES[1].save(tmp_path / "c.jpg")
    vlm = chat_vlm("llava")
    result = find_multimodal_neurons(vlm.model, vlm.processor, read_image_folder(tmp_path), concepts=["x"],
                                     top_k=4, max_new_tokens=3, heatmaps=0)
    assert result.metrics["images_declared"] == 3 and result.metrics["images_skipped"] == 1
    assert result.metrics["skipped_inputs"][0]["record"] == "b.png"
    assert [c["id"] for c in result.captions] == ["a.png", "b.png", "c.jpg"]


def test_a_compiled_runs_last_smaller_batch_is_padded_and_gives_the_same_results(monkeypatch):
    """compile=: the last batch (1 image of 5 at batch size 2) is padded to the size before with copies of its last
    image, so that it replays the kept, compiled decoding; the padding rows' results are dropped, and every image's
    caption, targets and scores are those of an uncompiled run without padding."""
    vlm = chat_vlm("llava", seed=2)
    vlm.model.to(torch.float64)
    images = IMAGES + [gradient_image(36, 24)]
    options = dict(concepts=_concepts_of(vlm.model, vlm.processor, images), top_k=8, batch_size=2,
                   max_new_tokens=4, heatmaps=0)
    plain = find_multimodal_neurons(vlm.model, vlm.processor, images, **options)
    sizes, original = [], multimodal.caption_and_score

    def spied(model, processor, batch_images, **kwargs):
        sizes.append(len(batch_images))
        return original(model, processor, batch_images, **kwargs)

    monkeypatch.setattr(multimodal, "caption_and_score", spied)
    got = find_multimodal_neurons(vlm.model, vlm.processor, images, compile="aot_eager", **options)
    assert sizes == [2, 2, 2]  # the last image padded with a copy of itself
    assert [c["caption"] for c in got.captions] == [c["caption"] for c in plain.captions]
    assert got.pairs == plain.pairs and got.metrics["images_captioned"] == 5
    assert torch.equal(got.flat_indices, plain.flat_indices)
    torch.testing.assert_close(got.values, plain.values, rtol=1e-10, atol=1e-12)


def test_padding_turns_itself_off_when_a_padded_batch_runs_out_of_memory():
    padding, seen = multimodal._Padding(True), []

    def call(images):
        seen.append(images)
        return [f"r{i}" for i in range(len(images))], [f"t{i}" for i in range(len(images))]

    def out_of_memory(images):
        raise torch.OutOfMemoryError("CUDA out of memory")

    assert padding.caption(["a", "b", "c", "d"], call) == (["r0", "r1", "r2", "r3"], ["t0", "t1", "t2", "t3"])
    assert padding.caption(["a", "b"], call) == (["r0", "r1"], ["t0", "t1"])  # the padding rows' results dropped
    assert seen[-1] == ["a", "b", "b", "b"]
    with pytest.raises(torch.OutOfMemoryError):
        padding.caption(["a", "b"], out_of_memory)
    padding.caption(["a", "b"], call)
    assert seen[-1] == ["a", "b"]  # the batch size is being lowered: no more padding
    unpadded = multimodal._Padding(False)
    unpadded.caption(["a", "b"], call)
    unpadded.caption(["a"], call)
    assert seen[-1] == ["a"]
