"""The aggregation math gives the same answers on an accelerator as on the CPU (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from neuronscope.aggregate.neurons import neurons_to_mask
from neuronscope.aggregate.qrnca import run_qrnca
from neuronscope.aggregate.select import (
    frequency_over_examples,
    sparse_top_k,
    sum_over_examples,
    threshold_relative,
    threshold_relative_mask,
    top_k_neurons,
    top_k_per_layer,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_selection_on_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(-4, 5, (3, 4, 64), generator=generator).float()  # many ties
    gpu = scores.cuda()
    assert torch.equal(threshold_relative_mask(gpu, 0.2).cpu(), threshold_relative_mask(scores, 0.2))
    assert torch.equal(threshold_relative(gpu, 0.2).cpu(), threshold_relative(scores, 0.2))
    for k in (1, 17, 100):
        for kwargs in ({}, {"largest": False}, {"absolute": True}):
            n_gpu, v_gpu = top_k_neurons(gpu[0], k, **kwargs)
            n_cpu, v_cpu = top_k_neurons(scores[0], k, **kwargs)
            assert torch.equal(n_gpu.cpu(), n_cpu) and torch.equal(v_gpu.cpu(), v_cpu)
    n_gpu, v_gpu = top_k_per_layer(gpu[1], 5)
    n_cpu, v_cpu = top_k_per_layer(scores[1], 5)
    assert torch.equal(n_gpu.cpu(), n_cpu) and torch.equal(v_gpu.cpu(), v_cpu)
    top_gpu, top_cpu = sparse_top_k(gpu, 30), sparse_top_k(scores, 30)
    assert torch.equal(top_gpu.flat_indices.cpu(), top_cpu.flat_indices)
    assert torch.equal(top_gpu.to_dense().cpu(), top_cpu.to_dense())
    assert torch.equal(top_gpu.sum().cpu(), top_cpu.sum())
    assert torch.equal(top_gpu.frequency().cpu(), top_cpu.frequency())
    selected = scores > 1
    assert torch.equal(sum_over_examples(gpu, selected.cuda()).cpu(), sum_over_examples(scores, selected))
    assert torch.equal(frequency_over_examples(selected.cuda()).cpu(), frequency_over_examples(selected))
    neurons = torch.tensor([[0, 3], [3, 63]])
    assert torch.equal(neurons_to_mask(neurons.cuda(), 4, 64).cpu(), neurons_to_mask(neurons, 4, 64))


@cuda
def test_qrnca_on_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(1)
    na = [torch.rand(v, 3, 32, generator=generator) ** 4 for v in (1, 2, 3, 2, 2, 1)]
    cpu = run_qrnca(na, top_v=5)
    gpu = run_qrnca([x.cuda() for x in na], top_v=5)
    assert torch.equal(gpu.occurrences, cpu.occurrences)
    assert torch.equal(gpu.common_neurons, cpu.common_neurons)
    for left, right in zip(gpu.key_neurons, cpu.key_neurons, strict=True):
        assert torch.equal(left, right)
    for left, right in zip(gpu.key_scores, cpu.key_scores, strict=True):
        assert torch.allclose(left, right)
