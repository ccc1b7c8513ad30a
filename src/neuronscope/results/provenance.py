"""How a result was made: the versions of what made it, and the session (time, host, command line).

Example:
    >>> sorted(versions())
    ['neuronscope', 'python', 'torch', 'transformers']
"""

from __future__ import annotations

import functools
import platform
import shlex
import socket
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from neuronscope._version import __version__


@functools.cache  # a metadata look-up costs ~5 ms: once per process, not once per result
def _installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of neuronscope, torch, transformers and python (read without importing torch)."""
    return {
        "neuronscope": __version__,
        "torch": _installed("torch"),
        "transformers": _installed("transformers"),
        "python": platform.python_version(),
    }


#: The switches of torch's scaled-dot-product attention kernels (``torch.backends.cuda.<name>_sdp_enabled``).
SDPA_KERNELS = ("flash", "mem_efficient", "math", "cudnn")


def sdpa_kernels() -> dict[str, bool] | None:
    """Which attention kernels may run now (``{"flash": True, ..., "cudnn": False}``: cuDNN's is off under
    :func:`neuronscope.trace.reproducible.reproducible`), or None where torch is not imported (never imported
    here)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return {name: bool(getattr(torch.backends.cuda, f"{name}_sdp_enabled")()) for name in SDPA_KERNELS}


def run_metadata(world: int = 1) -> dict[str, Any]:
    """Versions, UTC time, host, platform, command line, number of processes and attention kernels' switches of
    this session."""
    return {
        "versions": versions(),
        "sdpa_kernels": sdpa_kernels(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "command": shlex.join(sys.argv),
        "world_size": world,
    }
