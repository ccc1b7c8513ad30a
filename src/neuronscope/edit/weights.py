"""Persistent edits of value vectors ``w_i`` (columns of the FFN output projection), with exact revert.

An edit is data: the neurons ``[n, 2]`` (layer, index) — ``[n, 3]`` (layer, expert, index) for a mixture-of-experts
model, whose value vectors are columns of the fused ``down_proj`` of each expert (edited in place, reverted bit for
bit like any other) — one delta per neuron ``[n, d_model]`` (``w_i += delta_i``),
what it is for and how it was made, and a fingerprint of the weights it was made against. It is saved as
``<name>.safetensors`` (neurons, deltas) + ``<name>.json`` (everything else), applied to a model (refusing, before
writing anything, when the model is not the one it was made for), reverted bit for bit (the original columns are
kept and copied back: subtracting the delta again would not restore every bit in floating point), and exported
with ``save_pretrained``.

Example:
    >>> edit = ValueVectorEdit.erase(model, neurons, reason="remove 'red'")
    >>> with edit.applied(model):
    ...     model.generate(...)
    >>> edit.save("runs/erase_red")           # later: ValueVectorEdit.load("runs/erase_red").apply(fresh_model)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from neuronscope.errors import EditMismatchError, InputError, NeuronscopeError, ResultFileError
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.models.moe.weights import value_vector
from neuronscope.results.io import read_json, read_safetensors, write_json, write_safetensors

FORMAT_VERSION = 1
#: The edit record written beside an exported or applied model.
EDIT_RECORD = "neuronscope_edit"


def _check_neurons(adapter: ModelAdapter, neurons: torch.Tensor) -> torch.Tensor:
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    if neurons.dim() == 2 and neurons.shape[1] == 3:  # (layer, expert, index) rows of an MoE model
        if adapter.moe is None:
            raise NeuronscopeError("(layer, expert, index) rows name expert neurons, but this model is dense")
        neurons = adapter.moe.layout.check(neurons)
        if len({tuple(row) for row in neurons.tolist()}) != len(neurons):
            raise NeuronscopeError("an edit lists the same neuron twice: merge its deltas into one row")
        return neurons
    neurons = neurons.reshape(-1, 2)
    for layer, index in neurons.tolist():
        adapter.check_layer(layer)
        if not 0 <= index < adapter.d_ff:
            raise NeuronscopeError(f"neuron index {index} is out of range: layers have {adapter.d_ff} neurons")
    if len({tuple(row) for row in neurons.tolist()}) != len(neurons):
        raise NeuronscopeError("an edit lists the same neuron twice: merge its deltas into one row")
    return neurons


def _columns(adapter: ModelAdapter, neurons: torch.Tensor) -> torch.Tensor:
    """The current value vectors of ``neurons`` ``[n, d_model]`` (copied, on CPU, original dtype)."""
    rows = []
    for row in neurons.tolist():
        vector = value_vector(adapter, row)
        if vector.device.type == "meta":
            raise NeuronscopeError(
                f"layer {row[0]}'s weights are offloaded (on 'meta'): load the model with its weights on real "
                "devices (a device_map over GPUs/CPU without disk offload) to edit them"
            )
        rows.append(vector.detach().to("cpu", copy=True))
    return torch.stack(rows)


def fingerprint(columns: torch.Tensor) -> str:
    """SHA-256 of the exact bytes of some weights (dtype included)."""
    digest = hashlib.sha256(str(columns.dtype).encode())
    digest.update(columns.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class ValueVectorEdit:
    """``w_i += delta_i`` for each listed neuron; see the module docstring."""

    format: ClassVar[str] = "neuronscope.value_vector_edit"

    neurons: torch.Tensor  # [n, 2] (layer, index)
    deltas: torch.Tensor  # [n, d_model], float32
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    model: dict[str, Any] = field(default_factory=dict)  # architecture + fingerprint of the original columns

    def __post_init__(self) -> None:
        if self.deltas.dim() != 2 or self.deltas.shape[0] != self.neurons.shape[0]:
            raise NeuronscopeError(f"deltas must be [n, d_model] with n = {self.neurons.shape[0]} neurons")
        if not bool(torch.isfinite(self.deltas).all()):
            raise NeuronscopeError("an edit's deltas must be finite (check lambda / sigma)")

    # -- making ----------------------------------------------------------------------------------------------
    @classmethod
    def from_deltas(
        cls, model: nn.Module, neurons: torch.Tensor, deltas: torch.Tensor, method: str,
        params: dict[str, Any] | None = None, reason: str = "",
    ) -> ValueVectorEdit:
        """An edit of ``model``'s value vectors; records the model's architecture and weight fingerprint."""
        adapter = get_adapter(model)
        neurons = _check_neurons(adapter, neurons)
        originals = _columns(adapter, neurons)
        info = {**adapter.describe(), "fingerprint": fingerprint(originals), "dtype": str(originals.dtype)}
        name = getattr(model.config, "_name_or_path", "")
        if name:
            info["name_or_path"] = name
        return cls(neurons, deltas.detach().float().cpu(), method, dict(params or {}), reason, info)

    @classmethod
    def erase(cls, model: nn.Module, neurons: torch.Tensor, reason: str = "") -> ValueVectorEdit:
        """Zero the value vectors (``w_i ← 0``)."""
        neurons = _check_neurons(get_adapter(model), neurons)
        return cls.from_deltas(model, neurons, -_columns(get_adapter(model), neurons).float(), "erase", {}, reason)

    @classmethod
    def noise(
        cls, model: nn.Module, neurons: torch.Tensor, sigma: float, seed: int = 0, reason: str = ""
    ) -> ValueVectorEdit:
        """Add Gaussian noise ``sigma · N(0, I)`` (Pan et al.'s released perturbation)."""
        _finite(sigma=sigma)
        adapter = get_adapter(model)
        neurons = _check_neurons(adapter, neurons)
        generator = torch.Generator().manual_seed(seed)
        deltas = sigma * torch.randn(len(neurons), adapter.d_model, generator=generator)
        return cls.from_deltas(model, neurons, deltas, "noise", {"sigma": sigma, "seed": seed}, reason)

    @classmethod
    def token_shift(
        cls, model: nn.Module, neurons: torch.Tensor, source: int, target: int, strength: float,
        reason: str = "", signs: torch.Tensor | str | None = None,
    ) -> ValueVectorEdit:
        """Closed-form shift from token ``source`` to ``target``: ``w_i ← w_i + λ (u_t − u_s)`` with the
        unembedding rows ``u`` (DESIGN §3.1 (a)). ``source = -1`` for no source (pure promotion).

        ``signs`` (``[n]`` of ±1, e.g. the sign of each neuron's activation on the edit prompt) gives the signed
        form ``w_i ← w_i + λ · sign_i · (u_t − u_s)``: a gated FFN neuron can fire negatively (SiLU(gate) · up < 0),
        and then the unsigned shift pushes its output towards the *source*; signed, every neuron pushes the same way.
        ``signs="source"`` takes ``sign(⟨w_i, u_s⟩)``, which equals the activation's sign for every neuron located
        by a positive contribution to the source token (``a_i ⟨w_i, u_s⟩ > 0``), so no activations are needed.
        """
        _finite(strength=strength)
        adapter = get_adapter(model)
        neurons = _check_neurons(adapter, neurons)
        unembed = adapter.unembedding().detach().float().cpu()
        direction = unembed[target] - (unembed[source] if source >= 0 else 0.0)
        deltas = strength * direction.expand(len(neurons), -1).clone()
        params: dict[str, Any] = {"source": source, "target": target, "lambda": strength}
        if isinstance(signs, str):
            if signs != "source" or source < 0:
                raise InputError(f"signs must be a tensor of ±1 or 'source' (with a source token), got {signs!r}")
            values = torch.stack([value_vector(adapter, row).detach().float().cpu()
                                  for row in neurons.tolist()])  # fmt: skip
            signs = torch.where(values @ unembed[source] < 0, -1.0, 1.0)
        if signs is not None:
            signs = torch.as_tensor(signs, dtype=deltas.dtype).flatten()
            if signs.shape[0] != len(neurons) or not bool(((signs == 1) | (signs == -1)).all()):
                raise InputError(f"signs must hold one +1 or -1 per neuron ({len(neurons)}), got {signs.tolist()}")
            deltas = deltas * signs[:, None]
            params["signed_by_activation"] = True
        return cls.from_deltas(model, neurons, deltas, "token_shift", params, reason)

    @classmethod
    def knowledge_neuron(
        cls, model: nn.Module, neurons: torch.Tensor, source: int, target: int, lambda_source: float,
        lambda_target: float, reason: str = "",
    ) -> ValueVectorEdit:
        """Dai et al.'s knowledge-neuron edit ``w_i ← w_i − λ1 e(s) + λ2 e(t)`` with the input word embeddings
        ``e`` (``model.get_input_embeddings()``)."""
        _finite(lambda_source=lambda_source, lambda_target=lambda_target)
        adapter = get_adapter(model)
        neurons = _check_neurons(adapter, neurons)
        embed = model.get_input_embeddings().weight.detach().float().cpu()
        if embed.shape[1] != adapter.d_model:
            raise NeuronscopeError("the input embeddings' width differs from the FFN output width")
        direction = lambda_target * embed[target] - (lambda_source * embed[source] if source >= 0 else 0.0)
        deltas = direction.expand(len(neurons), -1).clone()
        params = {"source": source, "target": target, "lambda1": lambda_source, "lambda2": lambda_target}
        return cls.from_deltas(model, neurons, deltas, "knowledge_neuron", params, reason)

    # -- applying --------------------------------------------------------------------------------------------
    def check(self, model: nn.Module) -> ModelAdapter:
        """Refuse (raise :class:`EditMismatchError`) unless ``model`` is the one this edit was made for."""
        adapter = get_adapter(model)
        mine = self.model
        for key in ("model_type", "n_layers", "d_model", "d_ff"):
            theirs = adapter.describe()[key]
            if key in mine and mine[key] != theirs:
                raise EditMismatchError(
                    f"this edit was made for a model with {key} = {mine[key]}, but this model has {theirs}: "
                    "apply it to the model it was made for (see the edit's .json)"
                )
        if "fingerprint" in mine:
            current = fingerprint(_columns(adapter, self.neurons))
            if current != mine["fingerprint"]:
                raise EditMismatchError(
                    "the value vectors this edit changes differ from those it was made against (another "
                    "checkpoint, another dtype, or an edit already applied): nothing was changed"
                )
        return adapter

    def apply(self, model: nn.Module) -> AppliedEdit:
        """Write ``w_i + delta_i`` into ``model`` (after :meth:`check`); returns a handle that reverts exactly."""
        adapter = self.check(model)
        originals = []
        with torch.no_grad():
            for row in self.neurons.tolist():
                originals.append(value_vector(adapter, row).detach().clone())
            for row, delta, original in zip(self.neurons.tolist(), self.deltas, originals, strict=True):
                vector = value_vector(adapter, row)  # a view: a column of a fused expert tensor for MoE rows
                new = original.float() + delta.to(original.device)
                vector.copy_(new.to(vector.dtype))
        return AppliedEdit(adapter, self.neurons.clone(), originals)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[AppliedEdit]:
        """Apply for the duration of a block; revert on exit, also on error."""
        handle = self.apply(model)
        try:
            yield handle
        finally:
            handle.revert()

    # -- files -----------------------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """What the edit is (method, parameters, reason, the model it was made for), without the tensors."""
        return {"format": self.format, "version": FORMAT_VERSION, "method": self.method, "params": self.params,
                "reason": self.reason, "model": self.model, "n_neurons": int(len(self.neurons))}

    def summary(self) -> str:
        layers = sorted({int(layer) for layer in self.neurons[:, 0].tolist()})
        return (f"{self.method} edit of {len(self.neurons)} value vectors in layers {layers}"
                + (f" ({self.reason})" if self.reason else ""))

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` and ``path.json`` atomically; returns the JSON path."""
        path = Path(path)
        write_safetensors(path.with_suffix(".safetensors"), {"neurons": self.neurons, "deltas": self.deltas})
        return write_json(path.with_suffix(".json"), self.as_dict())

    @classmethod
    def load(cls, path: str | Path) -> ValueVectorEdit:
        """Read an edit saved by :meth:`save`; a missing or damaged file is a ``ResultFileError`` naming it."""
        path = Path(path)
        json_path = path.with_suffix(".json")
        meta = read_json(json_path, what="edit record")
        if not isinstance(meta, dict) or meta.get("format") != cls.format:
            raise ResultFileError(f"{json_path} is not a neuronscope edit file; pass a folder made by 'edit make'")
        tensors, _ = read_safetensors(path.with_suffix(".safetensors"), what="edit tensors")
        if "neurons" not in tensors or "deltas" not in tensors:
            raise ResultFileError(f"{path.with_suffix('.safetensors')}: the edit's tensors are incomplete; make the "
                                  "edit again")
        return cls(tensors["neurons"], tensors["deltas"], meta["method"], meta.get("params", {}),
                   meta.get("reason", ""), meta.get("model", {}))


@dataclass
class AppliedEdit:
    """An applied edit; :meth:`revert` copies the original columns back (bit for bit)."""

    adapter: ModelAdapter
    neurons: torch.Tensor
    originals: list[torch.Tensor]
    reverted: bool = False

    def revert(self) -> None:
        if self.reverted:
            return
        with torch.no_grad():
            for row, original in zip(self.neurons.tolist(), self.originals, strict=True):
                value_vector(self.adapter, row).copy_(original)
        self.reverted = True


def export_edited(model: nn.Module, edit: ValueVectorEdit, out_dir: str | Path, processor: Any = None) -> Path:
    """Apply ``edit``, write the edited model as a plain Hugging Face folder (a GGUF model de-quantised; see
    :func:`~neuronscope.models.loading.save_plain`) with its processor and the edit's record, then revert."""
    from neuronscope.models.loading import save_plain

    out_dir = Path(out_dir)
    with edit.applied(model):
        save_plain(model, out_dir, processor)
    edit.save(out_dir / EDIT_RECORD)
    return out_dir


def _finite(**values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise NeuronscopeError(f"{name} must be a finite number, got {value}")
