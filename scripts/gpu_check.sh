#!/usr/bin/env bash
# The GPU checks of issue #17 in one go, on a fresh GPU machine that has torch (CUDA), transformers, peft and
# accelerate but no TRL, no network and no model hub (docs/SCALE.md, "Checking on a GPU machine"):
#
#   scripts/gpu_check.sh prepare   HERE, with network, once: the wheels the machine lacks (traitloop's tested
#                                  versions) and the SmolLM2 tokenizer, into build/gpu-carry/ (gitignored)
#   scripts/gpu_check.sh           THERE, from the repository root, with build/gpu-carry carried along:
#                                  installs the wheels into /tmp/site (offline), then runs
#                                    pytest -m gpu -q tests/test_gpu.py
#                                    python -m bench --gpu            (bench/gpu.py)
#                                  writing logs and gpu-<card>.json to $OUT (default /tmp/gpu-check)
#
# About 4-5 minutes on an H100; each step has its own time limit so the whole stays under 10 minutes.
# Exit status: 0 when both steps passed, else the first failing step's.
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=${CARRY:-build/gpu-carry}

# traitloop's tested versions of what the GPU image lacks or has too old (transformers 5.25 needs
# huggingface-hub >= 2.4, which needs httpx2; pydantic for traitloop's config; TRL and datasets for training)
WHEELS=(
  transformers==5.25.0 huggingface-hub==2.4.0 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 peft==0.21.2 accelerate==1.16.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  regex==2026.12.2 idna==3.21 anyio==4.16.0 h11==0.16.0
)

if [ "${1:-}" = prepare ]; then
  PY=${PY:-.venv/bin/python}
  mkdir -p "$CARRY/wheels" "$CARRY/tokenizer-smollm2"
  rm -f "$CARRY"/wheels/*.whl
  # the machine's Python is 3.12 on x86-64 (/work/.library/device/README.md)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$CARRY/wheels" "${WHEELS[@]}" || exit 1
  # bench/gpu.py's tokenizer: the embedded SmolLM2's, as traitloop prepares it (the GGUF package stays here)
  TOK=$("$PY" -c "from traitloop.models import resolve; print(resolve('embedded:smollm2-135m-instruct'))") || exit 1
  cp "$TOK"/tokenizer.json "$TOK"/tokenizer_config.json "$TOK"/chat_template.jinja "$CARRY/tokenizer-smollm2/"
  echo "carry $CARRY: $(du -sh "$CARRY" | cut -f1) (the device's limit is 64 MiB for it and the working tree together)"
  exit 0
fi

OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export USE_HUB_KERNELS=0  # transformers 5.25 wants the `kernels` package (not there) and hub kernels for every model: offline
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$CARRY"/wheels/*.whl \
  >"$OUT/pip.log" 2>&1 || { tail -20 "$OUT/pip.log"; echo "gpu_check: installing the carried wheels failed"; exit 3; }
export PYTHONPATH="/tmp/site:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 - <<'EOF'
import importlib.metadata as md, platform, torch
names = ["torch", "transformers", "huggingface-hub", "tokenizers", "safetensors", "trl", "peft", "accelerate", "datasets",
         "pyarrow", "pandas", "numpy", "pydantic", "typer", "rich", "scikit-learn", "sentence-transformers", "pytest"]
print("python", platform.python_version(), "| cuda", torch.version.cuda, "| gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))
for n in names:
    try:
        print(f"{n} {md.version(n)}")
    except md.PackageNotFoundError:
        print(f"{n} MISSING")
EOF
} 2>&1 | tee "$OUT/versions.txt"

timeout 210 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log"
tests=${PIPESTATUS[0]}
timeout 300 python3 -m bench --gpu --tokenizer "$CARRY/tokenizer-smollm2" --out-dir "$OUT" 2>&1 | tee "$OUT/bench_gpu.log"
bench=${PIPESTATUS[0]}

echo "gpu_check: pytest -m gpu exit $tests; python -m bench --gpu exit $bench; results in $OUT"
[ "$tests" = 0 ] || exit "$tests"
exit "$bench"
