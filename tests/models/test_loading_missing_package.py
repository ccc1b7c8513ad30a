"""A processor that needs a package which is not installed (Qwen-VL's video processor without torchvision) is
refused in one line that says what to install, not with transformers' traceback."""

from __future__ import annotations

import pytest
import torch
import transformers

from helpers.tiny_models import tiny_text_model
from neuronscope.errors import ModelLoadError
from neuronscope.models import load_model


def test_a_missing_processor_package_is_one_line_that_says_what_to_install(tmp_path, monkeypatch) -> None:
    model = tiny_text_model("llama", dtype=torch.float32)
    model.save_pretrained(tmp_path)

    def missing(*args, **kwargs):
        raise ImportError("\nQwen2VLVideoProcessor requires the Torchvision library but it was not found in your "
                          "environment. Check out the instructions on the installation page.")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", missing)
    with pytest.raises(ModelLoadError) as error:
        load_model(str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and "pip install torchvision" in message and "Torchvision library" in message
