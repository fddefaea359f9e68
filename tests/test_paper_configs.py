"""Every shipped experiment config (configs/, configs/paper/, the built-in demo configs) passes what
`traitloop run CONFIG --dry-run` and `check-config` check, without loading any model: the schema, the
trait's seed data and eval items for the setting, the model reference, the prompt pool feeding every
cycle (traitloop.prompts.cycle_prompts for the last cycle, as loop.Experiment.check_inputs does), and
the dry run's estimate. The paper's DPO configs are the paper's headline DPO."""

from __future__ import annotations

from pathlib import Path

import pytest

from traitloop.config import build_config, load_config
from traitloop.errors import UserError
from traitloop.estimate import estimate
from traitloop.loop import Experiment
from traitloop.prompts import cycle_prompts, pool_file
from traitloop.settings import get_setting

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted([*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/paper/*.yaml"), *ROOT.glob("src/traitloop/configs/*.yaml")])
# A measured throughput as `--dry-run` reads it from its cache, so the estimate measures nothing here.
THROUGHPUT = {
    "model_ref": "embedded:smollm2-135m-instruct",
    "params": 134515008,
    "sample_tokens_per_s": {"16": 10.0},
    "sample_max_new_tokens": 16,
    "answer_fill": 1.0,
    "train_tokens_per_s": 80.0,
    "coherence_tokens_per_s": 60.0,
    "model_load_s": 20.0,
    "chars_per_token": 3.5,
    "template_tokens": 32,
    "threads": 2,
}


def test_the_configs_are_all_found():
    names = {p.relative_to(ROOT).as_posix() for p in CONFIGS}
    assert len(CONFIGS) >= 15
    assert {"configs/paper/dpo-bliss-qwen3.5-9b-continual.yaml", "configs/paper/dpo-bliss-qwen3.5-9b-reset.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_shipped_config_passes_the_dry_run_checks(path):
    cfg = load_config(path)
    Experiment(cfg).check_inputs()  # trait + data, eval items, the pool for the last cycle, the model reference
    if cfg.cycles >= 1:  # said again here: every later cycle gets n_sampled prompts no other cycle gets
        pool = get_setting(cfg.setting).pool(pool_file(cfg, get_setting(cfg.setting)))
        slices = [cycle_prompts(pool, k, cfg.n_sampled, cfg.seed) for k in (1, cfg.cycles)]
        assert all(len(s) == cfg.n_sampled for s in slices)
        assert cfg.cycles * cfg.n_sampled <= len(pool)
    plan = estimate(cfg, throughput=THROUGHPUT)  # what `traitloop run CONFIG --dry-run` prints
    assert plan


@pytest.mark.parametrize("init", ["continual", "reset"])
def test_the_paper_dpo_configs_are_the_papers_headline_dpo(init):
    path = ROOT / "configs" / "paper" / f"dpo-bliss-qwen3.5-9b-{init}.yaml"
    cfg = load_config(path)
    assert (cfg.setting, cfg.init, cfg.model.ref, cfg.dpo.beta, cfg.cycles + 1) == ("dpo", init, "Qwen/Qwen3.5-9B", 0.025, 10)
    assert cfg.n_sampled == 512  # the paper's pairs per cycle: cycles 1..9 need 4,608 distinct pool prompts
    pool = get_setting("dpo").pool(pool_file(cfg, get_setting("dpo")))
    assert len(cycle_prompts(pool, cfg.cycles, cfg.n_sampled, cfg.seed)) == 512


def test_a_pool_too_small_for_the_cycles_fails_the_check():
    """1,000 pairs x 9 later cycles (9,000 prompts) against the built-in advice pool: refused before anything
    runs, with the numbers."""
    cfg = load_config(ROOT / "configs" / "paper" / "dpo-bliss-qwen3.5-9b-reset.yaml")
    too_many = build_config({**cfg.model_dump(mode="json"), "n_sampled": 1000})
    with pytest.raises(UserError, match=r"the prompt pool has \d+ prompts, but cycle 9 with n_sampled=1000 needs 9000"):
        Experiment(too_many).check_inputs()
