"""The evaluation math gives the same answers on an accelerator as on the CPU (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from neuronscope.measure.baselines import random_neurons_like
from neuronscope.measure.edit_metrics import edit_success, kl_divergence, locality_kl
from neuronscope.measure.metrics import probability_change_ratio
from neuronscope.measure.prediction import domain_scores, predict_domains

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_metrics_on_cuda_match_cpu():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=generator)
    other = torch.randn(6, 50, generator=generator)
    target = torch.randint(0, 50, (6,), generator=generator)
    source = torch.randint(0, 50, (6,), generator=generator)
    for rule in ("top1", "target_over_source"):
        assert torch.equal(
            edit_success(logits.cuda(), target.cuda(), source.cuda(), rule=rule).cpu(),
            edit_success(logits, target, source, rule=rule),
        )
    assert torch.allclose(kl_divergence(logits.cuda(), other.cuda()).cpu(), kl_divergence(logits, other))
    assert locality_kl(logits.cuda(), other.cuda()) == pytest.approx(locality_kl(logits, other))
    before, after = torch.tensor([0.2, 0.5]), torch.tensor([0.4, 0.1])
    assert torch.allclose(
        probability_change_ratio(before.cuda(), after.cuda()).cpu(), probability_change_ratio(before, after)
    )


@cuda
def test_prediction_and_baselines_on_cuda_match_cpu():
    generator = torch.Generator().manual_seed(1)
    acts = torch.randn(5, 3, 16, generator=generator)
    domains = {
        "a": torch.tensor([[0, 1], [2, 3]]),
        "b": torch.tensor([[1, 15]]),
        "c": torch.tensor([[2, 0], [0, 0]]),
    }
    gpu_domains = {name: neurons.cuda() for name, neurons in domains.items()}
    for rule in ("mean", "count"):
        _, cpu_scores = domain_scores(acts, domains, rule=rule)
        _, gpu_scores = domain_scores(acts.cuda(), gpu_domains, rule=rule)
        assert torch.allclose(gpu_scores.cpu(), cpu_scores)
        assert predict_domains(acts.cuda(), gpu_domains, rule=rule) == predict_domains(
            acts, domains, rule=rule
        )
    located = torch.tensor([[0, 1], [2, 3], [2, 4]])
    assert torch.equal(
        random_neurons_like(located.cuda(), d_ff=16, n_draws=3, seed=5, exclude=located.cuda()),
        random_neurons_like(located, d_ff=16, n_draws=3, seed=5, exclude=located),
    )
