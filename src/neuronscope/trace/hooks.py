"""Forward hooks on stock modules, always removed, that read or rewrite one site's tensor.

A :class:`HookSet` installs a watcher on the decoder (to know each call's offset, length and padding) and, per
site, one hook that hands ``(site tensor [batch, T, width], call state)`` to a callback. A callback returns None to
leave the tensor as it is, or a replacement of the site slice.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from neuronscope.models.adapter import ModelAdapter
from neuronscope.trace.positions import CallState
from neuronscope.trace.sites import SiteHandle
from neuronscope.trace.static_cache import driven_length

SiteCallback = Callable[[torch.Tensor, CallState], "torch.Tensor | None"]
_SERIALS = itertools.count(1)  # every hook a HookSet installs gets the next one (never reused, unlike id())


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _capturing(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_cuda and torch.cuda.is_current_stream_capturing()


def _transformers_output_capture(hook: Any) -> bool:
    """transformers' own output-capturing hooks (installed on first use by ``transformers.utils.output_capturing``):
    they record only while a caller asks for hidden states or attentions, and do no device work otherwise."""
    return (getattr(hook, "__module__", "") or "").startswith("transformers.") and \
        getattr(hook, "__qualname__", "").endswith("output_capturing_hook")


def foreign_hooks(model: nn.Module) -> int:
    """How many forward hooks on ``model`` (or global ones) are not of a graph-safe :class:`HookSet`: hooks whose
    work may depend on the step (positions picked on the host, host counters), which a CUDA-graph replay would
    freeze at the captured step. transformers' own output-capturing hooks are not counted; an accelerate hook
    (``_hf_hook``: device placement, offloading) counts as one."""
    from torch.nn.modules import module as torch_module

    count = len(torch_module._global_forward_hooks) + len(torch_module._global_forward_pre_hooks)
    for sub in model.modules():  # once per decoding call: the common module (no hook) costs two lookups
        count += int("_hf_hook" in vars(sub))  # accelerate sets it as a plain attribute
        if sub._forward_hooks or sub._forward_pre_hooks:
            for hooks in (sub._forward_hooks, sub._forward_pre_hooks):
                count += sum(1 for hook in hooks.values()
                             if not getattr(hook, "graph_safe", False) and not _transformers_output_capture(hook))
    return count


def graph_safe_hooks(model: nn.Module) -> tuple[int, ...]:
    """The serial numbers of the graph-safe :class:`HookSet` hooks on ``model`` now (e.g. a steady intervention's).
    A CUDA graph records the kernels of the hooks present at its capture and replays exactly those: the paths that
    keep graphs across calls put this in their key, so that a call under other hooks than a graph's is not
    replayed from it."""
    serials = (getattr(hook, "serial", 0) for sub in model.modules() if sub._forward_hooks or sub._forward_pre_hooks
               for hooks in (sub._forward_hooks, sub._forward_pre_hooks) for hook in hooks.values()
               if getattr(hook, "graph_safe", False))
    return tuple(sorted(serial for serial in serials if serial))


class HookSet:
    """Hooks installed on one model; use as a context manager so they are removed even when the forward raises.

    ``graph_safe=True`` declares that every callback added does the same device work at every call of one shape
    (at every decode step it indexes per-step results with a device clock, as
    :class:`neuronscope.trace.decode.StepBuffers` does), so that a CUDA graph may replay those calls
    (:func:`neuronscope.trace.decode.greedy_generate`'s decode steps, :mod:`neuronscope.attribute.ig_graphs`' calls);
    any other hook on the model makes them run eagerly. ``owned=True``: the hooks are the replaying path's own (their
    work is described by that path's graph key, e.g. integrated gradients' row scaling), so they are left out of
    :func:`graph_safe_hooks`.
    """

    def __init__(self, adapter: ModelAdapter, graph_safe: bool = False, owned: bool = False):
        self.adapter = adapter
        self.call = CallState()
        self.graph_safe = graph_safe
        self.owned = owned
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._watch_decoder()

    def _declared(self, hook: Callable) -> Callable:
        """``hook``, marked graph-safe when this set is (what :func:`foreign_hooks` reads), with its serial number
        (what :func:`graph_safe_hooks` reads)."""
        hook.graph_safe = self.graph_safe
        hook.serial = 0 if self.owned else next(_SERIALS)
        return hook

    # -- call tracking ---------------------------------------------------------------------------------------
    def _watch_decoder(self) -> None:
        call = self.call

        def before_decoder(module: nn.Module, args: tuple, kwargs: dict) -> None:
            # transformers >= 5.24 names the KV cache "cache"; earlier releases "past_key_values".
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            offset = 0
            driven = driven_length(cache) if cache is not None else None
            if driven is not None:  # our own decoder says where the call starts: no read of the device
                offset = driven
            elif cache is not None and hasattr(cache, "get_seq_length"):
                length = cache.get_seq_length()  # a device tensor for static caches
                # while a CUDA graph is being captured the device cannot be read: the call follows the last one
                offset = call.offset + call.seq_len if _capturing(length) else int(length)
            tokens = kwargs.get("input_ids")
            if tokens is None and args:
                tokens = args[0]
            if tokens is None:
                tokens = kwargs.get("inputs_embeds")
            call.offset = offset
            call.batch, call.seq_len = int(tokens.shape[0]), int(tokens.shape[1])
            call.calls += 1
            if offset == 0:
                call.prompt_len = call.seq_len
                call.mask, call._right_padded = kwargs.get("attention_mask"), None  # read when needed

        self._handles.append(self.adapter.decoder.register_forward_pre_hook(self._declared(before_decoder),
                                                                            with_kwargs=True))

    # -- site hooks ------------------------------------------------------------------------------------------
    def add(self, handle: SiteHandle, callback: SiteCallback) -> None:
        """Call ``callback(site_tensor, call)`` whenever ``handle``'s module runs; a returned tensor replaces the
        site slice (moved to the module's device and dtype)."""
        call = self.call
        start, width = handle.start, handle.width

        def rewrite(tensor: torch.Tensor) -> torch.Tensor | None:
            view = tensor[..., start:start + width] if (start or width != tensor.shape[-1]) else tensor
            new = callback(view, call)
            if new is None:
                return None
            new = new.to(device=tensor.device, dtype=tensor.dtype)
            if view is tensor:
                return new
            return torch.cat([tensor[..., :start], new, tensor[..., start + width:]], dim=-1)

        if handle.kind == "input":

            def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
                if args:
                    new = rewrite(args[0])
                    return None if new is None else ((new, *args[1:]), kwargs)
                new = rewrite(kwargs["hidden_states"])
                return None if new is None else (args, {**kwargs, "hidden_states": new})

            self._handles.append(handle.module.register_forward_pre_hook(self._declared(pre_hook), with_kwargs=True))
        else:

            def post_hook(module: nn.Module, args: tuple, output: Any) -> Any:
                tensor = _first_tensor(output)
                new = rewrite(tensor)
                if new is None:
                    return None
                if isinstance(output, torch.Tensor):
                    return new
                return type(output)((new, *output[1:])) if isinstance(output, tuple) else [new, *output[1:]]

            self._handles.append(handle.module.register_forward_hook(self._declared(post_hook)))

    def remove(self) -> None:
        for hook_handle in self._handles:
            hook_handle.remove()
        self._handles.clear()

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
