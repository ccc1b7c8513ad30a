"""Builders for the shapes most families share, so that a family file states only what differs.

- :func:`gated`: ``down(act(gate(x)) * up(x))`` (Llama and most decoders since);
- :func:`plain`: ``down(act(up(x)))`` with the family's own names (GPT-2 ``c_fc`` / ``c_proj``, Phi ``fc1`` / ``fc2``);
- :func:`fused`: ``down(act(gate) * up)`` with ``[gate | up]`` from one projection (Phi-3, GLM);
- :func:`mixer_by_module` / :func:`mixer_by_attribute`: per-layer token mixers of hybrid families.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from neuronscope.errors import UnsupportedModelError
from neuronscope.models.spec import FamilySpec


def gated(name: str, model_types: tuple[str, ...], *, mlp: str = "mlp", attn: str = "self_attn",
          out: str = "o_proj", act: str | None = "act_fn", gate: str = "gate_proj", up: str = "up_proj",
          down: str = "down_proj", attn_norm: str | None = "input_layernorm",
          ffn_norm: str | None = "post_attention_layernorm", **facts: Any) -> FamilySpec:
    """A gated FFN ``{mlp}.{down}({act}({gate}(x)) * {up}(x))`` and attention ``{attn}.{out}``."""
    return FamilySpec(name=name, model_types=model_types, down=f"{mlp}.{down}", attn_out=f"{attn}.{out}",
                      act=f"{mlp}.{act}" if act else None, up=f"{mlp}.{up}", gate=f"{mlp}.{gate}",
                      attn_norm=attn_norm, ffn_norm=ffn_norm, **facts)


def plain(name: str, model_types: tuple[str, ...], *, mlp: str = "mlp", up: str, down: str,
          act: str | None = "act", attn: str = "self_attn", out: str = "o_proj",
          attn_norm: str | None = "input_layernorm", ffn_norm: str | None = "post_attention_layernorm",
          **facts: Any) -> FamilySpec:
    """A non-gated FFN ``{mlp}.{down}({act}({mlp}.{up}(x)))``: site ``pre`` is the first projection's output."""
    return FamilySpec(name=name, model_types=model_types, down=f"{mlp}.{down}", attn_out=f"{attn}.{out}",
                      act=f"{mlp}.{act}" if act else None, pre=f"{mlp}.{up}", attn_norm=attn_norm,
                      ffn_norm=ffn_norm, **facts)


def fused(name: str, model_types: tuple[str, ...], *, mlp: str = "mlp", gate_up: str = "gate_up_proj",
          down: str = "down_proj", act: str | None = "activation_fn", attn: str = "self_attn",
          out: str = "o_proj", attn_norm: str | None = "input_layernorm",
          ffn_norm: str | None = "post_attention_layernorm", **facts: Any) -> FamilySpec:
    """A gated FFN whose gate and up projections are one ``[gate | up]`` projection."""
    return FamilySpec(name=name, model_types=model_types, down=f"{mlp}.{down}", attn_out=f"{attn}.{out}",
                      act=f"{mlp}.{act}" if act else None, fused_gate_up=f"{mlp}.{gate_up}",
                      attn_norm=attn_norm, ffn_norm=ffn_norm, **facts)


def mixer_by_module(kinds: dict[str, str]) -> Callable[[Any, int, Any], str]:
    """Mixer kind from which of ``kinds``' module names a layer holds (``"+"``-joined when several run in
    parallel, e.g. Falcon-H1's ``attention+mamba``; ``"none"`` when it holds none)."""

    def mixer(layer: Any, index: int, config: Any) -> str:
        found = [kind for name, kind in kinds.items() if getattr(layer, name, None) is not None]
        return "+".join(found) or "none"

    return mixer


def mixer_by_attribute(attribute: str, kinds: dict[str, str]) -> Callable[[Any, int, Any], str]:
    """Mixer kind from a layer attribute (``block_type`` / ``layer_type``) through ``kinds``."""

    def mixer(layer: Any, index: int, config: Any) -> str:
        value = getattr(layer, attribute, None)
        if value not in kinds:
            raise UnsupportedModelError(f"layer {index} has {attribute}={value!r}, a mixer neuronscope does not know "
                                        f"(known: {sorted(kinds)})")
        return kinds[value]

    return mixer
