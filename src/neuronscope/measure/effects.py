"""What one neuron does to the model's output when it alone is scaled: the total effect, measured, not estimated.

Contribution (``a_i·⟨w_i, u_t⟩``) and LPI are *direct* effects: they read a neuron's write through the unembedding
(LPI also through the frozen final norm) and ignore everything after it — the final norm's rescaling, the softmax
normaliser (a neuron that raises many tokens raises ``logsumexp`` as much as its target) and the later layers that
read the neuron's write. So a neuron with a large score can *lower* its target when amplified, and a set of them
amplified together can overshoot (docs/EFFECTS.md measures it on SmolLM2). :func:`single_neuron_effects` measures
the total effect of each candidate, one batched forward per chunk of candidates (row ``b`` of the chunk scales
candidate ``b`` alone); :func:`raising_neurons` keeps the candidates whose amplification raises the target.

Example:
    >>> pool, _ = scores.top_k(100, example=0)                                  # doctest: +SKIP
    >>> effects = single_neuron_effects(model, batch, targets, pool, factor=2.0)  # doctest: +SKIP
    >>> neurons = pool[raising_neurons(effects, k=20)]                            # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn

from neuronscope.errors import OptionError
from neuronscope.inputs.batch import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.trace import Intervention, intervene
from neuronscope.trace.positions import PositionSpec


def _one_at_a_time(chunk: torch.Tensor, factor: float, site: str, positions: PositionSpec) -> list[Intervention]:
    """Interventions for ``len(chunk)`` rows where row ``b`` scales neuron ``chunk[b]`` and nothing else."""
    out = []
    for layer in chunk[:, 0].unique().tolist():
        members = (chunk[:, 0] == layer).nonzero(as_tuple=True)[0]
        value = torch.ones(len(chunk), len(members), dtype=torch.float64)
        value[members, torch.arange(len(members))] = factor
        out.append(Intervention(site, int(layer), "scale", value, chunk[members, 1], positions))
    return out


@torch.no_grad()
def single_neuron_effects(model: nn.Module, batch: Batch, targets: TargetSet, neurons: torch.Tensor, *,
                          factor: float = 2.0, positions: PositionSpec = "last", site: str = "neuron",
                          chunk: int = 32) -> torch.Tensor:
    """Change of ``log P(target)`` when each neuron alone is scaled by ``factor``: ``[examples, n]`` float64.

    Args:
        neurons: ``[n, 2]`` (layer, index) candidates.
        factor: the scale (2.0 = amplify ×2, 0.0 = suppress).
        positions: where the neuron is scaled (default the last position, as ``intervene`` does).
        chunk: candidates per forward (rows of one batch; memory grows with it).

    Each example's first target is read at its position; every other neuron keeps its value.
    """
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    if neurons.dim() != 2 or neurons.shape[1] != 2:
        raise OptionError(f"single_neuron_effects takes [n, 2] (layer, index) neurons, got {tuple(neurons.shape)}"
                          " (expert neurons: measure them with intervene and scale_neurons)")
    if chunk < 1:
        raise OptionError(f"chunk must be at least 1, got {chunk}")
    examples = batch.input_ids.shape[0]
    effects = torch.zeros(examples, len(neurons), dtype=torch.float64)
    for row in range(examples):
        token, where = int(targets.token_ids[row, 0]), int(targets.positions[row, 0])
        base = model(**batch.select([row]).inputs).logits[0, where].double().log_softmax(-1)[token]
        for start in range(0, len(neurons), chunk):
            part = neurons[start:start + chunk]
            with intervene(model, _one_at_a_time(part, factor, site, positions)):
                logits = model(**batch.select([row] * len(part)).inputs).logits[:, where]
            effects[row, start:start + len(part)] = (logits.double().log_softmax(-1)[:, token] - base).cpu()
    return effects


def raising_neurons(effects: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (into the candidates) of the ``k`` largest mean effects that are positive, largest first: ``[<=k]``.

    Example:
        >>> raising_neurons(torch.tensor([[0.2, -0.1, 0.5]]), k=5).tolist()
        [2, 0]
    """
    mean = effects.double().mean(0)
    order = mean.argsort(descending=True)
    return order[mean[order] > 0][:k]
