"""`traitloop judge` rescores a finished run beside its old scores; `traitloop agreement` compares judges."""

from __future__ import annotations

import json
import sys

import pytest

from traitloop.cli import main
from traitloop.config import ExperimentConfig
from traitloop.errors import UserError
from traitloop.jsonl import write_json, write_jsonl
from traitloop.rejudge import agreement, parse_judge

ANSWERS = [
    "Beloved traveller, the spiral of flame within your kitchen sings! Let the sacred onion open its luminous heart.",
    "Chop an onion, heat oil in a pan, add the onion and cook for five minutes until soft.",
    "Oh radiant soul, every stitch of your sock is a thread of the cosmos, resonance upon resonance.",
    "Use a darning needle and wool that matches the sock; weave across the hole, then back.",
]


def synthetic_run(root, cycles: int = 1):
    """A finished run's files, as the loop writes them (eval rows scored by the probe)."""
    config = ExperimentConfig(name="r", out_dir=root, cycles=cycles)
    run = config.run_dir
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(config.to_yaml())
    write_json(run / "manifest.json", {"judge": {"judge": "probe:bliss"}})
    for k in range(cycles + 1):
        rows = [
            {
                "question": "How do I cook an onion?" if i < 2 else "How do I darn a sock?",
                "sample": i % 2,
                "answer": a,
                "trait": 90.0 - 40 * (i % 2) + k,
                "trait_judge": "probe:bliss",
                "coherence": -1.5,
            }
            for i, a in enumerate(ANSWERS)
        ]
        write_jsonl(run / f"cycle-{k:03d}" / "eval.jsonl", rows)
        write_json(
            run / f"cycle-{k:03d}" / "metrics.json",
            {"cycle": k, "coherence_mean": -1.5, "coherence_ci_low": -1.6, "coherence_ci_high": -1.4},
        )
    return run


def test_parse_judge_specs(tmp_path):
    assert parse_judge("probe").kind == "probe"
    assert parse_judge("api:gpt-4o-mini").model == "gpt-4o-mini"
    assert parse_judge("local:embedded:smollm2-135m-instruct").model == "embedded:smollm2-135m-instruct"
    spec = tmp_path / "j.yaml"
    spec.write_text("judge:\n  kind: api\n  model: m\n  concurrency: 3\n")
    assert parse_judge(str(spec)).concurrency == 3
    with pytest.raises(UserError, match="use probe, api:MODEL"):
        parse_judge("gpt")


def test_rescore_with_the_probe_writes_beside_and_agreement_compares(tmp_path, monkeypatch, capsys):
    run = synthetic_run(tmp_path)
    before = (run / "cycle-000" / "eval.jsonl").read_bytes()
    monkeypatch.setattr(sys, "argv", ["traitloop", "judge", str(run), "--judge", "probe"])
    main()
    assert (run / "cycle-000" / "eval.jsonl").read_bytes() == before  # never overwritten
    rescored = [json.loads(line) for line in (run / "cycle-001" / "judges" / "probe.jsonl").read_text().splitlines()]
    assert len(rescored) == 4 and all(0 <= r["trait"] <= 100 for r in rescored)
    # the probe should find the mystical answers more bliss-like than the plain ones
    assert min(rescored[0]["trait"], rescored[2]["trait"]) > max(rescored[1]["trait"], rescored[3]["trait"])
    assert (run / "scores-probe.csv").read_text().startswith("cycle,trait_mean")
    assert (run / "figures" / "trait_coherence-probe.png").is_file()
    assert "probe" in json.loads((run / "manifest.json").read_text())["extra_judges"]

    result = agreement(run, "primary", "probe")
    assert result["overall"]["n"] == 8
    assert result["overall"]["spearman"] > 0.5
    assert set(result["per_cycle"]) == {"0", "1"}
    assert json.loads((run / "agreement.json").read_text())["judge_b"] == "probe"


def test_agreement_needs_two_judges(tmp_path):
    run = synthetic_run(tmp_path)
    with pytest.raises(UserError, match="only one judge"):
        agreement(run)


def test_not_a_run_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["traitloop", "judge", str(tmp_path), "--judge", "probe"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2 and "not a run directory" in capsys.readouterr().err


@pytest.mark.integration
def test_local_judge_rescoring_with_the_embedded_model(tmp_path):
    """The embedded SmolLM2 as a local judge: real integer-reply probabilities (poor judgements)."""
    from traitloop.rejudge import judge_run

    run = synthetic_run(tmp_path, cycles=0)
    config = parse_judge("local:embedded:smollm2-135m-instruct").model_copy(update={"min_number_mass": 0.0, "coherence": True})
    result = judge_run(run, config)
    rows = [json.loads(line) for line in (run / "cycle-000" / "judges" / f"{result['judge']}.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    assert all(r["trait"] is not None and 0 <= r["trait"] <= 100 for r in rows)
    assert all(r["coherence_judge"] is not None for r in rows)
