"""Moving small index tensors to a model's device without making the host wait."""

from __future__ import annotations

import torch


def on_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``; a host tensor goes to a GPU through pinned memory, asynchronously (a copy from
    ordinary host memory makes the host wait for everything queued on the device first).

    ``pin_memory`` keeps the strides, so an expanded tensor (stride 0) is made contiguous first: copying into a
    pinned tensor whose elements share memory fails."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.contiguous().pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
