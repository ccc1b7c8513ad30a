"""``recipe vqa``, ``recipe logit-lens``, ``recipe base-vs-vlm``, ``recipe patches`` and ``recipe invariance`` from
the command line: bad input is one line, exit 2, and nothing written; the lens runs on the bundled model."""

from __future__ import annotations

import json

import pytest
from cli_helpers import assert_user_error

BAD = [
    (["recipe", "vqa"], "--questions"),
    (["recipe", "vqa", "--questions", "{tmp}/missing.jsonl", "-m", "m"], "missing.jsonl"),
    (["recipe", "vqa", "--bundled-scenes", "0"], "--bundled-scenes 0"),
    (["recipe", "logit-lens", "--images", "{tmp}/nowhere", "-m", "m"], "nowhere"),
    (["recipe", "logit-lens", "--bundled-scenes", "2", "--stages", "a"], "--stages"),
    (["recipe", "base-vs-vlm", "--bundled-facts"], "--base-model"),
    (["recipe", "base-vs-vlm", "--base-model", "b", "-m", "m"], "--bundled-facts"),
    (["recipe", "patches", "-m", "m", "--questions", "{tmp}/missing.jsonl"], "missing.jsonl"),
    (["recipe", "invariance", "-m", "m", "--images", "{tmp}", "--run", "{tmp}/no-run"], "no-run"),
    (["recipe", "invariance", "-m", "m", "--images", "{tmp}", "--run", "{tmp}", "--seeds", "a,b"], "--seeds"),
    (["recipe", "vqa", "--bundled-scenes", "2", "--questions", "{tmp}/q.jsonl"], "not both"),
    (["recipe", "vqa", "--bundled-scenes", "1", "--top-heads", "0"], "--top-heads 0"),
    (["recipe", "vqa", "--bundled-scenes", "1", "-m", "{tmp}/nowhere"], "nowhere"),
    (["recipe", "logit-lens"], "--bundled-scenes"),
    (["recipe", "logit-lens", "--bundled-scenes", "1", "--words", "zzzqqq"], "zzzqqq"),
    (["recipe", "base-vs-vlm", "--bundled-facts", "--base-model", "b", "--prompt", "x"], "not both"),
    (["recipe", "base-vs-vlm", "--bundled-facts", "--base-model", "{tmp}/nowhere"], "nowhere"),
    (["recipe", "patches", "-m", "m"], "--questions"),
    (["recipe", "invariance", "-m", "m", "--images", "{tmp}", "--run", "{tmp}", "--synonyms", "dog"], "--synonyms"),
]


@pytest.mark.parametrize(("args", "fragment"), BAD, ids=lambda value: " ".join(value) if isinstance(value, list)
                         else value)
def test_bad_input_is_one_line_and_writes_nothing(cli, tmp_path, args, fragment) -> None:
    out = tmp_path / "out"
    filled = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    assert_user_error(cli(*filled, "--out", out), fragment.replace("{tmp}", str(tmp_path)))
    assert not out.exists()


def test_logit_lens_on_the_bundled_model(cli, tmp_path) -> None:
    out = tmp_path / "lens"
    result = cli("recipe", "logit-lens", "--bundled-scenes", 1, "--drawn", 1, "--stages", "0,4", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stages"] == ["embeddings", "layer 3"] and set(metrics["localisation"]) == set(metrics["stages"])
    assert (out / "lens" / "0.embeddings.png").is_file() and "Logit lens over image tokens" in (
        out / "report.html").read_text()


def _scene_files(folder, n: int) -> list[tuple[str, str, str]]:
    """``n`` held-out bundled scenes saved as PNGs in ``folder``: (file name, first shape, its colour) each."""
    from neuronscope.bundled import render_scene, sample_scenes

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, scene in enumerate(sample_scenes(n, seed=3, split="test")):
        render_scene(scene).save(folder / f"scene{number}.png")
        rows.append((f"scene{number}.png", scene.objects[0].shape, scene.objects[0].colour))
    return rows


def test_vqa_on_the_bundled_model(cli, tmp_path) -> None:
    out = tmp_path / "vqa"
    result = cli("recipe", "vqa", "--bundled-scenes", 2, "--max-questions", 2, "--drawn", 1, "--ablation",
                 "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["questions_done"] == 2 and metrics["questions_with_context"] == 2
    assert 0.0 <= metrics["vqa_tqa_top_overlap"] <= 1.0 and "vqa_lpi_vs_ablation" in metrics
    assert (out / "heatmaps" / "q0.patches.png").is_file() and not (out / "heatmaps" / "q1.patches.png").exists()
    html = (out / "report.html").read_text()
    assert "VQA vs textual QA" in html and "Important image patches" in html and "What colour is the" in html
    again = cli("recipe", "vqa", "--bundled-scenes", 2, "--out", out)  # an earlier run is never replaced silently
    assert_user_error(again, "--overwrite")


def test_base_vs_vlm_on_the_bundled_model_against_its_own_language_model(cli, tmp_path) -> None:
    """The VLM against a Llama holding a copy of its own language model: CNA is 0 everywhere, full agreement."""
    import csv

    from neuronscope.bundled import SHAPES_VLM_PATH, load_shapes_vlm
    from neuronscope.bundled.base_lm import text_model_of

    model, processor = load_shapes_vlm()
    text_model_of(model).save_pretrained(tmp_path / "base")
    processor.tokenizer.save_pretrained(tmp_path / "base")
    out = tmp_path / "cna"
    result = cli("recipe", "base-vs-vlm", "-m", SHAPES_VLM_PATH, "--base-model", tmp_path / "base",
                 "--prompt", "The colour of the banana is", "--prompt", "The colour of the sky is",
                 "--target", "prediction", "--top-k", 5, "--top-heads", 3, "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prompts_done"] == 2 and metrics["base_accuracy"] == metrics["vlm_accuracy"] == 1.0
    assert metrics["neurons"]["top_overlap"] == metrics["heads"]["top_overlap"] == 1.0
    with open(out / "tables" / "cna_neurons.csv", newline="") as handle:
        assert [float(row["cna"]) for row in csv.DictReader(handle)] == [0.0] * 5
    assert (out / "report.html").is_file()


def test_patches_on_bundled_scenes(cli, tmp_path) -> None:
    from neuronscope.bundled import SHAPES_VLM_PATH

    rows = _scene_files(tmp_path / "images", 2)
    questions = tmp_path / "vqa.jsonl"
    questions.write_text("".join(json.dumps({"image": name, "question": f"What colour is the {shape}?"}) + "\n"
                                 for name, shape, _ in rows) + json.dumps({"image": "gone.png", "question": "?"})
                         + "\n")
    out = tmp_path / "patches"
    result = cli("recipe", "patches", "-m", SHAPES_VLM_PATH, "--questions", questions, "--image-root",
                 tmp_path / "images", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["questions_declared"], metrics["questions_done"], metrics["questions_skipped"]) == (3, 2, 1)
    for what in ("patches", "patches.mask", "attention", "attention.mask"):
        assert (out / "heatmaps" / f"q1.{what}.png").is_file()
    html = (out / "report.html").read_text()
    assert "Important image patches" in html and "gone.png" in html


def test_multimodal_then_invariance_on_bundled_scenes(cli, tmp_path) -> None:
    from neuronscope.bundled import SHAPES_VLM_PATH

    vqa = tmp_path / "vqa"  # a run folder of another recipe is refused as --run, in one line
    assert cli("recipe", "vqa", "--bundled-scenes", 1, "--drawn", 0, "--out", vqa).exit_code == 0
    assert_user_error(cli("recipe", "invariance", "-m", SHAPES_VLM_PATH, "--run", vqa, "--images", vqa, "--out",
                          tmp_path / "refused"), "not a finished 'recipe multimodal' run")
    assert not (tmp_path / "refused").exists()

    rows = _scene_files(tmp_path / "images", 3)
    concepts = sorted({colour for _, _, colour in rows})[:2]
    found = tmp_path / "mm"
    result = cli("recipe", "multimodal", "-m", SHAPES_VLM_PATH, "--images", tmp_path / "images", "--concepts",
                 ",".join(concepts), "--top-k", 50, "--heatmaps", 0, "--max-new-tokens", 8, "--out", found)
    assert result.exit_code == 0, result.output
    out = tmp_path / "inv"
    others = ["square", "circle", "of"]  # words that count for concepts[0] too
    result = cli("recipe", "invariance", "-m", SHAPES_VLM_PATH, "--run", found, "--images", tmp_path / "images",
                 "--k", 20, "--seeds", "0,1", "--sensitivity-neurons", 5, "--synonyms",
                 f"{concepts[0]}={','.join(others)}", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["sensitivity"]) <= set(concepts) and metrics["region"]["pairs"] >= 2
    # semantic sensitivity of concepts[0] by hand: each neuron's value vector through the unembedding, top 10
    from neuronscope.bundled import load_shapes_vlm
    from neuronscope.workflows.multimodal.results import MultimodalNeurons

    model, processor = load_shapes_vlm()
    neurons = MultimodalNeurons.load(found).concept_neurons(concepts[0], 5)
    layers = model.model.language_model.layers
    words = {concepts[0], *others}
    hits = []
    for layer, index in neurons.tolist():
        logits = model.lm_head.weight @ layers[layer].mlp.down_proj.weight[:, index]
        tokens = [processor.tokenizer.decode([t]).strip().lower() for t in logits.topk(10).indices.tolist()]
        hits.append(any(token in words for token in tokens))
    sensitivity = metrics["sensitivity"][concepts[0]]
    assert sensitivity["words"] == [concepts[0], *others]
    assert sensitivity["rate"] == pytest.approx(sum(hits) / len(hits))
    html = (out / "report.html").read_text()
    assert "Invariance and semantic sensitivity" in html and "Invariance and sensitivity per concept" in html
    assert "tables/region.csv" in html and "tables/sensitivity.csv" in html
