"""Tracing and interventions on stock Hugging Face modules (forward hooks; no patched modeling files)."""

from neuronscope.trace.capture import Capture, capture
from neuronscope.trace.expert_interventions import (
    ExpertIntervention,
    RoutingIntervention,
    drop_expert,
    force_routing,
)
from neuronscope.trace.experts import ExpertCapture, MoEActivations, capture_experts
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.intervene import (
    Intervention,
    ablate_heads,
    amplify,
    intervene,
    patch_neurons,
    scale_heads,
    scale_neurons,
    set_neurons,
    suppress,
)
from neuronscope.trace.positions import CallState, PositionSpec
from neuronscope.trace.sites import NEURON_SITES, SITES, SiteHandle, resolve_site

__all__ = [
    "CallState", "Capture", "ExpertCapture", "ExpertIntervention", "HookSet", "Intervention", "MoEActivations",
    "RoutingIntervention", "capture_experts", "drop_expert", "force_routing", "NEURON_SITES", "PositionSpec",
    "SITES", "SiteHandle",
    "ablate_heads", "amplify", "capture", "intervene", "patch_neurons", "resolve_site", "scale_heads", "scale_neurons",
    "set_neurons", "suppress",
]
