"""Greedy decoding's steps through a ``torch.compile``'d text decoder (opt-in: ``greedy_generate(..., compile=True)``).

Why: on a GPU a decode step of a 7B model at a small batch is mostly small kernels (norms, rotary embeddings, cache
writes, casts: about 50 per layer) around the matrix products that read the weights. Compiled, the stock modules
fuse them. The prompt's forward and each decode step call the decoder module (``adapter.decoder``, the module
holding the layer list) through its compiled ``forward``, which is put on the instance for the decoding only and
taken off after. The prompt's eager kernels other than the matrix products (norms in float32, rotary embeddings,
cache writes, casts) took ~30 ms of the device's time for 5 LLaVA prompts of 607 positions on an H200. A prompt
of a new length compiles again, until dynamo makes the length dynamic (its second length); ``COMPILE_PROMPT =
False`` compiles the decode steps only. A kept decoding (``keep=True``) runs its first call's prompt
eagerly, since that call allocates the step buffers: traced there, the prompt would compile again at the next
call, whose buffers exist (60 s measured on a 7B at batch 5, H200). ``COMPILE_IMAGES = True`` compiles a
vision-language model's image encoding with the prompt (its ``get_image_features``, the vision tower and
projector, on the base model's instance). Off by default: on LLaVA-1.5-7B at batch 5 (H200, 2026-12-03) it bought nothing measurable (a call of
213 ms against 207 ms eager, one run), though a profiled call had suggested ~10 ms (the profiler slows the eager
tower's many small launches more than the compiled one's).

Hooks on the decoder's submodules (the sites that :class:`~neuronscope.trace.decode.StepBuffers` fills, a steady
intervention) are traced into the compiled code, and the compiled calls run with dynamo guarding on every
submodule's hooks (``skip_nnmodule_hook_guards=False``; by default it guards on none of a module that had none
when it compiled, and would ignore hooks added there later). So a call under other hooks, or under hooks where
there were none, compiles again instead of running the old ones, and a call under new hooks of the same code
reuses the compiled code and fills the new hooks' buffers (``tests/trace/test_compiled_decoder.py``). Each new
shape or set of hooks costs a compilation (50-135 s for a 7B decoder, prompt included, on an H200); later calls reuse it.

Numerics: in float32 the compiled steps give the eager steps' tokens, and scores within 1.6e-7 relative
(``benchmarks/bench_checks.py`` on the GPU). In bf16 they do not promise the same tokens: inductor fuses the norms,
rotary embeddings and casts, and rounds where eager rounds otherwise, so a greedy caption can take another token
where two logits are close. Measured on a random-weight LLaVA-1.5-7B shape (logits close everywhere; H200,
2026-12-02, ``benchmarks/probe_stages.py``): the tokens differed from the uncompiled decoding at batches 4 and 6,
and 98.6 % of the kept neurons were the same (97.7 % for the least alike target); inductor's
``emulate_precision_casts`` did not make them equal (98.9 %). Compare against an uncompiled run before relying on
compiled bf16 captions.

Measured (H200, LLaVA-1.5-7B shape, bf16, the multimodal streaming call; ``benchmarks/run_all.py``'s multimodal
table, 2026-12-02 14:42 UTC): batch 4 at 17.8 images/s against 12.8 uncompiled (peak 1.120× the weights against
1.117×), batch 6 at 23.3 against 16.6 (1.175× against 1.173×); compiling took 27 s and 38 s.

Example:
    >>> generation = greedy_generate(model, processor, batch, max_new_tokens=20, compile=True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from neuronscope.errors import InputError
from neuronscope.models.adapter import get_adapter
from neuronscope.models.decoding import image_encoder

# one compiled function per (class, method, backend): dynamo keeps its compiled code per code object and guards
_COMPILED: dict[tuple[type, str, str], Callable[..., Any]] = {}
# compilations per code object allowed during the compiled calls (dynamo's own default: 8)
RECOMPILE_LIMIT = 64
# the prompt's forward through the compiled decoder too, not only the decode steps (benchmarks compare both)
COMPILE_PROMPT = True
# with the prompt compiled, its image encoding too (the model's ``get_image_features``: vision tower and projector);
# off: no gain measured on LLaVA-1.5-7B (module docstring)
COMPILE_IMAGES = False

_LIMITS = {name: RECOMPILE_LIMIT for name in ("recompile_limit", "cache_size_limit")
           if hasattr(torch._dynamo.config, name)}


def compiles_prompt() -> bool:
    """Whether a compiled decoding runs its prompt's forward compiled too (:data:`COMPILE_PROMPT`)."""
    return COMPILE_PROMPT


def compile_backend(compile: bool | str) -> str | None:
    """The ``torch.compile`` backend that ``compile`` names: True → ``"inductor"``, a string → that backend
    (``"aot_eager"`` compiles without generating kernels: what the CPU tests use), False → None."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return "inductor"
    if isinstance(compile, str) and compile:
        return compile
    raise InputError(f"compile must be True, False or a torch.compile backend name, not {compile!r}")


@contextmanager
def _compiled_method(module: nn.Module, name: str, backend: str) -> Iterator[None]:
    """Within the block, ``module.<name>(...)`` runs its class's method compiled with ``backend`` (put on the
    instance, taken off after)."""
    if name in vars(module):
        raise InputError(f"the model's {type(module).__name__} already has its own {name} on the instance (compiled "
                         "or wrapped by another tool?): decode without compile=")
    key = (type(module), name, backend)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(getattr(type(module), name), backend=backend)
    compiled = _COMPILED[key]

    def method(*args: Any, **kwargs: Any) -> Any:
        # guards on every submodule's hooks, empty ones included: by default dynamo guards on none where a module
        # had none when it compiled, and would then run without hooks added later (a site, an intervention);
        # and room for more compilations than dynamo's 8 per code object, which transformers' forward wrappers
        # share across model classes (past the limit a call runs uncompiled: right, only slower)
        with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False, **_LIMITS):
            return compiled(module, *args, **kwargs)

    setattr(module, name, method)
    try:
        yield
    finally:
        delattr(module, name)


@contextmanager
def compiled_decoder(model: nn.Module, backend: str, images: bool = False) -> Iterator[None]:
    """Within the block, calls of the model's text decoder run its ``forward`` compiled with ``backend``; with
    ``images`` (the prompt's forward), so does the model's image encoding where it has one (``get_image_features``:
    the vision tower and the projector; :data:`COMPILE_IMAGES`)."""
    encoder = image_encoder(model) if images and COMPILE_IMAGES else None
    with _compiled_method(get_adapter(model).decoder, "forward", backend), (
            _compiled_method(encoder, "get_image_features", backend) if encoder is not None else nullcontext()):
        yield
