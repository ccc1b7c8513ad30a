"""``locate --raising-pool N``: choose the neurons whose amplification raises the target (docs/EFFECTS.md).

The method's score ranks every neuron; the ``N`` best are candidates; each candidate alone is scaled by
``--raising-factor`` (default ×2) on every prompt of the run, and the ``--top-k`` candidates with the largest
positive mean change of ``log P(target)`` are kept (:func:`neuronscope.measure.effects.single_neuron_effects`).
Fewer than ``--top-k`` are kept when fewer raise it; the run says how many did.
"""

from __future__ import annotations

from typing import Any

import torch

from neuronscope.errors import NothingProcessedError
from neuronscope.workflows.specs.text import LocateOptions


def keep_raising(loaded: Any, options: LocateOptions, records: list[dict[str, Any]], pool: torch.Tensor,
                 pool_scores: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(neurons [n, 2], their selection scores [n], facts for metrics.json)``: the candidates ``pool`` (scored
    ``pool_scores`` by the method) that raise the target most; each one's measured effect goes into the facts.

    ``records`` are the run's merged example records (prompt, token id); candidates are scored on all of them.
    """
    from neuronscope.inputs.batch import encode_prompts
    from neuronscope.inputs.targets import token_targets
    from neuronscope.measure.effects import raising_neurons, single_neuron_effects
    from neuronscope.workflows.common import model_device

    prompts = [record["prompt"] for record in records]
    batch = encode_prompts(loaded.processor, prompts, chat=options.chat, model=loaded.model)
    batch = batch.to(model_device(loaded.model))
    targets = token_targets(batch, [int(record["token_id"]) for record in records])
    effects = single_neuron_effects(loaded.model, batch, targets, pool, factor=options.raising_factor,
                                    chunk=32)
    kept = raising_neurons(effects, top_k)
    mean = effects.mean(0)
    facts = {"raising_pool": len(pool), "raising_factor": options.raising_factor,
             "raising_in_pool": int((mean > 0).sum()), "raising_kept": len(kept)}
    if not len(kept):
        raise NothingProcessedError(f"none of the {len(pool)} best neurons raises the target when scaled by "
                                    f"{options.raising_factor} alone; try a larger --raising-pool or leave it out")
    facts["raising_effects"] = [{"layer": int(layer), "index": int(index), "mean_log_p_change": float(value)}
                                for (layer, index), value in zip(pool[kept].tolist(), mean[kept].tolist(),
                                                                 strict=True)]
    return pool[kept], pool_scores[kept], facts
