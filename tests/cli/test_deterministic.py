"""``--deterministic``: a workflow runs with cuDNN's attention kernel off (its ``meta.json`` says so), the switch is
as it was afterwards, and the results are those of the run without it (on the CPU, where no kernel differs)."""

from __future__ import annotations

import json

import torch


def test_the_deterministic_flag_runs_the_workflow_so(cli, tiny_model, tmp_path, sdpa_switches) -> None:
    torch.backends.cuda.enable_cudnn_sdp(True)
    runs = {}
    for flag in ("--deterministic", "--no-deterministic"):
        out = tmp_path / flag.strip("-")
        result = cli("locate", "-m", tiny_model, "--prompt", "the capital of france is", "--target", "paris",
                     "--top-k", "3", "--no-specificity", flag, "--out", out)
        assert result.exit_code == 0, result.output
        runs[flag] = json.loads((out / "meta.json").read_text())
    assert runs["--deterministic"]["sdpa_kernels"]["cudnn"] is False
    assert runs["--deterministic"]["runtime"]["deterministic"] is True
    assert runs["--no-deterministic"]["sdpa_kernels"]["cudnn"] is True
    assert torch.backends.cuda.cudnn_sdp_enabled()  # put back after the run
    rows = [(tmp_path / name / "neurons.csv").read_text() for name in ("deterministic", "no-deterministic")]
    assert rows[0] == rows[1]
