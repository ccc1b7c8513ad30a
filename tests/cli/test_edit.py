"""``neuronscope edit make|apply|revert|export``: deltas by hand, apply → revert bit for bit, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_user_error, load_tiny, save_tiny_llama
from safetensors.torch import load_file

NEURONS = "1:3,0:7"


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_erase_apply_revert_export(cli, tiny_model, tmp_path) -> None:
    original = weights(tiny_model)
    edit_dir = tmp_path / "erase"
    result = cli("edit", "make", "-m", tiny_model, "--neurons", NEURONS, "--kind", "erase", "--reason", "test",
                 "--out", edit_dir)
    assert result.exit_code == 0, result.output
    deltas = load_file(str(edit_dir / "edit.safetensors"))["deltas"]
    torch.testing.assert_close(deltas, torch.stack([-original["model.layers.1.mlp.down_proj.weight"][:, 3],
                                                    -original["model.layers.0.mlp.down_proj.weight"][:, 7]]))
    assert (edit_dir / "config.json").is_file()

    edited_dir = tmp_path / "edited"
    result = cli("edit", "apply", "--edit", edit_dir, "--out", edited_dir)  # the model comes from the edit
    assert result.exit_code == 0, result.output
    edited = weights(edited_dir)
    assert torch.count_nonzero(edited["model.layers.1.mlp.down_proj.weight"][:, 3]) == 0
    assert torch.count_nonzero(edited["model.layers.0.mlp.down_proj.weight"][:, 7]) == 0
    changed = {name for name in original if not torch.equal(original[name], edited[name])}
    assert changed == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    down = edited["model.layers.1.mlp.down_proj.weight"].clone()
    down[:, 3] = original["model.layers.1.mlp.down_proj.weight"][:, 3]
    assert torch.equal(down, original["model.layers.1.mlp.down_proj.weight"])  # only that column changed

    restored_dir = tmp_path / "restored"
    result = cli("edit", "revert", "-m", edited_dir, "--out", restored_dir)
    assert result.exit_code == 0, result.output
    restored = weights(restored_dir)
    assert all(torch.equal(original[name], restored[name]) for name in original)

    exported_dir = tmp_path / "exported"
    result = cli("edit", "export", "--edit", edit_dir / "edit.json", "-m", tiny_model, "--out", exported_dir)
    assert result.exit_code == 0, result.output
    exported = weights(exported_dir)
    assert all(torch.equal(edited[name], exported[name]) for name in original)
    assert (exported_dir / "neuronscope_edit.json").is_file() and (exported_dir / "tokenizer.json").is_file()
    load_tiny(exported_dir)  # a plain Hugging Face folder


@pytest.mark.parametrize("kind", ["token-shift", "knowledge-neuron"])
def test_shift_deltas_equal_the_formulas(cli, tiny_model, tmp_path, kind) -> None:
    model, tokenizer = load_tiny(tiny_model)
    source, target = tokenizer.convert_tokens_to_ids("paris"), tokenizer.convert_tokens_to_ids("rome")
    out = tmp_path / kind
    result = cli("edit", "make", "-m", tiny_model, "--neurons", NEURONS, "--kind", kind, "--source", "paris",
                 "--target", "id:" + str(target), "--strength", 2.5, "--lambda1", 0.5, "--lambda2", 1.5,
                 "--out", out)
    assert result.exit_code == 0, result.output
    deltas = load_file(str(out / "edit.safetensors"))["deltas"]
    with torch.no_grad():
        if kind == "token-shift":
            unembed = model.lm_head.weight
            want = 2.5 * (unembed[target] - unembed[source])
        else:
            embed = model.model.embed_tokens.weight
            want = 1.5 * embed[target] - 0.5 * embed[source]
    torch.testing.assert_close(deltas, want.expand(2, -1))


def test_signed_token_shift_flips_the_neurons_whose_value_vector_opposes_the_source(cli, tiny_model, tmp_path):
    model, tokenizer = load_tiny(tiny_model)
    source, target = tokenizer.convert_tokens_to_ids("paris"), tokenizer.convert_tokens_to_ids("rome")
    out = tmp_path / "signed"
    result = cli("edit", "make", "-m", tiny_model, "--neurons", NEURONS, "--kind", "token-shift", "--source", "paris",
                 "--target", "rome", "--signed", "--out", out)
    assert result.exit_code == 0, result.output
    deltas = load_file(str(out / "edit.safetensors"))["deltas"]
    with torch.no_grad():
        unembed = model.lm_head.weight
        values = torch.stack([model.model.layers[int(layer)].mlp.down_proj.weight[:, int(index)]
                              for layer, index in (pair.split(":") for pair in NEURONS.split(","))])
        signs = torch.where(values @ unembed[source] < 0, -1.0, 1.0)
        want = signs[:, None] * (unembed[target] - unembed[source])
    torch.testing.assert_close(deltas, want)
    assert json.loads((out / "edit.json").read_text())["params"]["signed_by_activation"] is True
    assert_user_error(cli("edit", "make", "-m", tiny_model, "--neurons", NEURONS, "--kind", "token-shift",
                          "--target", "rome", "--signed", "--out", tmp_path / "z"), "--signed needs --source")


def test_refusals_leave_nothing_half_done(cli, tiny_model, tmp_path) -> None:
    edit_dir = tmp_path / "erase"
    assert cli("edit", "make", "-m", tiny_model, "--neurons", NEURONS, "--out", edit_dir).exit_code == 0
    other_model = save_tiny_llama(tmp_path / "other-model", seed=1)  # same shapes, other weights
    assert_user_error(cli("edit", "apply", "--edit", edit_dir, "-m", other_model, "--out", tmp_path / "x"),
                      "differ from those it was made against")
    assert not (tmp_path / "x").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert_user_error(cli("edit", "apply", "--edit", edit_dir, "--out", busy), "not empty")
    assert_user_error(cli("edit", "apply", "--edit", edit_dir, "--out", busy, "--overwrite"),
                      "not a folder written by 'neuronscope edit'")
    assert (busy / "notes.txt").read_text() == "mine"
    assert_user_error(cli("edit", "revert", "-m", tiny_model, "--out", tmp_path / "y"), "only a model folder")
    assert_user_error(cli("edit", "make", "-m", tiny_model, "--neurons", NEURONS, "--kind", "melt", "--out",
                          tmp_path / "z"), "--kind")
    assert_user_error(cli("edit", "make", "-m", tiny_model, "--neurons", NEURONS, "--kind", "token-shift",
                          "--out", tmp_path / "z"), "needs --target")
    assert_user_error(cli("edit", "make", "-m", tiny_model, "--neurons", NEURONS, "--kind", "token-shift",
                          "--target", "zebra", "--out", tmp_path / "z"), "zebra")
    assert_user_error(cli("edit", "make", "-m", tiny_model, "--neurons", NEURONS, "--kind", "noise", "--sigma",
                          "nan", "--out", tmp_path / "z"), "sigma")
    assert not (tmp_path / "z").exists()
    assert_user_error(cli("edit", "apply", "--edit", tmp_path / "nothing", "--out", tmp_path / "z"), "edit")
