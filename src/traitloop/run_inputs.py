"""A run's inputs, checked before any expensive work, and their content hashes.

check_inputs: the trait and its data for the setting (n_seed, eval items), the prompt pool's size for
the last cycle, the held-out texts, whether the model suits the setting, and cycle0_from. Bad input
fails in a second with one clear message, not an hour into a run.
input_hashes: content hashes of the data files a run reads (manifest inputs): a resumed run must read
the same ones (store.RunStore.open refuses otherwise).
"""

from __future__ import annotations

from traitloop.config import ExperimentConfig
from traitloop.errors import UserError
from traitloop.evaluation import heldout_texts
from traitloop.prompts import check_own_pool, cycle_prompts, pool_file
from traitloop.settings import Setting
from traitloop.store import RunStore, hash_files
from traitloop.traits import VALIDITY_FILES, Trait, load_trait


def check_inputs(config: ExperimentConfig, setting: Setting) -> tuple[Trait, tuple[str, ...], dict]:
    """(the trait, the prompt pool, the held-out texts), or a UserError naming the first problem."""
    trait = load_trait(config.trait)
    setting.seed_rows(trait, config.n_seed)
    eval_items = setting.eval_items(trait, config)
    path = pool_file(config, setting)
    pool = setting.pool(path)
    if getattr(config.data, setting.pool_field) is not None:
        check_own_pool(setting.pool_field, path, pool, [item["question"] for item in eval_items])
    if config.cycles >= 1:
        cycle_prompts(pool, config.cycles, config.n_sampled, config.seed)
    setting.check_model(config)
    if config.cycle0_from and not RunStore(config.cycle0_from).is_run():
        raise UserError(
            f"cycle0_from: {config.cycle0_from} is not a run directory (no config.yaml); give the directory of a "
            "finished run of the same config (only the seed may differ), or remove cycle0_from"
        )
    return trait, pool, heldout_texts(trait, documents=not setting.chats)


def input_hashes(config: ExperimentConfig, setting: Setting, trait: Trait, heldout: bool) -> dict[str, str]:
    """Content hashes of the trait files, the prompt pool, the held-out texts (when used) and the probe's
    negatives (probe judge)."""
    trait_files = sorted(p for p in trait.folder.iterdir() if p.suffix in (".yaml", ".jsonl") and p.name not in VALIDITY_FILES)
    hashes = {"trait": hash_files(trait_files)[:16], "prompt_pool": hash_files([pool_file(config, setting)])[:16]}
    if heldout:  # the held-out perplexity reads the trait's validation texts
        hashes["heldout"] = hash_files([trait.folder / "validation.jsonl"])[:16]
    if config.judge.kind == "probe":  # the probe also trains on the untrained models' outputs
        from traitloop.judges import negatives

        hashes["probe_negatives"] = hash_files([p for p in negatives.FILES.values() if p.is_file()])[:16]
    return hashes
