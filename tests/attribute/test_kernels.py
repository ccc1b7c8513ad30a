"""The fused log-sum-exp of exact LPI against torch.logsumexp of the materialised values, in float32 and float64,
with scales, soft-caps, bf16 deltas, extreme values and every backend that can run here."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from neuronscope.attribute import kernels
from neuronscope.attribute.kernels import shifted_logsumexp, target_values
from neuronscope.attribute.log_probability_increase import log_probability_increase_from_logits
from neuronscope.errors import NeuronscopeError


def _inputs(dtype: torch.dtype, rows: int = 5, vocab: int = 1000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(vocab, generator=g, dtype=torch.float64) * 4
    delta = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 3
    scale = torch.randn(rows, generator=g, dtype=torch.float64)
    return base.to(dtype), delta.to(dtype), scale.to(dtype)


def _oracle(base, delta, scale, softcap):
    """torch.logsumexp of the float64 values, built in full."""
    z = base.double()[None] + (1.0 if scale is None else scale.double()[:, None]) * delta.double()
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    return torch.logsumexp(z, -1)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("softcap", [None, 7.5])
@pytest.mark.parametrize("with_scale", [True, False])
@pytest.mark.parametrize("block", [64, 333, 4096])
def test_plain_equals_logsumexp(dtype, tolerance, softcap, with_scale, block):
    base, delta, scale = _inputs(dtype)
    scale = scale if with_scale else None
    got = shifted_logsumexp(base, delta, scale, softcap, backend="plain", block=block)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), _oracle(base, delta, scale, softcap), rtol=tolerance, atol=tolerance)


def test_bf16_delta_is_read_as_bf16_and_summed_in_float32():
    base, delta, scale = _inputs(torch.float32)
    half = delta.bfloat16()
    got = shifted_logsumexp(base, half, scale, backend="plain", block=100)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _oracle(base, half.float(), scale, None), rtol=2e-6, atol=2e-6)


def test_extreme_values_do_not_overflow():
    base = torch.tensor([1000.0, -1000.0, 0.0, 999.0])
    delta = torch.tensor([[0.0, 0.0, 0.0, 0.0], [-2000.0, 3000.0, 0.0, 0.0]])
    got = shifted_logsumexp(base, delta, None, backend="plain", block=2)
    torch.testing.assert_close(got.double(), _oracle(base, delta, None, None), rtol=1e-6, atol=1e-4)
    assert torch.isfinite(got).all()


def test_auto_on_cpu_is_plain_and_lpi_uses_it():
    base, delta, scale = _inputs(torch.float32, rows=3, vocab=50)
    assert kernels._order("auto", torch.device("cpu"), torch.float32) == ["plain"]
    lpi = log_probability_increase_from_logits(base, delta, 7, 4.0, scale=scale)
    z = torch.tanh((base[None].double() + scale[:, None].double() * delta.double()) / 4.0) * 4.0
    capped = torch.tanh(base.double() / 4.0) * 4.0
    expected = z.log_softmax(-1)[:, 7] - capped.log_softmax(-1)[7]
    torch.testing.assert_close(lpi.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(target_values(base, delta, 7, scale, None).double(),
                               base[7].double() + scale.double() * delta[:, 7].double())


@pytest.mark.slow
def test_compiled_equals_logsumexp():
    """torch.compile of the same formula (the CUDA path; on a CPU it compiles to C++ and takes ~15 s)."""
    base, delta, scale = _inputs(torch.float32, rows=4, vocab=300)
    got = shifted_logsumexp(base, delta.bfloat16(), scale, 5.0, backend="compiled")
    torch.testing.assert_close(got.double(), _oracle(base, delta.bfloat16().float(), scale, 5.0), rtol=2e-6,
                               atol=2e-6)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the Triton kernel is checked on a CPU only with Triton installed and TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("softcap", [None, 7.5])
def test_triton_kernel_equals_logsumexp(dtype, softcap):
    base, delta, scale = _inputs(torch.float32, rows=3, vocab=5000)
    delta = delta.to(dtype)
    got = shifted_logsumexp(base, delta, scale, softcap, backend="triton")
    torch.testing.assert_close(got.double(), _oracle(base, delta.float(), scale, softcap), rtol=3e-6, atol=3e-6)


def test_errors():
    with pytest.raises(NeuronscopeError, match="backend"):
        shifted_logsumexp(torch.zeros(3), torch.zeros(1, 3), backend="cuda")
    with pytest.raises(NeuronscopeError, match=r"base \[V\] and delta \[N, V\]"):
        shifted_logsumexp(torch.zeros(4), torch.zeros(1, 3))


def test_the_plain_block_keeps_a_cpu_block_within_the_caches_and_stays_large_on_a_gpu():
    from neuronscope.attribute.kernels import DEFAULT_BLOCK, plain_block

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert plain_block(1024, torch.float32, cpu) == 512
    assert plain_block(1024, torch.float64, cpu) == 256
    assert plain_block(1, torch.float32, cpu) == DEFAULT_BLOCK
    assert plain_block(10**6, torch.float32, cpu) == 128
    assert plain_block(1024, torch.float32, gpu) == DEFAULT_BLOCK


def test_the_cpu_block_gives_the_large_blocks_log_sum_exp():
    """Many small vocabulary blocks (1024 rows: 512 columns each) against one pass in float64."""
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(3000, generator=generator) * 4
    delta = torch.randn(1024, 3000, generator=generator) * 3
    scale = torch.randn(1024, generator=generator)
    expected = torch.logsumexp(base.double()[None] + scale.double()[:, None] * delta.double(), -1)
    got = shifted_logsumexp(base, delta, scale, backend="plain")
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-5)


def test_under_autograd_the_plain_path_keeps_nothing_alive_and_its_gradient_is_logsumexps():
    """The plain path changes its blocks in place only where no gradient is recorded: in place under autograd, each
    call's graph stayed alive after the call (a reference cycle the collector does not see; 8 GB per 7B-shaped
    LPI row on a GPU) and the backward read a changed tensor."""
    import gc

    def tensors() -> int:
        gc.collect()
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))

    generator = torch.Generator().manual_seed(3)
    base = torch.randn(300, generator=generator, dtype=torch.float64)
    weights = torch.randn(5, 300, generator=generator, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(5, generator=generator, dtype=torch.float64) + 0.5
    shifted_logsumexp(base, weights * 1.0, scale, backend="plain", block=64)  # warm-up
    before = tensors()
    for _ in range(3):
        shifted_logsumexp(base, weights * 1.0, scale, backend="plain", block=64)
    assert tensors() == before
    got = torch.autograd.grad(shifted_logsumexp(base, weights, scale, backend="plain", block=64).sum(), weights)[0]
    expected = torch.autograd.grad(torch.logsumexp(base[None] + scale[:, None] * weights, -1).sum(), weights)[0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    with torch.no_grad():  # without autograd, in place as before
        torch.testing.assert_close(shifted_logsumexp(base, weights, scale, backend="plain", block=64),
                                   torch.logsumexp(base[None] + scale[:, None] * weights, -1), rtol=1e-12, atol=1e-12)
