"""Sites: named places in a decoder layer where activations are read or changed.

Neuron sites (``[.., d_ff]``; DESIGN §2):
- ``neuron`` (default): the input of the FFN output projection; its value vectors are that projection's columns.
- ``act``: the activation function's output alone (SiLU(gate) in gated FFNs; what Pan et al.'s code hooks).
- ``up``: the up projection's output (gated FFNs; what qrneuron hooks).
- ``gate``: the gate projection's output, before the activation (gated FFNs).
- ``pre``: the pre-activation: the first projection's output of a non-gated FFN (GPT-2 ``c_fc``), the gate
  projection's output of a gated one.

Other sites:
- ``attn``: the input of the attention output projection, ``[.., n_heads * head_dim]`` (heads are slices).
- ``attn_out``: the attention output projection's output ``[.., d_model]``.
- ``ffn_out``: the FFN output projection's output ``[.., d_model]`` (before any post-FFN norm).
- ``ffn_in``: the residual that the FFN reads, i.e. the input of the pre-FFN norm (or of the FFN where it has
  none); sequential blocks only (parallel-residual FFNs read ``resid_pre``).

Hybrid families: neuron and ``ffn_*`` sites exist only in FFN layers, ``attn*`` only in softmax-attention layers;
asking for them elsewhere raises a :class:`~neuronscope.errors.SiteError` that names the layer's mixer.
- ``resid_pre`` / ``resid_post``: the decoder layer's input / output ``[.., d_model]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from neuronscope.errors import SiteError
from neuronscope.models.adapter import ModelAdapter

NEURON_SITES = ("neuron", "act", "up", "gate", "pre")
OTHER_SITES = ("attn", "attn_out", "ffn_out", "ffn_in", "resid_pre", "resid_post")
SITES = NEURON_SITES + OTHER_SITES


@dataclass(frozen=True)
class SiteHandle:
    """Where a site is on a live model.

    Attributes:
        module: the module to hook.
        kind: ``"input"`` (the module's first input: forward pre-hook) or ``"output"`` (forward hook).
        start, width: the site is ``tensor[..., start:start + width]`` of that input/output.
    """

    site: str
    layer: int
    module: nn.Module
    kind: str
    start: int
    width: int


def _require(adapter: ModelAdapter, name: str | None, site: str, hint: str) -> str:
    if name is None:
        raise SiteError(f"site '{site}' does not exist in family '{adapter.family.name}': {hint}")
    return name


def resolve_site(adapter: ModelAdapter, site: str, layer: int) -> SiteHandle:
    """Resolve ``site`` at decoder layer ``layer`` to a module, a hook kind and a slice.

    Example:
        >>> handle = resolve_site(get_adapter(model), "neuron", 0)
        >>> handle.kind, handle.width == get_adapter(model).d_ff
        ('input', True)
    """
    if site not in SITES:
        raise SiteError(f"unknown site '{site}': choose one of {', '.join(SITES)}")
    layer = adapter.check_layer(layer)
    spec = adapter.family
    d_ff, d_model = adapter.d_ff, adapter.d_model

    def handle(name: str, kind: str, start: int = 0, width: int = d_ff) -> SiteHandle:
        return SiteHandle(site, layer, adapter.module(layer, name), kind, start, width)

    moe = getattr(adapter, "moe", None)
    moe_layer = moe is not None and moe.is_moe(layer)
    if moe_layer and site in (*NEURON_SITES, "ffn_out"):
        if site == "ffn_out":  # the MoE block's output (routed + shared experts)
            return SiteHandle(site, layer, moe.layers[layer].block, "output", 0, d_model)
        raise SiteError(f"layer {layer} is a mixture-of-experts layer: its neurons are (layer, expert, index) rows "
                        "of neuronscope.trace.experts (capture_experts) and expert interventions, not site "
                        f"'{site}'")
    if not moe_layer and (site in NEURON_SITES or site in ("ffn_out", "ffn_in")):
        adapter.require_ffn(layer)
    elif site in ("attn", "attn_out"):
        adapter.require_attention(layer)

    if site == "neuron":
        return handle(spec.down, "input")
    if site == "act":
        return handle(_require(adapter, spec.act, site, "its activation is not a module; use 'neuron'"), "output")
    if site in ("up", "gate"):
        if spec.fused_gate_up is not None:
            return handle(spec.fused_gate_up, "output", start=d_ff if site == "up" else 0)
        hint = "its FFN is not gated; use 'pre' (the first projection's output) or 'neuron'"
        return handle(_require(adapter, getattr(spec, site), site, hint), "output")
    if site == "pre":
        if spec.pre is not None:
            return handle(spec.pre, "output")
        if spec.fused_gate_up is not None:
            return handle(spec.fused_gate_up, "output", start=0)
        return handle(_require(adapter, spec.gate, site, "no first FFN projection is known"), "output")
    if site == "attn":
        return handle(spec.attn_out, "input", width=adapter.n_heads * adapter.head_dim_of(layer))
    if site == "attn_out":
        return handle(spec.attn_out, "output", width=d_model)
    if site == "ffn_out":
        return handle(spec.down, "output", width=d_model)
    if site == "ffn_in":
        if adapter.parallel_residual:
            raise SiteError(
                f"site 'ffn_in' is not a tensor of family '{spec.name}' (parallel residual): the FFN reads the "
                "layer input ('resid_pre') and its output is added to resid_pre + attn_out"
            )
        return handle(spec.ffn if spec.ffn_norm is None else spec.ffn_norm, "input", width=d_model)
    # resid_pre / resid_post: hook the decoder layer itself.
    return SiteHandle(site, layer, adapter.layers[layer], "input" if site == "resid_pre" else "output", 0, d_model)


def site_exists(adapter: ModelAdapter, site: str, layer: int) -> bool:
    """Whether ``site`` exists at ``layer`` (hybrids: neuron sites need an FFN layer, head sites attention)."""
    if site in ("ffn_out", "ffn_in") and adapter.ffn_kinds[adapter.check_layer(layer)] == "moe":
        return True  # an MoE block's output and input (its neurons are expert rows)
    if site in NEURON_SITES or site in ("ffn_out", "ffn_in"):
        return adapter.has_ffn(layer)
    if site in ("attn", "attn_out"):
        return adapter.has_attention(layer)
    return True
