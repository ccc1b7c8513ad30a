"""``reproducible``: cuDNN's attention kernel off inside the block and as it was after (the other kernels
untouched), and recorded in every run's metadata (``--deterministic``: ``tests/cli/test_deterministic.py``)."""

from __future__ import annotations

import pytest
import torch

import neuronscope as ns
from neuronscope.results.provenance import run_metadata, sdpa_kernels
from neuronscope.trace.reproducible import reproducible


@pytest.mark.parametrize("cudnn_before", [True, False])
def test_cudnn_off_inside_and_as_it_was_after(sdpa_switches, cudnn_before: bool) -> None:
    torch.backends.cuda.enable_cudnn_sdp(cudnn_before)
    torch.backends.cuda.enable_flash_sdp(False)  # a user's own choice stays as it is
    outside = sdpa_kernels()
    with reproducible():
        inside = sdpa_kernels()
    assert inside == {**outside, "cudnn": False}
    assert inside["flash"] is False and inside["math"] is True
    assert sdpa_kernels() == outside


def test_put_back_after_an_error_and_off_when_not_enabled(sdpa_switches) -> None:
    torch.backends.cuda.enable_cudnn_sdp(True)
    with pytest.raises(RuntimeError, match="inside"):
        with reproducible():
            raise RuntimeError("inside")
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with reproducible(False):
        assert torch.backends.cuda.cudnn_sdp_enabled()
    with reproducible(), reproducible():  # nested: the inner block puts back what the outer one set
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_the_same_attention_on_the_cpu() -> None:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=generator) for _ in range(3))
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    with reproducible():
        assert torch.equal(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), plain)


def test_public_and_recorded(sdpa_switches) -> None:
    assert ns.reproducible is reproducible
    torch.backends.cuda.enable_cudnn_sdp(True)
    assert run_metadata()["sdpa_kernels"]["cudnn"] is True
    with reproducible():
        assert run_metadata()["sdpa_kernels"] == {**sdpa_kernels(), "cudnn": False}
