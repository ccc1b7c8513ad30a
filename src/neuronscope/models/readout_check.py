"""The check every frozen-norm score relies on: the model's logits are the adapter's readout of its last residual
(final norm, unembedding, logit scale, soft-cap). A mixin of :class:`~neuronscope.models.adapter.ModelAdapter`."""

from __future__ import annotations

import torch

from neuronscope.errors import UnsupportedModelError
from neuronscope.models.devices import on_device


class ReadoutChecks:
    """``check_readout`` / ``finish_checks`` of an adapter (which provides ``logits_from_residual``, ``readout``,
    ``model_type`` and ``family``)."""

    def check_readout(self, final_residual: torch.Tensor, logits: torch.Tensor | None,
                      positions: torch.Tensor, defer: bool = False) -> None:
        """Raise unless the model's ``logits [B, T, V]`` at ``positions [B, n]`` are this adapter's readout of the
        final residual ``[B, n, d]`` (final norm, unembedding, logit scale, soft-cap), as every frozen-norm score
        assumes. Called on each scoring forward, so a checkpoint whose readout differs from its family's is
        refused instead of scored wrongly. ``defer``: queue the comparison on the device and raise at
        :meth:`finish_checks` (reading the error back makes the host wait for the device; a scorer that reads its
        results back anyway checks then)."""
        if logits is None or logits.dim() != 3 or logits.shape[1] <= int(positions.max()):
            return
        rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
        model_logits = logits[rows, on_device(positions, logits.device)].float()
        with torch.no_grad():
            ours = self.logits_from_residual(final_residual).float().to(model_logits.device)
        error = (ours - model_logits).norm() / (model_logits.norm() + 1e-12)
        tolerance = 1e-4 if final_residual.dtype in (torch.float32, torch.float64) else 2e-2
        if defer:  # the current scoring call's check (one left by a call that raised before reading it is dropped)
            self.__dict__["_pending_checks"] = [(error, tolerance)]
        else:
            self._raise_if_wrong(error, tolerance)

    def finish_checks(self) -> None:
        """Raise if the readout check queued with ``defer=True`` failed (:meth:`check_readout`)."""
        pending, self.__dict__["_pending_checks"] = self.__dict__.get("_pending_checks", []), []
        for error, tolerance in pending:
            self._raise_if_wrong(error, tolerance)

    def _raise_if_wrong(self, error: torch.Tensor, tolerance: float) -> None:
        if float(error) > tolerance:
            raise UnsupportedModelError(
                f"the logits of '{self.model_type}' are not the readout of its last residual that the family "
                f"spec '{self.family.name}' declares (final norm, unembedding, logit scale "
                f"{self.readout.scale:g}, soft-cap {self.readout.softcap}; relative error {float(error):.2g}): "
                "frozen-norm scores would be wrong. Declare the family's logit operations in its FamilySpec "
                "(logits=...)."
            )
