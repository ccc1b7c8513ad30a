"""The device-selected contribution of an MoE model's expert neurons in the fewest kernels (the MoE counterpart of
:mod:`~neuronscope.attribute.stacked`). A forward of a 30B-A3B-shaped model issues ~90 kernels a layer for ~0.5 ms
of GPU work: the host issuing them sets the wall time, so the scoring's cost is its kernel count.

Inside the forward each MoE layer issues four (besides reading the stock implementation's activations, see
:mod:`neuronscope.trace.expert_hooks`): the target tokens' routed activations ``a [R, k, f]``, their experts and
router weights ``g [R, k]`` into stacked buffers (``index_select(..., out=)``), and ``<w_{e,i}, u_t>`` of every
routed expert for the ``m`` distinct targets into ``[L, E, m, f]`` (one batched product into its slot). After
the forward, a handful for all layers: ``g · a · <w_{e_s,i}, u_t>`` of the ``k`` routed experts of each
(row, target), scattered into the score grid at their experts' columns (the unrouted ones stay 0), then the
top-k. The numbers are :func:`~.moe_contribution.scores_from_capture`'s to the last bit (the same products in
the same order; tests/attribute/test_moe_stacked.py).

Serves models whose scored layers are all routed-expert layers of one shape, device and dtype, without shared
experts, expert biases, an input-side router weight (Llama-4) or a centring final norm; the general path
otherwise.
"""

from __future__ import annotations

import torch

from neuronscope.models.adapter import ModelAdapter
from neuronscope.models.devices import on_device
from neuronscope.trace.expert_hooks import ExpertCall, ExpertHooks
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.positions import Explicit, select


def fits(adapter: ModelAdapter, layers: list[int], centre: bool) -> bool:
    """Whether :class:`StackedExperts` serves these layers."""
    moe = adapter.moe
    if centre or layers != sorted(layers) or not all(moe.is_moe(layer) for layer in layers):
        return False
    found = [moe.layers[layer] for layer in layers]
    first = found[0]
    down = [m.experts.down_proj for m in found]
    return all(not m.shared and not m.has_bias and not m.family.weight_on_input and m.interface
               and (m.n_experts, m.top_k, m.width, m.transposed) == (first.n_experts, first.top_k, first.width,
                                                                     first.transposed)
               and d.device == down[0].device and d.dtype == down[0].dtype for m, d in zip(found, down, strict=True))


class StackedExperts:
    """Hooks and buffers of one stacked call (module docstring).

    Args:
        adapter: the model's adapter; ``layers``: the scored MoE layers (slot ``s`` is ``layers[s]``).
        positions: ``[B, n]`` the targets' producing positions; ``directions``: ``[m, d]`` the distinct target
            directions (score dtype); ``target_index``: ``[B, n]`` which one each (row, target) uses.
    """

    def __init__(self, adapter: ModelAdapter, layers: list[int], positions: torch.Tensor, directions: torch.Tensor,
                 target_index: torch.Tensor):
        first = adapter.moe.layers[layers[0]]
        down = first.experts.down_proj
        self.adapter, self.layers, self.moe = adapter, layers, first
        self.device, self.dtype = down.device, directions.dtype
        self.spec = Explicit(positions.cpu(), torch.ones_like(positions, dtype=torch.bool).cpu())
        self.target_index = target_index.to(self.device)
        self.cast = directions.to(self.device, down.dtype)
        self.rows: torch.Tensor | None = None  # [R] token rows b·T + t of the targets (R = B·n), once per call
        # [L, R, k, f], [L, R, k], [L, R, k], in the dtypes the stock modules give them, made at the first layer
        self.acts: torch.Tensor | None = None
        self.experts: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None
        self.routed = torch.empty(len(layers), first.n_experts, directions.shape[0], first.width, dtype=down.dtype,
                                  device=self.device)

    def attach(self, hooks: HookSet) -> None:
        moe_hooks = ExpertHooks(self.adapter, hooks)
        for slot, layer in enumerate(self.layers):
            moe_hooks.on_experts(layer, self._recorder(slot))

    def _recorder(self, slot: int):
        def record(call: ExpertCall) -> None:
            if call.call.offset != 0:
                return
            if self.rows is None:
                selection = select(self.spec, call.call)
                self.rows = call.rows(selection, valid_only=False, local=on_device(selection.local, self.device))
            if self.acts is None:
                first = call.activations(self.rows)
                self.acts = first.new_empty(len(self.layers), *first.shape)
                self.experts = call.experts.new_empty(len(self.layers), *first.shape[:2])
                self.weights = call.weights.new_empty(len(self.layers), *first.shape[:2])
            call.activations_into(self.rows, self.acts[slot])  # [R, k, f]
            torch.index_select(call.experts, 0, self.rows, out=self.experts[slot])
            torch.index_select(call.weights, 0, self.rows, out=self.weights[slot])
            down = call.moe.experts.down_proj  # [E, d, f], or [E, f, d] transposed
            torch.matmul(self.cast, down.transpose(1, 2) if call.moe.transposed else down, out=self.routed[slot])

        return record

    def write(self, scores: torch.Tensor) -> None:
        """After the forward: every layer's scores into ``scores [B, n, L·E·f]`` (zeros on entry)."""
        n_layers, rows, _, width = self.acts.shape
        grid = scores.view(rows, n_layers, self.moe.n_experts, width)
        scatter_routed(self.acts, self.weights, self.experts, self.routed, self.target_index.reshape(rows), grid)


def scatter_routed(acts: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, routed: torch.Tensor,
                   target_index: torch.Tensor, grid: torch.Tensor) -> None:
    """Pure math: add ``g · a · <w_{e,i}, u_t>`` of the ``k`` routed experts of each score row into their experts'
    columns of ``grid [R, L, E, f]`` (zeros where unrouted).

    Args:
        acts: ``[L, R, k, f]`` routed activations; ``weights``: ``[L, R, k]`` what multiplies each expert's output
            (``g``); ``experts``: ``[L, R, k]`` which experts.
        routed: ``[L, E, m, f]`` ``<w_{e,i}, u_j>`` for the ``m`` distinct targets; ``target_index``: ``[R]`` which
            one each row scores. The product is formed in ``grid``'s dtype (activations promoted inside it).
    """
    n_layers, rows, k, width = acts.shape
    experts = experts.long()
    weighted = acts * weights[..., None].to(grid.dtype)  # [L, R, k, f]: g · a, in the score dtype
    slots = torch.arange(n_layers, device=grid.device)[:, None, None]
    values = weighted * routed[slots, experts, target_index.reshape(1, rows, 1)]  # [L, R, k, f]
    index = experts.transpose(0, 1)[..., None].expand(rows, n_layers, k, width)
    grid.scatter_add_(2, index, values.transpose(0, 1))
