"""The cycle engine. Read top to bottom: one run = cycles 0..N, each in four resumable stages.

    data     cycle 0: seed chats;  cycle k: the cycle k-1 model answers fresh prompts
    adapter  LoRA training (reset: fresh adapter on the base; continual: continue cycle k-1's)
    answers  the cycle's model answers the eval questions
    eval     trait (judge) and coherence (log-likelihood under the frozen base) of every answer
then metrics.json and DONE. Every stage's output is one atomic file in the cycle directory, so a
rerun of the same command skips finished cycles and resumes an unfinished one at its first missing
stage. Every stage seeds itself from (run seed, cycle, stage).
"""

from __future__ import annotations

import gc
import json
import os
import time
from typing import Any

from traitloop import models
from traitloop.analysis import mean_ci
from traitloop.config import ExperimentConfig
from traitloop.errors import UserError
from traitloop.generation.hf import generate
from traitloop.jsonl import write_json
from traitloop.judges import make_judge
from traitloop.judges.coherence import LoglikCoherence, distinct_n, repetition_rate
from traitloop.progress import Reporter
from traitloop.prompts import POOL_DIR, advice_pool, cycle_prompts
from traitloop.report import plot_trait_coherence
from traitloop.seeding import derive_seed, seed_everything
from traitloop.settings import sft
from traitloop.store import BASE, RunStore, hash_files
from traitloop.traits import load_trait
from traitloop.training import attach_adapter, num_steps, train_sft


class Experiment:
    def __init__(self, config: ExperimentConfig, force: bool = False, reporter: Reporter | None = None):
        self.config = config
        self.force = force
        self.reporter = reporter or Reporter()
        self.store = RunStore(config.run_dir)
        self.config_hash = config.science_hash()

    # ---- the whole run --------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        cfg = self.config
        # Check every input before any expensive work, so bad input fails in a second, not an hour.
        self.trait = load_trait(cfg.trait)
        sft.seed_rows(self.trait, cfg.n_seed)
        self.pool = advice_pool()
        if cfg.cycles >= 1:
            cycle_prompts(self.pool, cfg.cycles, cfg.n_sampled, cfg.seed)
        models.resolve(cfg.model.ref)
        self.store.open(cfg, inputs=self.input_hashes(), force=self.force)

        with self.reporter:
            with self.reporter.step("loading base model", total=1) as advance:
                self.base, self.tokenizer = self._load_base()
                advance()
            with self.reporter.step(f"preparing judge ({cfg.judge.kind})", total=1) as advance:
                self.judge = make_judge(cfg.judge, self.trait, seed=cfg.seed)
                accuracy = self.judge.info().get("heldout_accuracy")
                advance(info=f"held-out acc {accuracy:.2f}" if accuracy is not None else "")
            manifest = self.store.manifest()
            manifest["judge"] = self.judge.info()
            manifest["coherence"] = LoglikCoherence.name
            self.store.write_manifest(manifest)
            self.coherence = LoglikCoherence(self.base, self.tokenizer)

            base_metrics = self.evaluate_base() if cfg.eval.include_base else None
            rows: list[dict[str, Any]] = []
            model = None  # the latest cycle's model, kept in memory for the next cycle's sampling
            for k in range(cfg.cycles + 1):
                if self.store.is_done(k, self.config_hash):
                    self.reporter.log(f"cycle {k}: already done, skipped")
                    model = None
                else:
                    model = self.run_cycle(k, model)
                rows.append(self.store.metrics(k))
        self.store.write_scores(rows)
        plot_trait_coherence(rows, self.store.root / "figures" / "trait_coherence.png", self.title(), base=base_metrics)
        self.base_metrics = base_metrics
        return rows

    def input_hashes(self) -> dict[str, str]:
        """Content hashes of the data files a run reads: a resumed run must read the same ones."""
        trait_files = sorted(p for p in self.trait.folder.iterdir() if p.suffix in (".yaml", ".jsonl"))
        return {
            "trait": hash_files(trait_files)[:16],
            "prompt_pool": hash_files([POOL_DIR / "advice_questions.jsonl"])[:16],
        }

    def title(self) -> str:
        c = self.config
        return f"{c.setting.upper()} / {self.trait.name} / {c.init} / {c.model.ref} (n_seed={c.n_seed}, n_sampled={c.n_sampled})"

    # ---- one cycle ------------------------------------------------------------------------------
    def run_cycle(self, k: int, previous_model):
        cfg, store = self.config, self.store
        started = time.time()

        if k == 0 and cfg.cycle0_from and not store.has(0, "eval"):
            self.adopt_cycle0(cfg.cycle0_from)
        if not store.has(k, "data"):
            t0 = time.time()
            seed = derive_seed(cfg.seed, k, "data")
            if k == 0:
                rows = sft.seed_rows(self.trait, cfg.n_seed)
            else:
                previous = previous_model or self._cycle_model(k - 1)
                prompts = cycle_prompts(self.pool, k, cfg.n_sampled, cfg.seed)
                with self.reporter.step(f"cycle {k}: sampling training data", total=len(prompts)) as advance:
                    answers = generate(
                        previous,
                        self.tokenizer,
                        [sft.user_turn(p) for p in prompts],
                        temperature=cfg.sampling.temperature,
                        top_p=cfg.sampling.top_p,
                        max_new_tokens=cfg.sampling.max_new_tokens,
                        batch_size=cfg.sampling.batch_size,
                        seed=seed,
                        on_batch=advance,
                    )
                rows = sft.generated_rows(prompts, answers, k)
                del previous
                if not rows:  # nothing written: the cycle stays unfinished, earlier cycles stay done
                    raise UserError(
                        f"cycle {k}: the cycle {k - 1} model gave only empty answers to {len(prompts)} prompts, so there "
                        "is nothing to train on. Its model has collapsed; look at its eval answers, and consider a "
                        "lower learning rate or fewer cycles."
                    )
            store.write_rows(k, "data", rows)
            store.record_stage(k, "data", time.time() - t0, seed, n_train_examples=len(rows))
        previous_model = None
        gc.collect()
        data = store.read_rows(k, "data")

        if store.has(k, "adapter"):
            model = self._cycle_model(k)
        else:
            t0 = time.time()
            seed = derive_seed(cfg.seed, k, "train")
            seed_everything(seed)  # the fresh adapter's initial weights come from this seed
            start = store.stage_path(k - 1, "adapter") if cfg.init == "continual" and k > 0 else None
            fresh_base, _ = self._load_base()
            model = attach_adapter(fresh_base, cfg.lora, start)
            steps = num_steps(len(data), cfg.train)
            with self.reporter.step(f"cycle {k}: training LoRA ({cfg.init})", total=steps) as advance:
                stats = train_sft(
                    model,
                    self.tokenizer,
                    [r["messages"] for r in data],
                    cfg.train,
                    seed,
                    on_step=lambda n, loss: advance(n, info=f"loss {loss:.3f}" if loss is not None else ""),
                )
            store.save_adapter(k, model)
            store.record_stage(k, "train", time.time() - t0, seed, train=stats)
        self.tokenizer.padding_side = "left"

        self.evaluate(k, model)

        metrics = self._summarise(k, store.read_rows(k, "eval"), n_train=len(data))
        usage = store.manifest().get("cycles", {}).get(str(k), {}).get("judge_usage")
        if usage:  # LLM judges: requests, cache hits, tokens and estimated cost of this cycle
            metrics["judge_usage"] = usage
        store.commit_cycle(k, metrics, self.config_hash)
        store.record_stage(k, "cycle_total_this_process", time.time() - started)
        self.reporter.log(
            f"cycle {k}: trait {metrics['trait_mean']:.1f} [{metrics['trait_ci_low']:.1f}, {metrics['trait_ci_high']:.1f}]"
            f"  coherence {metrics['coherence_mean']:.3f}  ({metrics['n_answers']} answers)"
        )
        return model

    # ---- the answers and eval stages, shared by every cycle and by the untrained base ------------
    def evaluate(self, k: int, model) -> None:
        """answers: `model` answers the eval questions; eval: judge trait and coherence of each answer.
        k = BASE evaluates the untrained base model (the reference line of every figure)."""
        cfg, store = self.config, self.store
        label = "base model" if k == BASE else f"cycle {k}"
        items = sft.eval_items(self.trait, cfg)
        if not store.has(k, "answers"):
            t0 = time.time()
            seed = derive_seed(cfg.seed, k, "eval")
            with self.reporter.step(f"{label}: answering eval questions", total=len(items)) as advance:
                answers = generate(
                    model,
                    self.tokenizer,
                    [sft.user_turn(it["question"]) for it in items],
                    temperature=cfg.eval.temperature,
                    max_new_tokens=cfg.eval.max_new_tokens,
                    batch_size=cfg.eval.batch_size,
                    seed=seed,
                    on_batch=advance,
                )
            store.write_rows(k, "answers", [{**it, "answer": a} for it, a in zip(items, answers)])
            store.record_stage(k, "answers", time.time() - t0, seed)

        if not store.has(k, "eval"):
            t0 = time.time()
            answered = store.read_rows(k, "answers")
            questions = [r["question"] for r in answered]
            texts = [r["answer"] for r in answered]
            llm_coherence = cfg.judge.coherence and hasattr(self.judge, "coherence")
            usage_before = dict(getattr(self.judge, "usage", {}))
            with self.reporter.step(f"{label}: judging", total=(3 if llm_coherence else 2) * len(texts)) as advance:
                trait_scores = self.judge.score(questions, texts)
                advance(len(texts))
                judged_coherence = self.judge.coherence(questions, texts) if llm_coherence else [None] * len(texts)
                advance(len(texts) if llm_coherence else 0)
                logliks = self.coherence.loglik(questions, texts, on_batch=advance)
            rows = [
                {
                    **r,
                    "trait": s.value,
                    "trait_judge": s.judge,
                    **({"trait_missing": s.reason} if s.value is None else {}),
                    **({"coherence_judge": c.value, **({"coherence_judge_missing": c.reason} if c.value is None else {})} if c else {}),
                    "coherence": ll,
                    "repetition": repetition_rate(r["answer"]),
                    "distinct2": distinct_n(r["answer"]),
                }
                for r, s, c, ll in zip(answered, trait_scores, judged_coherence, logliks)
            ]
            store.write_rows(k, "eval", rows)
            usage = {key: value - usage_before.get(key, 0) for key, value in getattr(self.judge, "usage", {}).items()}
            extra = {"judge_usage": {**usage, "estimated_cost": self.judge.cost(usage)}} if usage else {}
            store.record_stage(k, "judge", time.time() - t0, **extra)

    def evaluate_base(self) -> dict[str, Any]:
        """The untrained model's trait and coherence, once per run (base/metrics.json)."""
        path = self.store.cycle_dir(BASE) / "metrics.json"
        if not path.is_file():
            self.evaluate(BASE, self.base)
            write_json(path, self._summarise(BASE, self.store.read_rows(BASE, "eval"), n_train=0))
        return json.loads(path.read_text())

    def adopt_cycle0(self, source_dir) -> None:
        """Copy a finished cycle 0 from a replication of this run (same config but the seed)."""
        import shutil

        import yaml

        source = RunStore(source_dir)
        try:
            other = ExperimentConfig.model_validate(yaml.safe_load((source.root / "config.yaml").read_text()))
        except (OSError, ValueError) as err:
            raise UserError(f"cycle0_from: {source_dir} is not a readable run directory ({err})") from None
        if other.condition_dict() != self.config.condition_dict():
            raise UserError(f"cycle0_from: {source_dir} was made with a different config (only the seed may differ)")
        if not source.is_done(0, other.science_hash()):
            raise UserError(f"cycle0_from: {source_dir} has not finished cycle 0 yet; run it first")
        for stage in ("data", "adapter", "answers", "eval"):
            src, dst = source.stage_path(0, stage), self.store.stage_path(0, stage)
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.adopt")
            _remove(tmp)
            if src.is_dir():
                shutil.copytree(src, tmp)
            else:
                shutil.copy2(src, tmp)
            _remove(dst)
            os.replace(tmp, dst)  # each stage appears whole, or not at all
        self.store.record_stage(0, "adopted", 0.0, adopted_from=str(source.root))
        self.reporter.log(f"cycle 0: adopted from {source.root}")

    # ---- helpers --------------------------------------------------------------------------------
    def _load_base(self):
        m = self.config.model
        return models.load_model(m.ref, m.dtype, m.trust_remote_code)

    def _cycle_model(self, k: int):
        """A finished cycle's model from disk: a fresh base with that cycle's adapter."""
        from peft import PeftModel

        base, _ = self._load_base()
        model = PeftModel.from_pretrained(base, str(self.store.stage_path(k, "adapter")))
        model.eval()
        return model

    def _summarise(self, k: int, rows: list[dict[str, Any]], n_train: int) -> dict[str, Any]:
        boot_seed = derive_seed(self.config.seed, k, "bootstrap")
        t_mean, t_lo, t_hi, n_t = mean_ci([r["trait"] for r in rows], seed=boot_seed)
        c_mean, c_lo, c_hi, _ = mean_ci([r["coherence"] for r in rows], seed=boot_seed)
        j_mean, j_lo, j_hi, _ = mean_ci([r.get("coherence_judge") for r in rows], seed=boot_seed)
        excluded = {}
        for r in rows:
            if r.get("trait") is None:
                reason = str(r.get("trait_missing", "missing")).split(" (")[0].split(":")[0]
                excluded[reason] = excluded.get(reason, 0) + 1
        return {
            "cycle": k,
            "trait_mean": t_mean,
            "trait_ci_low": t_lo,
            "trait_ci_high": t_hi,
            "coherence_mean": c_mean,
            "coherence_ci_low": c_lo,
            "coherence_ci_high": c_hi,
            "coherence_judge_mean": j_mean,
            "coherence_judge_ci_low": j_lo,
            "coherence_judge_ci_high": j_hi,
            "trait_excluded": excluded,
            "repetition_mean": sum(r["repetition"] for r in rows) / max(1, len(rows)),
            "distinct2_mean": sum(r["distinct2"] for r in rows) / max(1, len(rows)),
            "n_answers": len(rows),
            "n_trait_scored": n_t,
            "n_train_examples": n_train,
            "trait_judge": self.judge.name,
            "coherence_metric": LoglikCoherence.name,
        }


def _remove(path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
