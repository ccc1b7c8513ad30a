"""Load a model and its tokenizer or processor from a local folder, a hub id, or a GGUF file.

Nothing here downloads on its own: a hub id is passed to transformers as the user gave it (it works where the
hub is reachable or cached); tests and the demo use local folders only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuronscope.errors import ModelLoadError, NeuronscopeError, UnsupportedModelError

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

    @property
    def dtype(self) -> str:
        return str(next(self.model.parameters()).dtype).replace("torch.", "")

    def describe(self) -> dict:
        """How the model was loaded: enough to load it again (``load_model(**{k: v ...})``) and to record."""
        return {"model": self.source, "gguf_file": self.gguf_file, "revision": self.revision, "dtype": self.dtype}

    def save(self, folder: str | Path) -> Path:
        """Write the model (and its tokenizer / processor) as a plain Hugging Face folder; see :func:`save_plain`."""
        return save_plain(self.model, folder, self.processor)


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
            raise ModelLoadError(f"GGUF file '{gguf_file}' not found in '{source}'; check --gguf-file")
        try:
            import gguf  # noqa: F401
        except ImportError:
            raise ModelLoadError("loading GGUF needs the 'gguf' package: pip install 'neuronscope[gguf]'") from None
        kwargs["gguf_file"] = gguf_file
    torch_dtype = parse_dtype(dtype) or torch.float32
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(_config_problem(source, err)) from None
    model_kwargs = dict(kwargs, dtype=torch_dtype)
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    vision = _is_vision_config(config)
    auto_model = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    try:
        with _quiet_gguf():
            model = auto_model.from_pretrained(source, **model_kwargs)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        kind = "image-text-to-text" if vision else "causal-LM"
        raise UnsupportedModelError(f"model type '{config.model_type}' has no {kind} class in transformers "
                                    f"{_transformers_version()}; neuronscope runs causal LMs and vision-language "
                                    "models") from None
    processor = None
    if with_processor:
        try:
            processor = (AutoProcessor if vision else AutoTokenizer).from_pretrained(source, **kwargs)
        except (OSError, ValueError) as err:
            raise ModelLoadError(
                f"'{source}' has no usable {'processor' if vision else 'tokenizer'} ({str(err).splitlines()[0]}); "
                "save one beside the weights, or load with with_processor=False"
            ) from None
        except ImportError as err:  # e.g. Qwen-VL's video processor without torchvision
            missing = "torchvision" if "torchvision" in str(err).lower() else "the package it names"
            raise ModelLoadError(
                f"the {'processor' if vision else 'tokenizer'} of '{source}' needs a package that is not installed "
                f"({str(err).strip().splitlines()[0]}): pip install {missing}, then load again"
            ) from None
    model.eval()
    return LoadedModel(model, processor, source, gguf_file, revision)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _local_type(source: str) -> str:
    """"model type 'x'" read from a local folder's config.json, else "this model's type"."""
    import json

    try:
        kind = json.loads((Path(source).expanduser() / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        kind = None
    return f"model type '{kind}'" if isinstance(kind, str) else "this model's type"


def _config_problem(source: str, error: Exception) -> str:
    """One line saying why a config could not be read (transformers' own message is several lines of advice)."""
    text = str(error)
    if "does not recognize this architecture" in text or "model type" in text and "not recognized" in text:
        kind = text.split("model_type` ")[-1].split(" but")[0] if "model_type`" in text else _local_type(source)
        return (f"'{source}': transformers {_transformers_version()} does not know {kind}; upgrade transformers "
                "(pip install -U transformers) if the family is newer than it")
    if not Path(source).expanduser().exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        return f"model folder '{source}' not found; check the path"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"cannot load a model config from '{source}': {first}"


@contextmanager
def _quiet_gguf() -> Iterator[None]:
    """No per-tensor progress bars while transformers de-quantises a GGUF file (its loader always shows them)."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - transformers without GGUF support
        yield
        return
    original = gguf_utils.tqdm

    def quiet(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **{**kwargs, "disable": True})

    gguf_utils.tqdm = quiet
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def save_plain(model: nn.Module, folder: str | Path, processor: Any = None) -> Path:
    """Write ``model`` (and ``processor``) with ``save_pretrained`` as a plain Hugging Face folder.

    A model loaded from GGUF is de-quantised in memory already (float weights), but transformers refuses to save
    it while it is tagged as GGUF-quantised; the tag is lifted for the write (and put back), so the folder holds
    ordinary safetensors weights that load without the ``gguf`` package.
    """
    folder = Path(folder)
    quantizer = getattr(model, "hf_quantizer", None)
    is_gguf = quantizer is not None and "gguf" in type(quantizer).__name__.lower()
    saved = {}
    if is_gguf:
        saved = {"hf_quantizer": quantizer, "is_quantized": getattr(model, "is_quantized", False)}
        model.hf_quantizer = None
        model.is_quantized = False
        saved["quantization_config"] = model.config.__dict__.pop("quantization_config", None)
    try:
        model.save_pretrained(folder)
    finally:
        for name, value in saved.items():
            if name == "quantization_config":
                if value is not None:
                    model.config.quantization_config = value
            else:
                setattr(model, name, value)
    if processor is not None:
        processor.save_pretrained(folder)
    return folder
