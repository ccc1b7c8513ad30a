"""``neuronscope models``, ``report``, ``recipe`` and ``demo``; ``--help`` of every command shows an example."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from cli_helpers import assert_user_error

import neuronscope.workflows.papers.arithmetic as arithmetic_module
from neuronscope.attribute import list_methods
from neuronscope.models import TEXT_SPECS, VISION_FAMILIES, supported_families
from neuronscope.models.moe import MOE_FAMILIES, MOE_VISION_FAMILIES
from neuronscope.workflows.registry import list_workflows

COMMANDS = [workflow.name.split(" ") for workflow in list_workflows()]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_shows_an_example(cli, command) -> None:
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output and f"neuronscope {' '.join(command)}" in result.output


def test_models_lists_every_family_and_method(cli) -> None:
    result = cli("models")
    assert result.exit_code == 0
    for name in supported_families():
        assert name in result.output
    for info in list_methods():
        assert info.name in result.output
    data = json.loads(cli("models", "--json").output)
    assert [f["name"] for f in data["text_families"]] == [spec.name for spec in TEXT_SPECS]
    assert [f["name"] for f in data["vision_families"]] == [family.name for family in VISION_FAMILIES]
    assert [f["name"] for f in data["moe_families"]] == [family.name for family in MOE_FAMILIES]
    assert [f["name"] for f in data["moe_vision_families"]] == [family.name for family in MOE_VISION_FAMILIES]
    moe = {"mixtral", "qwen2_moe", "qwen3_moe", "qwen3_5_moe", "olmoe", "deepseek_v2", "deepseek_v3", "glm4_moe",
           "gpt_oss", "granitemoe", "phimoe", "llama4_text", "qwen3_vl_moe"}
    assert moe <= set(supported_families()) and moe <= {f["name"] for f in data["moe_families"]} | {"qwen3_vl_moe"}
    assert next(f for f in data["moe_families"] if f["name"] == "deepseek_v3")["shared_experts"] is True
    assert [m["name"] for m in data["methods"]] == [info.name for info in list_methods()]
    blip = next(f for f in data["vision_families"] if f["name"] == "instructblip")
    assert blip["spatial_map"] is False


def test_models_prints_the_model_type_catalogue(cli) -> None:
    from neuronscope.models.catalogue import catalogue, format_catalogue

    rows = catalogue(include_installed=False)
    result = cli("models")
    assert result.exit_code == 0 and format_catalogue(rows) in result.output
    for status in ("verified (", "text-only (", "refused ("):
        assert status in result.output
    data = json.loads(cli("models", "--json").output)
    assert data["model_types"] == [row.as_dict() for row in rows]
    mixtral = next(row for row in data["model_types"] if row["model_type"] == "mixtral")
    assert mixtral["status"] == "verified" and mixtral["kind"] == "moe"
    assert {f["name"] for f in data["moe_families"]} >= {"mixtral", "deepseek_v3", "gpt_oss"}
    installed = json.loads(cli("models", "--json", "--installed").output)["model_types"]
    assert {row["model_type"] for row in installed} >= {row.model_type for row in rows}


def test_model_workflows_take_text_only(cli) -> None:
    result = cli("locate", "--help")
    assert result.exit_code == 0 and "--text-only" in result.output


def test_report_is_rebuilt(cli, located_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(located_run, run)
    (run / "report.html").unlink()
    (run / "summary.txt").write_text("rebuilt summary\n")
    result = cli("report", run)
    assert result.exit_code == 0, result.output
    html = (run / "report.html").read_text()
    assert "rebuilt summary" in html and "Top neurons" in html
    assert_user_error(cli("report", tmp_path / "nowhere"), "run folder not found")
    (run / "metrics.json").write_text("{broken")
    assert_user_error(cli("report", run), "metrics.json")


def test_a_missing_workflow_module_says_so(cli, tmp_path, monkeypatch) -> None:
    import neuronscope.workflows.registry as registry

    real = registry.import_module

    def missing(name, *args):
        if name.startswith("neuronscope.workflows.papers"):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real(name, *args)

    monkeypatch.setattr(registry, "import_module", missing)
    for recipe, data in (("qrnca", ["--data", tmp_path]), ("lpi-facts", ["--data", tmp_path]), ("arithmetic", [])):
        result = cli("recipe", recipe, "--out", tmp_path / recipe, *data)
        assert_user_error(result, f"the 'recipe {recipe}' workflow", "not available")
        assert not (tmp_path / recipe).exists()


def test_text_recipe_gets_the_model_and_options(cli, tiny_model, tmp_path, monkeypatch) -> None:
    seen = {}

    def fake_recipe(out_dir, *, model=None, limit=None, seed=0, n_random=5, top_heads=(1, 3)):
        seen.update(model_type=model.model.config.model_type, out_dir=out_dir, limit=limit, seed=seed,
                    n_random=n_random, top_heads=top_heads)
        from neuronscope.runs import RunDir

        RunDir(out_dir, overwrite=True).write_json("metrics.json", {"pcr": -0.5})
        return {"pcr": -0.5, "per_query": [1, 2]}

    monkeypatch.setattr(arithmetic_module, "run_arithmetic", fake_recipe)
    out = tmp_path / "arithmetic"
    result = cli("recipe", "arithmetic", "-m", tiny_model, "--out", out, "--n-random", 3, "--top-heads", "2,4",
                 "--limit", 2, "--seed", 4)
    assert result.exit_code == 0, result.output
    assert seen == {"model_type": "llama", "out_dir": out, "limit": 2, "seed": 4, "n_random": 3, "top_heads": (2, 4)}
    assert "pcr: -0.5" in result.output
    assert json.loads((out / "cli_config.json").read_text())["n_random"] == 3
    assert_user_error(cli("recipe", "arithmetic", "--out", out), "already holds results", "--overwrite")
    assert_user_error(cli("recipe", "arithmetic", "-m", tiny_model, "--out", tmp_path / "x", "--nope", 1),
                      "No such option", "--help")
    assert_user_error(cli("recipe", "arithmetic", "-m", tiny_model, "--out", tmp_path / "x", "--n-random", 0),
                      "--n-random 0: must be at least 1")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep")
    assert_user_error(cli("recipe", "arithmetic", "--out", busy, "--overwrite"), "not a neuronscope run folder")
    assert (busy / "mine.txt").read_text() == "keep"


def test_demo_without_the_demo_module_says_so(cli, tmp_path, monkeypatch) -> None:
    import neuronscope.workflows.registry as registry

    real = registry.import_module

    def missing(name, *args):
        if name == "neuronscope.workflows.demo":
            raise ModuleNotFoundError("No module named 'neuronscope.workflows.demo'", name="neuronscope.workflows.demo")
        return real(name, *args)

    monkeypatch.setattr(registry, "import_module", missing)
    assert_user_error(cli("demo", "--out", tmp_path / "demo"), "'demo' workflow is not available in this install")


def test_demo_calls_run_demo(cli, tmp_path, monkeypatch) -> None:
    import types

    import neuronscope.workflows.registry as registry

    calls = []
    fake = types.SimpleNamespace(demo=lambda options: calls.append((options.out, options.quick)))
    real = registry.import_module
    monkeypatch.setattr(registry, "import_module",
                        lambda name, *args: fake if name == "neuronscope.workflows.demo" else real(name, *args))
    result = cli("demo", "--out", tmp_path / "demo", "--quick")
    assert result.exit_code == 0, result.output
    assert calls == [(tmp_path / "demo", True)]


@pytest.mark.slow
def test_multimodal_recipe_on_a_tiny_llava(cli, tmp_path) -> None:
    from helpers.tiny_vlms import build_tiny_vlm, gradient_image

    vlm = build_tiny_vlm("llava")
    vlm.processor.chat_template = (  # the tiny processor ships none
        "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}" + vlm.image_placeholder
        + "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}\nA:{% endif %}")
    model_dir = tmp_path / "llava"
    vlm.model.save_pretrained(model_dir)
    vlm.processor.save_pretrained(model_dir)
    images = tmp_path / "images"
    images.mkdir()
    gradient_image(40, 30).save(images / "a.png")
    gradient_image(50, 50).save(images / "b.png")
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "mm"
    result = cli("recipe", "multimodal", "-m", model_dir, "--images", images, "--concepts", "a,b", "--top-k", 20,
                 "--max-new-tokens", 3, "--out", out)
    assert result.exit_code == 0, result.output
    captions = json.loads((out / "captions.json").read_text())
    assert [c["id"] for c in captions if not c["skipped"]] == ["a.png", "b.png"]
    assert [c["id"] for c in captions if c["skipped"]] == ["broken.png"]  # reported, not dropped
    assert json.loads((out / "cli_config.json").read_text())["concepts"] == "a,b"
    assert "broken.png" in (out / "skipped.json").read_text()
    assert (out / "report.html").is_file()
    # --compile: the decode steps through the compiled text decoder (inductor on the CPU), the same results
    compiled = tmp_path / "mm-compiled"
    result = cli("recipe", "multimodal", "-m", model_dir, "--images", images, "--concepts", "a,b", "--top-k", 20,
                 "--max-new-tokens", 3, "--compile", "--out", compiled)
    assert result.exit_code == 0, result.output
    assert json.loads((compiled / "meta.json").read_text())["runtime"]["compile"] is True
    assert json.loads((compiled / "captions.json").read_text()) == captions
    with open(out / "neurons.csv") as plain, open(compiled / "neurons.csv") as fused:
        plain_rows, fused_rows = list(csv.DictReader(plain)), list(csv.DictReader(fused))
    assert [{k: v for k, v in row.items() if k != "score"} for row in fused_rows] == [
        {k: v for k, v in row.items() if k != "score"} for row in plain_rows]
    assert [float(row["score"]) for row in fused_rows] == pytest.approx([float(row["score"]) for row in plain_rows],
                                                                         rel=1e-5, abs=1e-7)
