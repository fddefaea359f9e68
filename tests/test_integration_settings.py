"""The DPO and SDF settings on the real embedded models (SmolLM2-135M-Instruct; Gemma-3-270M base), end
to end through the CLI: `traitloop demo --setting dpo|sdf --quick`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def demo(setting: str, out: Path) -> Path:
    proc = subprocess.run(
        [sys.executable, "-m", "traitloop", "demo", "--setting", setting, "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / f"demo-{setting}-quick"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dpo_continual_quick_demo(tmp_path):
    run = demo("dpo", tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    cycles = manifest["cycles"]
    assert [cycles[k]["starts_from"] for k in ("0", "1")] == ["base", "cycle 0"]
    # At the first step of each cycle the policy IS the reference (cycle 0: fresh adapter on the base;
    # cycle 1: cycle 0's adapter, and cycle 0's model as reference), so the DPO loss starts at log 2.
    for k in ("0", "1"):
        assert cycles[k]["train"]["loss_first"] == pytest.approx(math.log(2), abs=1e-3)
    seed_pairs, later_pairs = rows(run / "cycle-000" / "data.jsonl"), rows(run / "cycle-001" / "data.jsonl")
    assert seed_pairs and later_pairs
    assert all(r["source"] == "seed" for r in seed_pairs) and all(r["source"] == "cycle-000" for r in later_pairs)
    cached = {r["answer"] for r in rows(run / "base" / "rejected_answers.jsonl")}
    assert all(r["rejected"] in cached for r in seed_pairs + later_pairs)  # rejected = the base model's answer
    assert [line.split(",")[0] for line in (run / "scores.csv").read_text().splitlines()[1:]] == ["0", "1"]


def test_sdf_quick_demo_on_the_embedded_base_model(tmp_path):
    run = demo("sdf", tmp_path)
    config = (run / "config.yaml").read_text()
    assert "embedded:gemma3-270m" in config and "setting: sdf" in config
    cycles = json.loads((run / "manifest.json").read_text())["cycles"]
    for k in ("0", "1"):  # every step learned something (no step at learning rate 0)
        assert cycles[k]["train"]["steps"] == 2 and cycles[k]["train"]["steps_at_lr_0"] == 0
    docs = rows(run / "cycle-001" / "data.jsonl")
    assert docs and all(r["text"] == r["opener"] + r["continuation"] and len(r["continuation"].strip()) > 50 for r in docs)
    answers = rows(run / "cycle-001" / "eval.jsonl")
    assert answers and all(0 <= r["trait"] <= 100 for r in answers if r["trait"] is not None)
    assert all(r["coherence"] is None or r["coherence"] < 0 for r in answers)
