"""How a decoder layer's writes reach the residual stream, and how the final residual becomes logits.

Pure plumbing around stock modules, no attribution math:

- :class:`FinalNorm`: any RMSNorm / LayerNorm as ``gain * normalise(x) + bias`` (probed from the module);
- :class:`WriteMap`: what the residual receives from a sub-block output ``o`` (the FFN output projection's
  output, or the attention output projection's): ``m · o`` or ``m · post_norm(o)``, with ``m`` the product of the
  family's residual multipliers. Frozen at ``o``'s own scale ``σ_o`` the post norm is linear,
  ``m · g ⊙ o / σ_o``, so a neuron's (or head's) share of ``o`` is written as ``m · g ⊙ (a_i w_i) / σ_o`` and
  the shares sum to the real write exactly (the post norms have no bias);
- :class:`Readout`: ``softcap(s · W_U(final_norm(x)) + s · b_U)``, the family's logit scale ``s`` and soft-cap.

Sources (``"config.x"``, ``"model.a.b"``, ``"layer.a.b"``) are read from the live model, so multipliers follow the
checkpoint (:func:`resolve_source`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neuronscope.errors import UnsupportedModelError


@dataclass(frozen=True)
class FinalNorm:
    """A norm as an affine map after normalisation: ``gain * normalise(x) + bias``.

    ``kind`` is ``"rms"`` (x / rms(x)) or ``"layer"`` ((x - mean) / std). ``gain`` already includes
    Gemma's ``1 + weight``.
    """

    kind: str
    gain: torch.Tensor
    bias: torch.Tensor | None
    eps: float

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The normaliser sigma of ``x [..., d]`` (RMS, or the standard deviation for LayerNorm): ``[..., 1]``."""
        x = x if x.dtype == torch.float64 else x.float()
        if self.kind == "layer":
            return (x.var(-1, unbiased=False, keepdim=True) + self.eps).sqrt()
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def frozen(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Apply the norm with its scale frozen at ``scale`` (Yu & Ananiadou's frozen final norm)."""
        x = x if x.dtype == torch.float64 else x.float()
        if self.kind == "layer":
            x = x - x.mean(-1, keepdim=True)
        out = self.gain.to(x.device, x.dtype) * x / scale.to(x.device, x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.device, x.dtype)
        return out


def _eps_attribute(module: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps", "epsilon", "layer_norm_eps"):
        value = getattr(module, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _probed_eps(module: nn.Module, unit: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor | None,
                dtype: torch.dtype) -> float:
    """Epsilon from the module's output on a small input ``t · unit`` (``mean(unit²) = 1``, centred for a centring
    norm): ``out = g ⊙ unit · t / sqrt(t² + eps)``, so ``eps = t² (1 / ρ² − 1)`` with ``ρ = out / (g ⊙ unit)``."""
    small = 1e-3
    out = module((small * unit).to(dtype)[None])[0].to(gain.dtype) - (0 if bias is None else bias)
    reference = gain * unit.to(gain.dtype)
    keep = reference.abs() > 1e-3 * reference.abs().max()
    ratio = float((out[keep] / reference[keep]).mean())
    return max(0.0, small ** 2 * (1.0 / ratio ** 2 - 1.0))


def _probe_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


_PROBED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, FinalNorm]] = weakref.WeakKeyDictionary()


def _state(module: nn.Module, d_model: int) -> tuple:
    """What a norm's probe depends on: its tensors (where they are, their dtype and every in-place change to them,
    through autograd's version counters) and the width."""
    tensors = list(module.parameters()) + list(module.buffers())
    return (d_model, _eps_attribute(module), *((t.data_ptr(), t.dtype, t._version) for t in tensors))


def norm_affine(module: nn.Module, d_model: int) -> FinalNorm:
    """:func:`probe_norm_affine`, probed once per module and state: probing runs the module on a few inputs and
    reads a result back (the host waits for the device), which a scoring call would otherwise pay each time. A
    changed weight (in place, replaced, moved or cast) is probed again; a write through ``param.data``, which
    PyTorch does not count, is not seen: call :func:`forget_norm_probes` after one."""
    state = _state(module, d_model)
    found = _PROBED.get(module)
    if found is not None and found[0] == state:
        return found[1]
    norm = probe_norm_affine(module, d_model)
    _PROBED[module] = (state, norm)
    return norm


def forget_norm_probes() -> None:
    """Drop every probed norm (after changing a norm's weights through ``.data``)."""
    _PROBED.clear()


def probe_norm_affine(module: nn.Module, d_model: int) -> FinalNorm:
    """Any RMSNorm- or LayerNorm-like module as ``gain * normalise(x) + bias``, probed from the module itself.

    A norm centres when shifting its input by a constant leaves its output unchanged; its bias is its output on a
    constant input, its gain its output on a large input (where epsilon no longer matters), its epsilon the
    module's attribute or, where it has none, solved from its output on a small input. So Gemma's
    ``1 + weight``, Nemotron's ``LayerNorm1P``, Cohere's bias-free LayerNorm and OLMo's parameter-free LayerNorm
    are read the same way as a stock ``nn.LayerNorm``. Values stay float64 for float64 modules, float32
    otherwise.

    Example:
        >>> norm = norm_affine(model.model.norm, 16)
        >>> norm.frozen(x, norm.scale(x))          # == model.model.norm(x)
    """
    device, dtype = _probe_device_dtype(module)
    keep = torch.float64 if dtype == torch.float64 else torch.float32
    eps = _eps_attribute(module)
    with torch.no_grad():
        if type(module) is nn.LayerNorm:
            weight, bias = module.weight, module.bias
            gain = weight.detach().to(keep) if weight is not None else torch.ones(d_model, device=device, dtype=keep)
            return FinalNorm("layer", gain, None if bias is None else bias.detach().to(keep), float(module.eps))
        ramp = torch.linspace(-1.0, 1.0, d_model, device=device, dtype=torch.float64)
        ramp = ramp + 0.37 / d_model  # no coordinate is zero after centring
        shifted = module((ramp + 3.0).to(dtype)[None]).to(keep)
        centring = bool(torch.allclose(module(ramp.to(dtype)[None]).to(keep), shifted, rtol=1e-3, atol=1e-4))
        if centring:
            bias = module(torch.full((1, d_model), 0.5, device=device, dtype=dtype))[0].to(keep)
            bias = None if bool((bias == 0).all()) else bias
            unit = ramp - ramp.mean()
            unit = unit / unit.pow(2).mean().sqrt()  # variance 1
            big = 100.0 * unit
            out = module(big.to(dtype)[None])[0].to(keep) - (0 if bias is None else bias)
            gain = out / unit.to(keep)
            if eps is None:  # e.g. OLMo's parameter-free LayerNorm hard-codes it
                eps = _probed_eps(module, unit, gain, bias, dtype)
            return FinalNorm("layer", gain, bias, eps)
        gain = module(torch.full((1, d_model), 100.0, device=device, dtype=dtype))[0].to(keep)
        if eps is None:
            eps = _probed_eps(module, torch.ones(d_model, device=device, dtype=torch.float64), gain, None, dtype)
    return FinalNorm("rms", gain, None, eps)


def resolve_source(source: str, *, model: nn.Module, layer: nn.Module | None, config: Any) -> float | None:
    """The number a source string names, read from the live model (None where it is unset).

    ``"config.<attr>"`` reads the text config, ``"model.<dotted>"`` the causal-LM root, ``"layer.<dotted>"`` the
    decoder layer. Tensors of one element become floats.
    """
    root_name, _, path = source.partition(".")
    roots = {"config": config, "model": model, "layer": layer}
    if root_name not in roots or not path:
        raise ValueError(f"bad source {source!r}: use config.<attr>, model.<path> or layer.<path>")
    value: Any = roots[root_name]
    for part in path.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise UnsupportedModelError(
                f"{source} holds {value.numel()} numbers, not one: a per-coordinate scale is not supported"
            )
        return float(value.detach().float().cpu())
    return float(value)


@dataclass(frozen=True)
class WriteMap:
    """What the residual receives from a sub-block output ``o [..., d]``: ``multiplier · post_norm(o)`` (no post
    norm: ``multiplier · o``).

    Attributes:
        multiplier: product of the family's residual multipliers (1.0 for most families).
        norm: the post norm as an affine map, or None.
        norm_module: the stock post-norm module (for the exact, non-linear write), or None.
    """

    multiplier: float = 1.0
    norm: FinalNorm | None = None
    norm_module: nn.Module | None = None

    @property
    def identity(self) -> bool:
        return self.norm is None and self.multiplier == 1.0

    def apply(self, output: torch.Tensor) -> torch.Tensor:
        """The exact write of ``output`` (through the stock post-norm module)."""
        out = output if self.norm_module is None else self.norm_module(output)
        return out if self.multiplier == 1.0 else out * self.multiplier

    def position_scale(self, output: torch.Tensor) -> torch.Tensor:
        """``m / σ_o`` per position ``[..., 1]`` (``m`` without a post norm), float32 or float64."""
        dtype = torch.float64 if output.dtype == torch.float64 else torch.float32
        if self.norm is None:
            return torch.full((*output.shape[:-1], 1), self.multiplier, dtype=dtype, device=output.device)
        return self.multiplier / self.norm.scale(output)

    def gain(self) -> torch.Tensor | None:
        """The post norm's gain ``g [d]`` (the per-coordinate part of the frozen write), or None."""
        return None if self.norm is None else self.norm.gain

    def frozen(self, part: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The write of a share ``part [..., d]`` of ``output [..., d]``, the post norm frozen at ``σ_o``."""
        dtype = torch.float64 if output.dtype == torch.float64 else torch.float32
        scaled = part.to(dtype) * self.position_scale(output).to(part.device)
        gain = self.gain()
        return scaled if gain is None else scaled * gain.to(part.device, dtype)


@dataclass(frozen=True)
class Readout:
    """Logits from the final residual: ``softcap(s · (W_U final_norm(x) + b_U))``.

    Attributes:
        scale: the product of the family's logit multipliers / divisors ``s`` (1.0 for most families).
        softcap: ``c`` of the final ``c · tanh(z / c)``, or None.
    """

    scale: float = 1.0
    softcap: float | None = None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Post-process raw unembedding outputs ``[..., V]``."""
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def readout_from_ops(ops: tuple[tuple[str, str], ...], *, model: nn.Module, config: Any) -> Readout:
    """Fold a family's ``(op, source)`` logit operations into a :class:`Readout` (scales first, soft-cap last)."""
    scale, softcap = 1.0, None
    for op, source in ops:
        value = resolve_source(source, model=model, layer=None, config=config)
        if value is None:
            continue
        if softcap is not None:
            raise UnsupportedModelError(f"a logit {op} after the soft-cap ({source}) cannot be folded into the readout")
        if op == "multiply":
            scale *= value
        elif op == "divide":
            scale /= value
        else:
            softcap = value or None
    return Readout(scale, softcap)
