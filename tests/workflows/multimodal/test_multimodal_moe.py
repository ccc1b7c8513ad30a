"""The multimodal-neurons pipeline on a mixture-of-experts VLM (tiny Qwen3-VL-MoE: 2 MoE layers of 4 experts x 12
neurons, top-2), against independent oracles: the kept scores equal ``moe_contribution`` on one teacher-forced
forward of prompt + caption; hooked generation equals plain generation; batched equals one by one; per layer the
scores sum to ``<MoE block output, u_t>`` read by a plain forward hook on the stock block during ``generate``;
zeroing the top neuron's column of the stock ``down_proj`` moves the target's direct effect by its score; the
heatmap values are the gated activations recovered by zeroing each neuron's column; files, report, resume."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

from helpers.interrupt import interrupt_at_call
from helpers.moe_vlm import chat_qwen3_vl_moe
from helpers.tiny_vlms import gradient_image
from neuronscope.attribute.moe_contribution import moe_contribution
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models import get_adapter
from neuronscope.workflows.multimodal import pipeline as multimodal
from neuronscope.workflows.multimodal.heatmaps import image_token_activations, neuron_heatmaps
from neuronscope.workflows.multimodal.pipeline import find_multimodal_neurons
from neuronscope.workflows.multimodal.results import MultimodalNeurons
from neuronscope.workflows.multimodal.scoring import caption_and_score, encode_captioning

IMAGES = [gradient_image(16, 24), gradient_image(24, 24).rotate(90), Image.new("RGB", (32, 16), (200, 30, 30))]
# 6, 9 and 8 image tokens: rows are left-padded
N_NEURONS = 2 * 4 * 12


@pytest.fixture(scope="module")
def vlm32():
    torch.manual_seed(0)
    return chat_qwen3_vl_moe(seed=3, dtype=torch.float32)


@pytest.fixture(scope="module")
def vlm64():
    return chat_qwen3_vl_moe(seed=3, dtype=torch.float64)


def _concepts_of(model, processor, images, max_new_tokens=6) -> list[str]:
    """Concepts that occur in the captions: their letters and digits (the captions are random characters), so
    that targets sit at several generated steps, not only at the prefill's last position."""
    _, _, records, _ = caption_and_score(model, processor, images, concepts=["\x00"], top_k=1,
                                         max_new_tokens=max_new_tokens)
    return sorted({word for r in records for word in r["caption"].split() if word.isalnum()})


def _teacher_forced(batch: Batch, sequences: torch.Tensor) -> Batch:
    """Prompt + generated caption as one left-padded batch (caption tokens are text: mm_token_type_ids 0)."""
    extra = sequences.shape[1] - batch.seq_len
    rows = len(sequences)
    mask = torch.cat([batch.inputs["attention_mask"], torch.ones(rows, extra, dtype=torch.long)], 1)
    inputs = {**batch.inputs, "input_ids": sequences, "attention_mask": mask}
    for key, value in batch.inputs.items():
        if key not in ("input_ids", "attention_mask") and isinstance(value, torch.Tensor) and \
                value.shape[:2] == batch.input_ids.shape:
            inputs[key] = torch.cat([value, value.new_zeros(rows, extra)], 1)
    return Batch(inputs, batch.texts, mask.sum(-1))


def _targets(records) -> TargetSet:
    width = max(len(record["targets"]) for record in records)
    ids = torch.zeros(len(records), width, dtype=torch.long)
    positions, valid = torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
    for row, record in enumerate(records):
        for j, target in enumerate(record["targets"]):
            ids[row, j], positions[row, j], valid[row, j] = target["token_id"], target["position"], True
    return TargetSet(ids, positions, valid)


def _block_outputs(adapter, positions: str = "last"):
    """Plain forward hooks on the stock MoE blocks: each call's output (last position, or all)."""
    seen: dict[int, list[torch.Tensor]] = {layer: [] for layer in adapter.moe.layers}

    def hook(layer):
        def record(module, args, output):
            seen[layer].append((output[:, -1:] if positions == "last" else output).detach().clone())
        return record

    handles = [moe.block.register_forward_hook(hook(layer)) for layer, moe in adapter.moe.layers.items()]
    return seen, handles


@pytest.mark.parametrize("final_norm", [False, True])
def test_kept_scores_equal_moe_contribution_on_a_teacher_forced_forward(vlm32, final_norm):
    model, processor = vlm32
    concepts = _concepts_of(model, processor, IMAGES)
    batch, sequences, records, tops = caption_and_score(model, processor, IMAGES, concepts=concepts,
                                                        top_k=N_NEURONS, final_norm=final_norm, max_new_tokens=6)
    assert max(t["step"] for record in records for t in record["targets"]) >= 2  # targets after the prefill
    for row, record in enumerate(records):
        for target in record["targets"]:
            assert int(sequences[row, target["position"] + 1]) == target["token_id"]
    reforward, targets = _teacher_forced(batch, sequences), _targets(records)
    oracle = moe_contribution(model, reforward, targets, final_norm=final_norm)
    assert oracle.layout == get_adapter(model).moe.layout
    top10 = moe_contribution(model, reforward, targets, final_norm=final_norm, top_k=10)
    _, _, _, kept10 = caption_and_score(model, processor, IMAGES, concepts=concepts, top_k=10,
                                        final_norm=final_norm, max_new_tokens=6)
    for row, record in enumerate(records):
        for j in range(len(record["targets"])):
            dense = tops[row].to_dense().reshape(len(record["targets"]), -1)[j]
            torch.testing.assert_close(dense, oracle.values[row, j].float(), rtol=0, atol=1e-5)
            torch.testing.assert_close(kept10[row].values[j], top10.values[row, j].float(), rtol=0, atol=1e-5)
            assert torch.equal(kept10[row].flat_indices[j], top10.indices[row, j])
            assert bool((tops[row].values[j][:-1] >= tops[row].values[j][1:]).all())  # best first


def test_hooked_generation_equals_plain_generation_and_batched_equals_one_by_one(vlm64):
    model, processor = vlm64
    concepts = _concepts_of(model, processor, IMAGES)
    batch, sequences, records, tops = caption_and_score(model, processor, IMAGES, concepts=concepts,
                                                        top_k=N_NEURONS, max_new_tokens=6)
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad():
        plain = model.generate(**batch.inputs, max_new_tokens=6, do_sample=False, pad_token_id=pad)
    assert torch.equal(plain, sequences)
    for row, image in enumerate(IMAGES):
        _, _, alone, alone_tops = caption_and_score(model, processor, [image], concepts=concepts,
                                                    top_k=N_NEURONS, max_new_tokens=6)
        assert alone[0]["caption"] == records[row]["caption"]
        assert [t["step"] for t in alone[0]["targets"]] == [t["step"] for t in records[row]["targets"]]
        torch.testing.assert_close(alone_tops[0].to_dense(), tops[row].to_dense(), rtol=0, atol=1e-10)


def test_layer_sums_equal_the_block_output_and_zeroing_the_top_neuron_moves_the_logit_by_its_score(vlm32):
    model, processor = vlm32
    adapter = get_adapter(model)
    layout, unembed = adapter.moe.layout, adapter.unembedding().detach()
    concepts = _concepts_of(model, processor, IMAGES)
    seen, handles = _block_outputs(adapter)
    try:
        batch, sequences, records, tops = caption_and_score(model, processor, IMAGES, concepts=concepts,
                                                            top_k=N_NEURONS, max_new_tokens=6)
    finally:
        for handle in handles:
            handle.remove()
    per_call = {layer: torch.cat(outputs, 1) for layer, outputs in seen.items()}  # [B, calls, d]
    reforward = _teacher_forced(batch, sequences)
    checked = 0
    for row, record in enumerate(records):
        dense = tops[row].to_dense().reshape(len(record["targets"]), -1)
        for j, target in enumerate(record["targets"]):
            u = unembed[target["token_id"]]
            for layer in adapter.moe.layers:  # no unit of Qwen3-VL-MoE has a bias: neurons are the whole block
                expected = per_call[layer][row, target["step"]] @ u
                torch.testing.assert_close(dense[j, layout.layer_block(layer)].sum(), expected, rtol=1e-5,
                                           atol=1e-5)
            if j > 1:
                continue  # brute force on the first two targets of each image (two forwards each)
            # brute force: zero the top neuron's value vector (a column of the stock down_proj) and re-run
            layer, expert, index = layout.rows(tops[row].flat_indices[j, :1])[0].tolist()
            down = adapter.moe.layers[layer].experts.down_proj
            outputs = []
            for zero in (False, True):
                seen, handles = _block_outputs(adapter, positions="all")
                saved = down[expert, :, index].detach().clone()
                try:
                    with torch.no_grad():
                        if zero:
                            down[expert, :, index] = 0
                        model(**reforward.inputs)
                finally:
                    with torch.no_grad():
                        down[expert, :, index] = saved
                    for handle in handles:
                        handle.remove()
                outputs.append(seen[layer][0][row, target["position"]])
            moved = (outputs[1] - outputs[0]) @ u
            torch.testing.assert_close(moved, -tops[row].values[j, 0], rtol=1e-4, atol=1e-5)
            checked += 1
    assert checked


def test_heatmap_values_are_the_gated_activations_recovered_by_zeroing_columns(vlm64, tmp_path):
    from neuronscope.runs import RunDir

    model, processor = vlm64
    adapter = get_adapter(model)
    image = IMAGES[1]
    neurons = torch.tensor([[0, 0, 3], [0, 2, 7], [1, 1, 0], [1, 3, 11], [1, 0, 5]])
    layout, acts = image_token_activations(model, processor, image, neurons)
    assert acts.shape == (9, 5)
    batch = encode_captioning(processor, [image], multimodal.DEFAULT_CAPTION_PROMPT,
                              multimodal.DEFAULT_CAPTION_PREFIX)
    for column, (layer, expert, index) in enumerate(neurons.tolist()):
        down = adapter.moe.layers[layer].experts.down_proj
        w = down[expert, :, index].detach().clone()
        outputs = []
        for zero in (False, True):
            seen, handles = _block_outputs(adapter, positions="all")
            try:
                with torch.no_grad():
                    if zero:
                        down[expert, :, index] = 0
                    model(**batch.inputs)
            finally:
                with torch.no_grad():
                    down[expert, :, index] = w
                for handle in handles:
                    handle.remove()
            outputs.append(seen[layer][0][0, layout.positions])
        gated = -((outputs[1] - outputs[0]) @ w) / (w @ w)  # g_e * a_{e,i} at each image token
        torch.testing.assert_close(acts[:, column], gated.float(), rtol=1e-6, atol=1e-6)
        assert torch.equal(acts[:, column] == 0, outputs[1].eq(outputs[0]).all(-1))  # 0 exactly where unrouted
    assert bool((acts == 0).any()) and bool((acts != 0).any())  # some image tokens skip some experts
    result = neuron_heatmaps(model, processor, image, neurons, out=RunDir(tmp_path / "run"), name="moe",
                             single_neurons=2, ks=(1, 5))
    assert result.drawn and set(result.heat) == {"top1.L0E0N3", "top2.L0E2N7", "mean_top1", "mean_top5"}
    assert all(path.is_file() for path in result.files)


def test_localisation_scores_expert_neurons_heatmaps_against_the_object(vlm64):
    from neuronscope.bundled import CAPTION_PREFIX, CAPTION_PROMPT, render_scene, sample_scenes
    from neuronscope.bundled.world import object_masks
    from neuronscope.vision.heatmap import image_heatmap, mask_above_percentile
    from neuronscope.workflows.multimodal.localisation import concept_object, object_heatmaps

    model, processor = vlm64
    scene = sample_scenes(1, seed=5, split="test")[0]
    image = render_scene(scene)  # 64 x 64: 8 x 8 image tokens
    colour = scene.objects[0].colour
    neurons = torch.tensor([[0, 1, 4], [1, 2, 9], [0, 3, 0]])
    maps = object_heatmaps(model, processor, scene, image, 0, colour, neurons, [1, 3])
    assert maps is not None and sorted(maps.heat) == [1, 3]
    layout, acts = image_token_activations(model, processor, image, neurons, prompt=CAPTION_PROMPT,
                                           assistant_prefix=CAPTION_PREFIX)  # checked by zeroing columns above
    truth = object_masks(scene)[concept_object(scene, colour)] > 0.5
    for k in (1, 3):
        heat = image_heatmap(acts[:, :k].abs().mean(1), layout, 0, image.size)
        torch.testing.assert_close(torch.from_numpy(maps.heat[k]), heat, equal_nan=True)
        mask = mask_above_percentile(heat, 95.0).numpy()
        assert (maps.masks[k] == mask).all()
        assert maps.on_object[k] == pytest.approx(float(truth[mask].mean()) if mask.any() else 0.0, abs=1e-12)


def test_files_report_and_resume(vlm32, tmp_path, monkeypatch):
    from neuronscope.report import build_report

    model, processor = vlm32
    concepts = _concepts_of(model, processor, IMAGES, max_new_tokens=5)
    options = dict(concepts=concepts, top_k=16, batch_size=2, max_new_tokens=5, heatmaps=1, heatmap_concepts=1)
    whole = find_multimodal_neurons(model, processor, IMAGES, run_dir=tmp_path / "whole", **options)
    assert whole.layout == get_adapter(model).moe.layout and whole.pairs
    concept = whole.concepts[0]
    rows = whole.concept_neurons(concept, 5)
    assert rows.shape[1] == 3 and rows.shape[0] == min(5, len(whole.concept_ranking(concept)[0]))
    assert torch.equal(whole.layout.rows(whole.layout.flat(rows)), rows)
    folder = tmp_path / "whole"
    entries = json.loads((folder / "concepts.json").read_text())
    assert [e["concept"] for e in entries] == whole.concepts
    first = entries[0]["neurons"][0]
    assert [first[key] for key in ("layer", "expert", "neuron")] == rows[0].tolist() and first["kind"] == "routed"
    layer, expert, index = rows[0].tolist()  # its value vector: column `index` of expert `expert`'s down_proj
    adapter = get_adapter(model)
    logits = adapter.unembedding().detach() @ adapter.moe.layers[layer].experts.down_proj[expert, :, index].detach()
    assert first["top_tokens"] == [processor.tokenizer.decode([t]) for t in logits.topk(10).indices.tolist()]
    with open(folder / "neurons.csv") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0])[:7] == ["concept", "rank", "layer", "expert", "kind", "neuron", "sum"]
    config = json.loads((folder / "config.json").read_text())
    assert config["bias_terms"].startswith("none") and "not routed" in config["heatmap_values"]
    from safetensors import safe_open

    with safe_open(str(folder / "concepts.safetensors"), framework="pt") as handle:
        assert handle.get_tensor("sum.0").shape == (N_NEURONS,)
    assert list(folder.glob("heatmaps/*.png"))
    report = build_report(folder).read_text()
    assert "Top neurons" in report and "<th>expert</th><th>kind</th><th>neuron</th>" in report.replace("\n", "")
    assert "Heatmaps" in report and report.count("data:image/png") >= len(list(folder.glob("heatmaps/*.png")))

    calls = interrupt_at_call(monkeypatch, multimodal, "caption_and_score")
    cut = dict(options, heatmaps=0)
    with pytest.raises(KeyboardInterrupt):
        find_multimodal_neurons(model, processor, IMAGES, run_dir=tmp_path / "cut", **cut)
    calls["n"] = 10
    resumed = find_multimodal_neurons(model, processor, IMAGES, run_dir=tmp_path / "cut", resume=True, **cut)
    assert calls["n"] == 11  # only the second batch was computed again
    assert resumed.pairs == whole.pairs and torch.equal(resumed.flat_indices, whole.flat_indices)
    torch.testing.assert_close(resumed.values, whole.values)
    loaded = MultimodalNeurons.load(tmp_path / "cut")
    assert loaded.layout == whole.layout and torch.equal(loaded.concept_neurons(concept), whole.concept_neurons(concept))
    saved = MultimodalNeurons.load(whole.save(tmp_path / "saved"))
    assert saved.layout == whole.layout and torch.equal(saved.concept_neurons(concept), whole.concept_neurons(concept))


def test_the_act_site_is_refused_on_an_moe_model_before_anything_is_written(vlm32, tmp_path):
    from neuronscope.errors import InputError

    model, processor = vlm32
    with pytest.raises(InputError, match="'neuron' site"):
        find_multimodal_neurons(model, processor, IMAGES[:1], concepts=["a"], site="act", run_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_compile_is_refused_for_expert_layers(vlm32):
    from neuronscope.errors import InputError

    model, processor = vlm32
    with pytest.raises(InputError, match="compile applies to dense language models"):
        caption_and_score(model, processor, IMAGES[:1], concepts=["a"], top_k=1, max_new_tokens=2, compile=True)
