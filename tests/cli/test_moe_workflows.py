"""The workflows on a tiny random Mixtral saved to a folder (word-level tokenizer): ``locate → explain → intervene →
evaluate → edit`` and ``routing`` through the CLI, against hand computations from the stock modules' own weights
and inputs (the experts module's ``hidden_states, top_k_index, top_k_weights`` read by a plain forward pre-hook),
and weight edits made by hand; exit codes and files; bad input is one line and exit 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_user_error
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from helpers.tiny_moe import tiny_moe_model
from helpers.word_models import word_tokenizer
from neuronscope.results.expert_scores import ExpertNeuronScores

PROMPTS = ["the capital of france is", "the colour of the sky is", "grass is"]
TARGETS = ["paris", "blue", "green"]


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mixtral") / "model"
    tokenizer = word_tokenizer()
    model = tiny_moe_model("mixtral", dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id = 1, 2, 3
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def located(mixtral, tmp_path_factory) -> Path:
    from click.testing import CliRunner

    from neuronscope.cli.main import app

    out = tmp_path_factory.mktemp("moe-run") / "run"
    args = ["locate", "-m", str(mixtral), "--top-k", "6", "--out", str(out)]
    for prompt, target in zip(PROMPTS, TARGETS, strict=True):
        args += ["--prompt", prompt, "--target", target]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def _load(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder).eval(), PreTrainedTokenizerFast.from_pretrained(folder)


def _routed(model, tokenizer, prompt: str) -> dict[int, tuple]:
    """Per layer, what the stock experts module receives: (hidden_states [T, d], top_k_index, top_k_weights)."""
    seen, handles = {}, []
    for layer, block in enumerate(model.model.layers):
        handles.append(block.mlp.experts.register_forward_pre_hook(
            lambda module, args, layer=layer: seen.__setitem__(layer, tuple(a.detach() for a in args[:3]))))
    try:
        with torch.no_grad():
            model(**tokenizer(prompt, return_tensors="pt"))
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _score_by_hand(model, tokenizer, prompt: str, target: str, layer: int, expert: int, index: int) -> float:
    """``g · a · <w, u_t>`` at the last position: the router weight the experts module multiplies by, the neuron's
    activation ``act(gate) · up`` from the fused weights, its down-projection column."""
    hidden, chosen, weights = _routed(model, tokenizer, prompt)[layer]
    experts = model.model.layers[layer].mlp.experts
    x, slots = hidden[-1], (chosen[-1] == expert).nonzero()
    if len(slots) == 0:
        return 0.0
    with torch.no_grad():
        gate, up = (experts.gate_up_proj[expert] @ x).chunk(2)
        activation = (experts.act_fn(gate) * up)[index]
        unembed = model.lm_head.weight[tokenizer.convert_tokens_to_ids(target)]
        return float(weights[-1, slots[0, 0]] * activation * (experts.down_proj[expert][:, index] @ unembed))


def _probability(model, tokenizer, prompt: str, target: str) -> float:
    with torch.no_grad():
        logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].double()
    return float(logits.softmax(-1)[tokenizer.convert_tokens_to_ids(target)])


def test_locate_writes_expert_scores_selection_and_unit_table(mixtral, located) -> None:
    model, tokenizer = _load(mixtral)
    scores = ExpertNeuronScores.load(located / "scores")
    assert scores.values.shape == (3, 1, scores.layout.n_neurons) and scores.layout.n_neurons == 2 * 4 * 12
    rows = list(csv.DictReader((located / "neurons.csv").open()))
    assert list(rows[0]) == ["rank", "layer", "expert", "kind", "neuron", "score"] and len(rows) == 6
    assert {row["kind"] for row in rows} == {"routed"}
    mean = scores.values.double().mean(dim=(0, 1))
    best = scores.layout.rows(mean.topk(6).indices)
    assert [[int(r["layer"]), int(r["expert"]), int(r["neuron"])] for r in rows] == best.tolist()
    by_hand = []
    for prompt_row, (prompt, target) in enumerate(zip(PROMPTS, TARGETS, strict=True)):
        for layer, expert, index in best[:3].tolist():
            flat = int(scores.layout.flat(torch.tensor([[layer, expert, index]])))
            by_hand.append(_score_by_hand(model, tokenizer, prompt, target, layer, expert, index))
            assert float(scores.values[prompt_row, 0, flat]) == pytest.approx(by_hand[-1], abs=1e-5)
    assert sum(value != 0 for value in by_hand) >= 3  # routed: not a comparison of zeros
    units = list(csv.DictReader((located / "tables" / "unit_scores.csv").open()))
    assert len(units) == 8 and [float(u["mean_score"]) for u in units] == sorted(
        (float(u["mean_score"]) for u in units), reverse=True)
    for unit in units:
        block = scores.layout.block(int(unit["layer"]), int(unit["expert"]))
        assert float(unit["mean_score"]) == pytest.approx(float(mean[block].sum()), abs=1e-6)  # no expert biases
    tokens = json.loads((located / "top_tokens.json").read_text())
    assert set(tokens) == {f"{r['layer']}:{r['expert']}:{r['neuron']}" for r in rows}
    html = (located / "report.html").read_text()
    assert "unit_scores.csv" in html and "expert" in html


def test_locate_report_draws_the_experts_map_of_the_unit_table(located) -> None:
    from neuronscope.workflows.neuron_files import expert_grid

    units = [{"layer": int(u["layer"]), "expert": int(u["expert"]), "mean_score": float(u["mean_score"])}
             for u in csv.DictReader((located / "tables" / "unit_scores.csv").open())]
    grid, layers, experts = expert_grid(units)
    assert layers == [0, 1] and experts == [0, 1, 2, 3] and not grid.isnan().any()
    for unit in units:  # every cell is its unit's row of the table
        assert float(grid[layers.index(unit["layer"]), experts.index(unit["expert"])]) == unit["mean_score"]
    assert (located / "plots" / "experts.png").stat().st_size > 1000
    assert 'alt="experts"' in (located / "report.html").read_text()  # embedded in the report


def test_explain_intervene_and_evaluate_on_expert_rows(cli, mixtral, located, tmp_path) -> None:
    model, tokenizer = _load(mixtral)
    first = json.loads((located / "neurons.json").read_text())["neurons"][0]
    layer, expert, index = first["layer"], first["expert"], first["neuron"]
    result = cli("explain", "-m", mixtral, "--neurons", f"{layer}:{expert}:{index}", "-k", 3)
    assert result.exit_code == 0, result.output
    logits = model.lm_head.weight @ model.model.layers[layer].mlp.experts.down_proj[expert][:, index]
    want = [repr(tokenizer.decode([t])) for t in logits.topk(3).indices.tolist()]
    assert result.output.splitlines()[0].split() == [f"{layer}:{expert}:{index}", *want]

    out = tmp_path / "suppress"
    result = cli("intervene", "-m", mixtral, "--neurons", f"{layer}:{expert}:{index}", "--prompt", PROMPTS[0],
                 "--target", TARGETS[0], "--mode", "suppress", "--positions", "all", "--out", out)
    assert result.exit_code == 0, result.output
    table = next(csv.DictReader((out / "tables" / "intervene.csv").open()))
    with torch.no_grad():  # zeroing the neuron's value vector = zeroing its activation for every routed token
        model.model.layers[layer].mlp.experts.down_proj[expert][:, index] = 0
    assert float(table["p_suppress"]) == pytest.approx(_probability(model, tokenizer, PROMPTS[0], TARGETS[0]),
                                                       rel=1e-4)
    assert float(table["p_suppress"]) != pytest.approx(float(table["p_before"]), rel=1e-3)
    model, _ = _load(mixtral)
    assert float(table["p_before"]) == pytest.approx(_probability(model, tokenizer, PROMPTS[0], TARGETS[0]), rel=1e-4)

    out = tmp_path / "drop"
    result = cli("intervene", "-m", mixtral, "--drop-expert", f"1:{expert}", "--prompt", PROMPTS[0], "--target",
                 TARGETS[0], "--positions", "all", "--out", out)
    assert result.exit_code == 0, result.output
    table = next(csv.DictReader((out / "tables" / "intervene.csv").open()))
    with torch.no_grad():  # mode zero: the expert's output is 0 for the tokens routed to it, routing unchanged
        model.model.layers[1].mlp.experts.down_proj[expert] = 0
    assert float(table["p_zero"]) == pytest.approx(_probability(model, tokenizer, PROMPTS[0], TARGETS[0]), rel=1e-4)
    assert float(table["p_zero"]) != pytest.approx(float(table["p_before"]), rel=1e-3)
    assert "p_reroute" in table and json.loads((out / "metrics.json").read_text())["drop_expert"] == [f"1:{expert}"]
    result = cli("intervene", "-m", mixtral, "--force-routing", "0:2,3", "--prompt", PROMPTS[1], "--mode", "zero")
    assert result.exit_code == 0 and result.output.startswith("force: mean PCR"), result.output

    result = cli("evaluate", located, "--draws", 3, "--mode", "suppress")
    assert result.exit_code == 0, result.output
    evaluation = json.loads((located / "evaluation.json").read_text())
    assert evaluation["baseline"] == "unit" and evaluation["suppress"]["random_mean_pcr"]["n"] == 3

    assert_user_error(cli("explain", "-m", mixtral, "--neurons", "1:9"), "1:9", "layer:expert:index")
    assert_user_error(cli("explain", "-m", mixtral, "--neurons", "1:7:0"), "(1, 7, 0)", "expert id")
    assert_user_error(cli("explain", "-m", mixtral, "--neurons", "1:2:3,1:4"), "not both")
    assert_user_error(cli("intervene", "-m", mixtral, "--drop-expert", "1:9", "--prompt", "a b"), "experts 0..3")
    assert_user_error(cli("intervene", "-m", mixtral, "--force-routing", "1:2", "--prompt", "a b"), "top_k = 2")
    assert_user_error(cli("intervene", "-m", mixtral, "--drop-expert", "1:2", "--mode", "suppress", "--prompt",
                          "a b"), "--drop-expert takes zero, reroute or both")
    assert_user_error(cli("intervene", "--run", located, "--drop-expert", "1:2"), "not both")


def test_edit_make_apply_revert_on_expert_rows(cli, mixtral, located, tmp_path) -> None:
    edit, edited, restored = tmp_path / "edit", tmp_path / "edited", tmp_path / "restored"
    result = cli("edit", "make", "--run", located, "--kind", "token-shift", "--source", "paris", "--target", "rome",
                 "--strength", 2, "--out", edit)
    assert result.exit_code == 0, result.output
    saved = load_file(str(edit / "edit.safetensors"))
    assert saved["neurons"].shape == (6, 3)
    model, tokenizer = _load(mixtral)
    shift = 2.0 * (model.lm_head.weight[tokenizer.convert_tokens_to_ids("rome")]
                   - model.lm_head.weight[tokenizer.convert_tokens_to_ids("paris")])
    torch.testing.assert_close(saved["deltas"], shift.expand(6, -1).detach())
    assert cli("edit", "apply", "--edit", edit, "--out", edited).exit_code == 0
    after, _ = _load(edited)
    for (layer, expert, index), delta in zip(saved["neurons"].tolist(), saved["deltas"], strict=True):
        column = model.model.layers[layer].mlp.experts.down_proj[expert][:, index].detach()
        torch.testing.assert_close(after.model.layers[layer].mlp.experts.down_proj[expert][:, index].detach(),
                                   column + delta)
    assert cli("edit", "revert", "--model", edited, "--out", restored).exit_code == 0
    original, back = load_file(str(mixtral / "model.safetensors")), load_file(str(restored / "model.safetensors"))
    assert set(original) == set(back) and all(torch.equal(original[k], back[k]) for k in original)  # bit for bit


def test_routing_counts_equal_the_experts_module_inputs(cli, mixtral, tmp_path) -> None:
    model, tokenizer = _load(mixtral)
    out = tmp_path / "routing"
    result = cli("routing", "-m", mixtral, "--prompt", PROMPTS[0], "--prompt", PROMPTS[2], "--batch-size", 1,
                 "--out", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "tables" / "routing.csv").open()))
    counts = torch.zeros(2, 4)
    for prompt in (PROMPTS[0], PROMPTS[2]):
        for layer, (_, chosen, _) in _routed(model, tokenizer, prompt).items():
            counts[layer] += torch.bincount(chosen.flatten(), minlength=4)
    assert [[int(r["tokens"]) for r in rows if int(r["layer"]) == layer] for layer in (0, 1)] == counts.int().tolist()
    n_tokens = len(PROMPTS[0].split()) + len(PROMPTS[2].split())
    assert json.loads((out / "metrics.json").read_text())["tokens"] == n_tokens
    assert (out / "plots" / "routing_share.png").is_file() and (out / "routing.json").is_file()
    result = cli("routing", "-m", mixtral, "--prompt", PROMPTS[0], "--words", "france,paris")
    assert result.exit_code == 0 and "routing of 1 tokens" in result.output, result.output
    assert_user_error(cli("routing", "-m", mixtral, "--prompt", "the cat", "--words", "x", "--positions", "last"),
                      "--words")


def test_intervene_heads_on_an_moe_model_equal_a_pre_hook_on_o_proj(cli, mixtral, tmp_path) -> None:
    model, tokenizer = _load(mixtral)
    out = tmp_path / "heads"
    args = ["intervene", "-m", mixtral, "--heads", "1.1,0.3", "--mode", "suppress", "--out", out]
    for prompt, target in zip(PROMPTS, TARGETS, strict=True):
        args += ["--prompt", prompt, "--target", target]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    head_dim = model.config.hidden_size // model.config.num_attention_heads

    def zero(head):
        def hook(module, inputs):
            x = inputs[0].clone()
            x[:, -1, head * head_dim:(head + 1) * head_dim] = 0
            return (x,)
        return hook

    handles = [model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(zero(head))
               for layer, head in ((1, 1), (0, 3))]
    try:
        by_hand = [_probability(model, tokenizer, p, t) for p, t in zip(PROMPTS, TARGETS, strict=True)]
    finally:
        for handle in handles:
            handle.remove()
    rows = list(csv.DictReader((out / "tables" / "intervene.csv").open()))
    assert [float(row["p_suppress"]) for row in rows] == pytest.approx(by_hand, rel=1e-5)
