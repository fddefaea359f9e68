"""`python -m bench --gpu` (bench/gpu.py) has no GPU here: its `--gpu-smoke` path runs the same code on the
CPU at a toy size, so the benchmark a GPU machine will run is known to work and to write what it says: the
json's fields, positive figures, and figures that agree with each other (tokens/s = tokens / seconds,
achieved = FLOPs per token x N x tokens/s, utilisation = achieved / peak)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_tiny_model import tokenizer  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tokenizer, tmp_path_factory):  # noqa: F811
    """`python -m bench --gpu-smoke`, with test_tiny_model's tokenizer (no embedded model in the fast tier)."""
    out = tmp_path_factory.mktemp("bench-gpu")
    tokenizer.save_pretrained(out / "tokenizer")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--gpu-smoke", "--tokenizer", str(out / "tokenizer"), "--out-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu-smoke-cpu.json").read_text()), proc.stdout


def close(a: float, b: float) -> bool:
    return a == pytest.approx(b, rel=1e-9)


def test_the_smoke_run_writes_every_field_and_prints_the_table(smoke):
    result, printed = smoke
    assert result["command"] == "python -m bench --gpu-smoke"
    assert result["device"]["type"] == "cpu" and result["device"]["torch"] == torch.__version__
    assert result["device"]["libraries"]["transformers"] and result["device"]["libraries"]["trl"]
    assert result["dtype"] == "bfloat16"
    assert result["flops_per_token"] == {"sampling": 2, "training": 6}
    assert "sampling 2N" in result["flop_formula"] and "training 6N" in result["flop_formula"]
    assert result["architecture"]["name"] == "smoke" and result["architecture"]["config"]["model_type"] == "qwen3"
    assert [row["batch"] for row in result["sampling"]] == [4, 8]
    assert [row["batch_size"] for row in result["training"]] == [2]
    assert result["wall_s"] > 0
    for text in ("sampling (hf.generate), batch 4", "sampling (hf.generate), batch 8", "LoRA SFT (train_sft), batch 2", "utilisation"):
        assert text in printed
    assert "gpu-smoke-cpu.json" in printed


def test_the_figures_are_positive_and_agree_with_each_other(smoke):
    result, _ = smoke
    peak, params = result["peak"]["tflops"], result["architecture"]["params"]
    assert peak > 0 and params > 0
    assert close(peak, max(result["peak"]["per_size_tflops"].values()))

    def consistent(row: dict, flops_per_token: int) -> None:
        assert row["tokens"] > 0 and row["seconds"] > 0
        assert close(row["tokens_per_s"], row["tokens"] / row["seconds"])
        assert close(row["achieved_tflops"], flops_per_token * params * row["tokens_per_s"] / 1e12)
        assert close(row["utilisation"], row["achieved_tflops"] / peak)
        assert 0 < row["utilisation"] < 1.5  # a toy model on a CPU: far from the peak, but counted right

    for row in result["sampling"]:
        consistent(row, 2)
        assert row["prompts"] == row["batch"]
        assert row["rows_that_ran_to_max_new_tokens"] == row["prompts"]  # end-of-sequence off: the work is exact
        assert row["tokens"] == row["prompts"] * row["new_tokens_per_prompt"]
        assert row["prompt_tokens"] > row["prompts"]
    for row in result["training"]:
        for figures in (row, row["stage"]):
            consistent(figures, 6)
            assert close(figures["utilisation_4n"], figures["utilisation"] * 4 / 6)
        assert row["steps"] == 3 and row["tokens"] < row["stage"]["tokens"]  # steady state: steps 2..3
        assert row["loss_first"] > 0 and row["loss_last"] > 0


def test_gpu_without_a_gpu_says_so(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import gpu

    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        gpu.main(["--gpu"])
