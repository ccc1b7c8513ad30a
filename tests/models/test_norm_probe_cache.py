"""The probed affine form of a norm is kept per module and state (probing makes the host wait for the device):
the cached form equals a fresh probe, and any counted change of the norm's weights is probed again."""

from __future__ import annotations

import torch
from torch import nn

from neuronscope.models.accounting import forget_norm_probes, norm_affine, probe_norm_affine


class _Norm(nn.LayerNorm):
    probes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).probes += 1
        return super().forward(x)


def _rms(width: int) -> nn.Module:
    torch.manual_seed(0)
    norm = nn.RMSNorm(width, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    return norm


def test_the_cached_form_is_a_fresh_probe_and_is_not_probed_twice() -> None:
    norm = _rms(16)
    first = norm_affine(norm, 16)
    assert norm_affine(norm, 16) is first
    fresh = probe_norm_affine(norm, 16)
    assert first.kind == fresh.kind and first.eps == fresh.eps
    assert torch.equal(first.gain, fresh.gain)


def test_an_in_place_change_a_replacement_or_a_cast_is_probed_again() -> None:
    norm = _rms(16)
    before = norm_affine(norm, 16).gain.clone()
    with torch.no_grad():
        norm.weight.mul_(2.0)  # in place: autograd's version counter moves
    assert torch.allclose(norm_affine(norm, 16).gain, 2 * before, rtol=1e-5)
    norm.weight = nn.Parameter(torch.ones(16))  # replaced
    assert torch.allclose(norm_affine(norm, 16).gain, torch.ones(16), rtol=1e-5)
    norm.double()  # cast
    assert norm_affine(norm, 16).gain.dtype == torch.float64
    norm.eps = 1e-2  # a changed epsilon
    assert norm_affine(norm, 16).eps == 1e-2


def test_a_write_through_data_needs_forget_norm_probes() -> None:
    norm = _rms(8)
    before = norm_affine(norm, 8).gain.clone()
    norm.weight.data.mul_(3.0)  # not counted by PyTorch: documented, and forget_norm_probes() re-probes
    forget_norm_probes()
    assert torch.allclose(norm_affine(norm, 8).gain, 3 * before, rtol=1e-5)


def test_a_layer_norm_is_run_once_per_state() -> None:
    norm = _Norm(12)
    forget_norm_probes()
    norm_affine(norm, 12)
    runs = _Norm.probes
    norm_affine(norm, 12)
    norm_affine(norm, 12)
    assert _Norm.probes == runs
