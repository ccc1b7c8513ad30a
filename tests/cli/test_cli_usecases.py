"""``neuronscope edit remove-word | replace-word | suppress`` on a tiny saved model: files, values, refusals."""

from __future__ import annotations

import json

import torch
from cli_helpers import assert_user_error, load_tiny
from safetensors.torch import load_file

from neuronscope.inputs import encode_prompts, generate

PROMPT = "the capital of france is"


def _first_answer_word(tiny_model) -> str:
    model, tokenizer = load_tiny(tiny_model)
    batch = encode_prompts(tokenizer, PROMPT, model=model)
    return generate(model, tokenizer, batch, max_new_tokens=4).texts[0].split()[0]


def test_remove_word_writes_an_edit_that_lowers_the_word(cli, tiny_model, tmp_path) -> None:
    word = _first_answer_word(tiny_model)
    out = tmp_path / "no-word"
    result = cli("edit", "remove-word", "-m", tiny_model, "--word", word, "--prompt", PROMPT, "--top-k", "6",
                 "--unrelated", "the colour of grass is", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["use_case"] == "remove_word" and metrics["n_neurons"] == 6
    assert (out / "report.html").is_file() and (out / "answers.json").is_file()
    tensors = load_file(str(out / "edit.safetensors"))
    assert tensors["neurons"].shape == (6, 2) and bool(torch.isfinite(tensors["deltas"]).all())


def test_suppress_erases_the_given_neurons(cli, tiny_model, tmp_path) -> None:
    model, _ = load_tiny(tiny_model)
    out = tmp_path / "suppressed"
    result = cli("edit", "suppress", "-m", tiny_model, "--neurons", "1:3,0:7", "--words", "paris",
                 "--prompt", PROMPT, "--out", out)
    assert result.exit_code == 0, result.output
    deltas = load_file(str(out / "edit.safetensors"))["deltas"]
    expected = torch.stack([-model.model.layers[1].mlp.down_proj.weight[:, 3],
                            -model.model.layers[0].mlp.down_proj.weight[:, 7]]).detach()
    torch.testing.assert_close(deltas, expected)


def test_use_cases_refuse_missing_inputs(cli, tiny_model, tmp_path) -> None:
    assert_user_error(cli("edit", "remove-word", "-m", tiny_model, "--word", "paris", "--out", tmp_path / "x"),
                      "--prompt")
    assert_user_error(cli("edit", "replace-word", "-m", tiny_model, "--source", "paris", "--prompt", PROMPT,
                          "--out", tmp_path / "y"), "target")
