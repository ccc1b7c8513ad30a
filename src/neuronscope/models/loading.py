"""Load a model and its tokenizer or processor from a local folder, a hub id, or a GGUF file.

Nothing here downloads on its own: a hub id is passed to transformers as the user gave it (it works where the
hub is reachable or cached); tests and the demo use local folders only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """``"bf16"`` → ``torch.bfloat16``; ``"auto"`` and None pass through."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise NeuronscopeError(f"unknown dtype '{dtype}': use one of {', '.join(sorted(DTYPES))} or 'auto'")
    return DTYPES[dtype]


@dataclass
class LoadedModel:
    """A model with what reads its inputs, and how it was loaded (for result metadata)."""

    model: nn.Module
    processor: Any  # a tokenizer for text models, a processor for vision-language models
    source: str
    gguf_file: str | None = None
    revision: str | None = None

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    def describe(self) -> dict:
        return {
            "model": self.source,
            "gguf_file": self.gguf_file,
            "revision": self.revision,
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
        }


def _is_vision_config(config: Any) -> bool:
    return hasattr(config, "vision_config") or hasattr(config, "vision_tower")


def load_model(
    source: str | Path,
    *,
    gguf_file: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    with_processor: bool = True,
) -> LoadedModel:
    """Load a causal LM (with its tokenizer) or a vision-language model (with its processor), in eval mode.

    Args:
        source: a local folder or a hub id.
        gguf_file: the name of a GGUF file inside ``source`` (transformers de-quantises it; needs ``gguf``).
        dtype: ``"float32"``, ``"bf16"``, ``"fp16"``, ``"auto"`` or None (float32 on CPU).
        device_map: passed to transformers, e.g. ``"auto"`` to spread a big model over GPUs.
        revision: a hub revision, recorded in results.
        with_processor: also load the tokenizer / processor (False for a folder holding only weights).

    Example:
        >>> loaded = load_model("path/to/smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
        >>> loaded.model.config.model_type
        'llama'
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    source = str(source)
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        if not (Path(source) / gguf_file).exists() and Path(source).exists():
            raise NeuronscopeError(f"GGUF file '{gguf_file}' not found in '{source}'")
        try:
            import gguf  # noqa: F401
        except ImportError as err:
            raise NeuronscopeError("loading GGUF needs the 'gguf' package: pip install 'neuronscope[gguf]'") from err
        kwargs["gguf_file"] = gguf_file
    torch_dtype = parse_dtype(dtype) or torch.float32
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise NeuronscopeError(f"cannot load a model config from '{source}': {err}") from err
    model_kwargs = dict(kwargs, dtype=torch_dtype)
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    vision = _is_vision_config(config)
    auto_model = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = auto_model.from_pretrained(source, **model_kwargs)
    processor = None
    if with_processor:
        try:
            processor = (AutoProcessor if vision else AutoTokenizer).from_pretrained(source, **kwargs)
        except (OSError, ValueError) as err:
            raise NeuronscopeError(
                f"'{source}' has no usable {'processor' if vision else 'tokenizer'} ({err}); save one beside the "
                "weights, or load with with_processor=False"
            ) from err
    model.eval()
    return LoadedModel(model, processor, source, gguf_file, revision)
