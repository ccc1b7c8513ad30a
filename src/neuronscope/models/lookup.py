"""Registry look-ups and module-tree probing shared by the adapter: which spec or refusal a model type has,
where the decoder and its layers are, what kind of FFN a layer holds. No family facts live here."""

from __future__ import annotations

from typing import Any

from torch import nn

from neuronscope.errors import UnsupportedModelError
from neuronscope.models.families import REFUSALS, TEXT_SPECS, VISION_FAMILIES
from neuronscope.models.spec import FamilySpec, Refusal

LAYER_LIST_NAMES = ("layers", "h", "blocks", "block", "decoder_layers")
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "final_norm")
MOE_ISSUE = ("its mixture-of-experts layers belong to no MoE family neuronscope covers (add one in "
             "src/neuronscope/models/moe/families.py)")


def get_path(module: Any, dotted: str) -> Any:
    """The attribute at a dotted path, or None."""
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def first_attr(module: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | tuple[None, None]:
    """The first of ``names`` that is a submodule of ``module``, with its name."""
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return name, child
    return None, None


def text_config(config: Any) -> Any:
    """The configuration of a model's language part: ``get_text_config()`` where the config has it (a VLM's text
    config), else the config itself."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def config_value(config: Any, *names: str) -> Any:
    """The first of ``names`` set on ``config`` (per-layer attributes of transformers 5 raise on access: None)."""
    for name in names:
        try:
            value = getattr(config, name, None)
        except Exception:  # AmbiguousGlobalPerLayerAttributeError and friends
            value = None
        if value is not None:
            return value
    return None


def in_out(module: nn.Module, conv1d: bool) -> tuple[int, int]:
    """``(in_features, out_features)`` of a Linear or a GPT-2 ``Conv1D``."""
    weight = module.weight
    return (weight.shape[0], weight.shape[1]) if conv1d else (weight.shape[1], weight.shape[0])


def supported_families() -> list[str]:
    """Names of the text families, mixture-of-experts families and vision-language wrappers with an adapter."""
    from neuronscope.models.moe.families import MOE_FAMILIES, MOE_VISION_FAMILIES

    return [spec.name for spec in TEXT_SPECS] + [family.name for family in MOE_FAMILIES] + [
        vf.name for vf in (*VISION_FAMILIES, *MOE_VISION_FAMILIES)]


def unsupported(model_type: str, why: str) -> UnsupportedModelError:
    """The error for a model type without an adapter (names the supported families and how to add one)."""
    return UnsupportedModelError(
        f"model type '{model_type}' has no adapter ({why}). Supported families: {', '.join(supported_families())} "
        "(`neuronscope models` lists every model type with its status). To add one, write a FamilySpec in "
        "src/neuronscope/models/families/<family>.py naming its FFN output projection, attention output "
        "projection and residual facts (see llama.py), add it to families/__init__.py, and add its tiny config to "
        "tests/helpers/tiny_families.py (the accounting test then checks it)."
    )


def refusal_for(model_type: str) -> Refusal | None:
    """The registry's refusal of ``model_type``, or None."""
    return next((r for r in REFUSALS if model_type in r.model_types), None)


def refuse_listed(*model_types: str) -> None:
    """Raise the registry's refusal of the first of ``model_types`` it refuses (the wrapper's, then its text's)."""
    for model_type in dict.fromkeys(model_types):
        refusal = refusal_for(model_type)
        if refusal is not None:
            raise UnsupportedModelError(f"model type '{model_type}' is not supported ({refusal.kind}): {refusal.reason}")


def spec_for(model_type: str) -> FamilySpec | None:
    """The text family spec that adapts ``model_type``, or None."""
    return next((spec for spec in TEXT_SPECS if model_type in spec.model_types), None)


def find_decoder(model: nn.Module) -> nn.Module:
    """The decoder (the module holding the layer list) of a causal LM or a VLM."""
    candidates = []
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            candidates.append(get_decoder())
        except (AttributeError, NotImplementedError, TypeError, ValueError):
            pass
    for path in ("model.language_model", "language_model.model", "language_model", "model.text_model",
                 "text_model", "transformer", "model", "gpt_neox", "backbone"):
        candidates.append(get_path(model, path))
    for decoder in candidates:
        if decoder is None:
            continue
        _, layers = first_attr(decoder, LAYER_LIST_NAMES)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return decoder
    raise unsupported(getattr(model.config, "model_type", type(model).__name__), "no decoder layer list found")


def ffn_kind(layer: nn.Module, spec: FamilySpec) -> str:
    """``"dense"``, ``"moe"`` or ``"none"`` for one decoder layer."""
    ffn = get_path(layer, spec.ffn)
    if not isinstance(ffn, nn.Module):
        return "none"
    name = type(ffn).__name__.lower()
    if hasattr(ffn, "experts") or hasattr(ffn, "router") or any(k in name for k in ("moe", "sparse", "expert")):
        return "moe"
    return "dense" if isinstance(get_path(layer, spec.down), nn.Module) else "none"


def is_vision_language(config: Any) -> bool:
    """Whether a config describes a vision-language model."""
    return any(config_value(config, name) is not None for name in ("vision_config", "vision_tower", "vq_config"))


