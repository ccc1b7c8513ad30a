"""Fused reductions for exact log-probability increase: ``LSE_v(base_v + scale_n · delta_nv)`` with float32 sums.

Exact LPI of every neuron of a layer needs one full-vocabulary log-sum-exp per neuron: ``d_ff × V`` values per
layer. Computed naively (``base + scale · delta`` in float32, then ``torch.logsumexp``) that is about six passes over
a float32 ``[N, V]`` tensor (write, max, subtract, exp, sum ...), several times the memory traffic of the
``value vectors × unembedding`` product itself, and an extra float32 ``[N, V]`` buffer. The kernels here read
``delta`` (in its own dtype, bf16 or fp32) and keep only ``[N]`` running maxima and sums:

- ``"plain"``: chunked over the vocabulary with an online (running max) log-sum-exp in float32: exact, bounded
  memory (``N × block`` float32), any device; the CPU path.
- ``"compiled"``: the same formula through ``torch.compile`` (one fused reduction kernel on a GPU, reading
  ``delta`` once or twice and writing nothing of size ``V``).
- ``"triton"``: a hand-written Triton kernel, one program per row block, one pass over ``delta`` with the online
  rescaling (only where Triton is installed; tested with Triton's interpreter on a CPU).

``"auto"`` picks Triton, then compiled, then plain on CUDA tensors (falling back, once, to the next on any error of
the faster one), and plain elsewhere. All give ``torch.logsumexp`` of the float32 values up to float32 rounding (float64 inputs: the plain path in
float64, exact to float64 rounding).

Example:
    >>> base, delta, scale = torch.randn(50), torch.randn(3, 50), torch.randn(3)
    >>> expected = torch.logsumexp(base + scale[:, None] * delta, -1)
    >>> torch.allclose(shifted_logsumexp(base, delta, scale), expected, atol=1e-5)
    True
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from neuronscope.errors import NeuronscopeError

BACKENDS = ("auto", "plain", "compiled", "triton")
DEFAULT_BLOCK = 8192  # vocabulary block of the plain path on a GPU (fewer, larger kernels)
# On a CPU the plain path's block is sized so that a block of float32 values, rows x block, stays within the caches
# (2 MiB): SmolLM2-135M, 1024 rows x V = 49152, 1 thread: 97 ms at block 512 against 475 ms at 8192.
CPU_BLOCK_BYTES = 2 * 2**20
_broken: set[str] = set()  # fast backends that failed once in this process (then skipped)
_compiled: dict[bool, Callable] = {}
_preferred: list[str] = []  # set by use_backend(): what "auto" means inside that block


@contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Inside the block, ``backend="auto"`` means ``backend`` (e.g. to time or check one kernel through
    :func:`neuronscope.attribute.log_probability_increase.log_probability_increase`).

    Example:
        >>> with use_backend("plain"):
        ...     scores = shifted_logsumexp(torch.zeros(3), torch.zeros(1, 3))
    """
    if backend not in BACKENDS:
        raise NeuronscopeError(f"unknown log-sum-exp backend '{backend}': use one of {', '.join(BACKENDS)}")
    _preferred.append(backend)
    try:
        yield
    finally:
        _preferred.pop()


def _capped(x: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return x if not softcap else torch.tanh(x / softcap) * softcap


def accumulation_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32 (bf16 / fp16 / fp32 inputs)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def shifted_values(base: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor | None,
                   softcap: float | None) -> torch.Tensor:
    """``z = cap(base + scale · delta)`` ``[N, V]`` in the accumulation dtype (the reference the kernels reduce
    without storing)."""
    acc = accumulation_dtype(base, delta)
    base = base.to(acc)
    x = base + delta.to(acc) if scale is None else torch.addcmul(base[None], scale.to(acc)[:, None], delta.to(acc))
    return _capped(x, softcap)


def _plain(base: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor | None, softcap: float | None,
           block: int) -> torch.Tensor:
    """Online log-sum-exp over vocabulary blocks: running max ``m`` and ``s = Σ exp(z - m)``, float32."""
    rows, vocab = delta.shape
    acc = accumulation_dtype(base, delta)
    running_max = torch.full((rows,), -math.inf, device=delta.device, dtype=acc)
    running_sum = torch.zeros(rows, device=delta.device, dtype=acc)
    for start in range(0, vocab, block):
        stop = min(start + block, vocab)
        z = shifted_values(base[start:stop], delta[:, start:stop], scale, softcap)  # a new tensor
        new_max = torch.maximum(running_max, z.amax(-1))
        # the first block: exp(-inf - new_max) = 0 (new_max is finite for real logits). In place only where no
        # gradient is recorded: under autograd, z is saved for the max's backward, and changing it in place both
        # breaks that backward and keeps every call's graph alive (a reference cycle the collector cannot see)
        shifted = torch.exp(z - new_max[:, None]) if z.requires_grad else z.sub_(new_max[:, None]).exp_()
        running_sum = running_sum * torch.exp(running_max - new_max) + shifted.sum(-1)
        running_max = new_max
    return running_max + running_sum.log()


def plain_block(rows: int, acc: torch.dtype, device: torch.device) -> int:
    """The plain path's vocabulary block: :data:`DEFAULT_BLOCK` on a GPU; on a CPU as many columns as keep
    ``rows × block`` values within :data:`CPU_BLOCK_BYTES` (at least 128)."""
    if device.type != "cpu":
        return DEFAULT_BLOCK
    width = torch.empty((), dtype=acc).element_size()
    return max(128, min(DEFAULT_BLOCK, CPU_BLOCK_BYTES // (max(rows, 1) * width)))


def _reference(base: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor, softcap: float | None) -> torch.Tensor:
    acc = accumulation_dtype(base, delta)
    z = _capped(base.to(acc)[None] + scale.to(acc)[:, None] * delta.to(acc), softcap)
    return torch.logsumexp(z, -1)


def _compiled_call(base: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor | None,
                   softcap: float | None) -> torch.Tensor:
    key = bool(softcap)
    if key not in _compiled:
        _compiled[key] = torch.compile(_reference, dynamic=True)
    if scale is None:
        scale = torch.ones(delta.shape[0], device=delta.device)
    return _compiled[key](base, delta, scale, softcap)


def _triton_call(base: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor | None,
                 softcap: float | None) -> torch.Tensor:
    from neuronscope.attribute import _triton_lse  # imported only where Triton exists

    return _triton_lse.shifted_logsumexp(base, delta, scale, softcap)


def triton_available() -> bool:
    """Whether the Triton kernel can run here (Triton installed, and a CUDA device or Triton's interpreter)."""
    import os

    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def _order(backend: str, device: torch.device, acc: torch.dtype) -> list[str]:
    if backend == "auto" and _preferred:
        backend = _preferred[-1]
    if backend != "auto":
        return [backend]
    if device.type != "cuda" or acc == torch.float64:
        return ["plain"]
    fast = (["triton"] if triton_available() else []) + ["compiled"]
    return [name for name in fast if name not in _broken] + ["plain"]


def shifted_logsumexp(
    base: torch.Tensor,
    delta: torch.Tensor,
    scale: torch.Tensor | None = None,
    softcap: float | None = None,
    *,
    backend: str = "auto",
    block: int | None = None,
) -> torch.Tensor:
    """``LSE_v cap(base_v + scale_n · delta_nv)`` for every row ``n``, accumulated in float32 (float64 when an
    input is float64; the Triton kernel always float32).

    Args:
        base: ``[V]`` logits of the residual alone (any float dtype).
        delta: ``[N, V]`` what each row adds (its own dtype is read as it is: bf16 stays bf16 in memory).
        scale: ``[N]`` per-row factor of ``delta`` (None = 1).
        softcap: the model's final logit soft-cap ``c`` (``c · tanh(z / c)``), or None.
        backend: ``"auto"`` (default), ``"plain"``, ``"compiled"`` or ``"triton"`` (module docstring).
        block: vocabulary block of the plain path (memory ``N × block`` float32); default :func:`plain_block`.

    Returns:
        ``[N]`` in the accumulation dtype.

    Example:
        >>> shifted_logsumexp(torch.zeros(4), torch.zeros(2, 4)).tolist()    # log 4 twice
        [1.3862943649291992, 1.3862943649291992]
    """
    if backend not in BACKENDS:
        raise NeuronscopeError(f"unknown log-sum-exp backend '{backend}': use one of {', '.join(BACKENDS)}")
    if delta.dim() != 2 or base.dim() != 1 or base.shape[0] != delta.shape[1]:
        raise NeuronscopeError(f"shifted_logsumexp needs base [V] and delta [N, V], got {tuple(base.shape)} and "
                               f"{tuple(delta.shape)}")
    if backend == "triton" and not triton_available():
        raise NeuronscopeError("the Triton log-sum-exp needs Triton and a CUDA device (or TRITON_INTERPRET=1); use "
                               "backend='auto'")
    acc = accumulation_dtype(base, delta)
    order = _order(backend, delta.device, acc)
    for name in order:
        if name == "plain":
            return _plain(base, delta, scale, softcap, block or plain_block(delta.shape[0], acc, delta.device))
        try:
            return (_triton_call if name == "triton" else _compiled_call)(base, delta, scale, softcap)
        except Exception as error:  # noqa: BLE001 - a fast kernel that cannot build here falls back, once
            if len(order) == 1:
                raise
            _broken.add(name)
            warnings.warn(f"log-sum-exp backend '{name}' failed ({type(error).__name__}: {error}); using the next "
                          "one", RuntimeWarning, stacklevel=2)
    return _plain(base, delta, scale, softcap, block)


def target_values(base: torch.Tensor, delta: torch.Tensor, target: int, scale: torch.Tensor | None,
                  softcap: float | None) -> torch.Tensor:
    """``cap(base_t + scale_n · delta_nt)`` ``[N]`` in the accumulation dtype: the target column only."""
    acc = accumulation_dtype(base, delta)
    column = delta[:, target].to(acc)
    value = base[target].to(acc) + (column if scale is None else scale.to(acc) * column)
    return _capped(value, softcap)


def target_log_probability(base_logits: torch.Tensor, target: int, softcap: float | None = None) -> torch.Tensor:
    """``log softmax(cap(base))[target]`` (0-d) in the accumulation dtype of ``base_logits``: the
    subtrahend of every LPI."""
    base = base_logits.to(accumulation_dtype(base_logits))
    capped = torch.tanh(base / softcap) * softcap if softcap else base
    return capped[target] - capped.logsumexp(-1)


def log_probability_increase_from_logits(
    base_logits: torch.Tensor,
    delta_logits: torch.Tensor,
    target: int,
    softcap: float | None = None,
    *,
    scale: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``log softmax(base + delta_k)[target] − log softmax(base)[target]`` for each row ``k``, in float32
    (float64 when an input is float64).

    The full-vocabulary log-sum-exp of each row is one fused reduction (:func:`shifted_logsumexp`):
    ``base + scale · delta`` is never stored, and
    ``delta`` is read in its own dtype with float32 accumulation (float64 for float64 inputs).

    Args:
        base_logits: ``[V]`` logits of the residual alone (before any soft-cap).
        delta_logits: ``[N, V]`` what each vector adds to them (the readout is affine).
        target: index of the target token in the last dimension.
        softcap: the model's final logit soft-cap ``c`` (``c · tanh(z / c)``), or None.
        scale: ``[N]``: row ``k`` adds ``scale[k] · delta_logits[k]`` instead (fused into one pass, so that a
            neuron's activation times its direction is never stored on its own).
        backend: the log-sum-exp kernel (``"auto"``, ``"plain"``, ``"compiled"``, ``"triton"``; see this module).

    Returns:
        ``[N]`` log-probability increases.

    Example:
        >>> log_probability_increase_from_logits(torch.zeros(3), torch.tensor([[1.0, 0, 0]]), 0)
        tensor([0.5472])
    """
    acc = accumulation_dtype(base_logits, delta_logits)  # float64 inputs stay float64
    base = base_logits.to(acc)
    new_target = target_values(base, delta_logits, target, scale, softcap)
    new_lse = shifted_logsumexp(base, delta_logits, scale, softcap, backend=backend)
    increase = (new_target - new_lse) - target_log_probability(base, target, softcap)
    return increase if acc == torch.float64 else increase.float()
