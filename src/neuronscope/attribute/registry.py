"""The attribution methods, registered once in one table; the names are the CLI's ``--method`` choices.

Every method has the signature ``method(model, batch, targets, **options) -> NeuronScores`` (scores
``[examples, targets, layers, d_ff]``, or heads for head-level methods, see each method). The table is plain data
and the functions are imported only when a method is used, so listing methods imports no torch.

Example:
    >>> [info.name for info in list_methods()][:2]
    ['comparative', 'contribution']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from neuronscope.errors import NeuronscopeError, OptionError


@dataclass(frozen=True)
class MethodInfo:
    """One attribution method: its name, where its function is, what it computes, and the paper it comes from."""

    name: str
    target: str  # "module:function"
    summary: str
    paper: str
    uses_gradients: bool = False

    @property
    def function(self) -> Callable[..., Any]:
        module, function = self.target.split(":")
        return getattr(import_module(module), function)

    def keyword_arguments(self, site: str = "neuron", layers: list[int] | None = None,
                          options: dict[str, Any] | None = None) -> dict[str, Any]:
        """The keyword arguments for a call: ``site``, ``layers`` and the method options the function accepts.

        Raises:
            OptionError: a site or layers for a method without them, or options it does not take (the message
                lists the ones it accepts).
        """
        params = inspect.signature(self.function).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        accepted = [name for name, p in params.items()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY or p.default is not inspect.Parameter.empty]
        kwargs: dict[str, Any] = {}
        if "site" in params or takes_any:
            kwargs["site"] = site
        elif site != "neuron":
            raise OptionError(f"method '{self.name}' has no site option; drop --site {site}")
        if "layers" in params or takes_any:
            kwargs["layers"] = layers
        elif layers is not None:
            raise OptionError(f"method '{self.name}' scores every layer; drop --layers")
        options = dict(options or {})
        unknown = sorted(set(options) - set(accepted)) if not takes_any else []
        if unknown:
            shown = ", ".join(a for a in accepted if a not in ("site", "layers")) or "none"
            raise OptionError(f"--option {', '.join(unknown)}: not an option of this method; it accepts {shown}")
        kwargs.update(options)
        return kwargs


_METHODS = (
    MethodInfo("comparative", "neuronscope.attribute.comparative:comparative",
               "CNA: a score under condition B minus under condition A (prompts, ablations, models)",
               "Yu & Ananiadou 2024 (comparative neuron analysis)"),
    MethodInfo("contribution", "neuronscope.attribute.contribution:contribution",
               "a·<w_i, u_t>: gradient-free logit contribution", "Pan et al. 2024 (multimodal neurons)"),
    MethodInfo("gradient_x_activation", "neuronscope.attribute.gradient_x_activation:gradient_x_activation",
               "a · ∂log P(y)/∂a at the target position, all layers, one backward per target",
               "first-order (Taylor) attribution; baseline of Dai et al. 2022 and Yu & Ananiadou 2024",
               uses_gradients=True),
    MethodInfo("integrated_gradients", "neuronscope.attribute.integrated_gradients:integrated_gradients",
               "a · mean_k ∂P(y | a_l ← α_k a_l)/∂a: knowledge-neuron IG at one layer",
               "Dai et al. 2022 (knowledge neurons); Chen et al. 2024 (NA-ICA / QRNCA)", uses_gradients=True),
    MethodInfo("log_probability_increase", "neuronscope.attribute.log_probability_increase:log_probability_increase",
               "log p(w | r + v) − log p(w | r) with the final norm frozen",
               "Yu & Ananiadou 2024 (neuron-level knowledge attribution)"),
)
METHODS: dict[str, MethodInfo] = {info.name: info for info in _METHODS}


def get_method(name: str) -> MethodInfo:
    """The method registered as ``name``."""
    if name not in METHODS:
        raise NeuronscopeError(f"unknown attribution method '{name}': choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def list_methods() -> list[MethodInfo]:
    """Every registered method, by name."""
    return [METHODS[name] for name in sorted(METHODS)]
