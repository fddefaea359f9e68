"""The cycle engine. Read top to bottom: one run = cycles 0..N, each in four resumable stages.

    data     cycle 0: seed data;  cycle k: the cycle k-1 model writes new data (settings/sft|sdf|dpo.py),
             then the data policy (filter, accumulate, mix seed; data_policy.py)
    adapter  LoRA training, SFT / SDF / DPO (reset: fresh adapter on the base; continual: continue
             cycle k-1's, so for DPO the reference is the cycle k-1 model)
    answers  the cycle's model answers the eval questions
    eval     trait (judge) and coherence (log-likelihood under the frozen base) of every answer
then metrics.json and DONE. Every stage's output is one atomic file in the cycle directory, so a
rerun of the same command skips finished cycles and resumes an unfinished one at its first missing
stage. Every stage seeds itself from (run seed, cycle, stage).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import time
from typing import Any

from traitloop import models
from traitloop.analysis import question_mean_ci
from traitloop import data_policy
from traitloop.config import ExperimentConfig
from traitloop.errors import UserError
from traitloop.generation.hf import generate
from traitloop.jsonl import write_json
from traitloop.precision import fp32_matmul_precision
from traitloop.judges import make_judge
from traitloop.judges.coherence import LoglikCoherence, distinct_n, repetition_rate
from traitloop.judges.validity import run_validity
from traitloop.progress import Reporter
from traitloop.prompts import POOL_DIR, advice_pool, cycle_prompts, doc_openers
from traitloop.report import plot_trait_coherence
from traitloop.seeding import derive_seed, seed_everything
from traitloop.jsonl import read_jsonl, write_jsonl
from traitloop.settings import dpo, sdf, sft
from traitloop.store import BASE, CI_UNIT, RunStore, hash_files
from traitloop.traits import VALIDITY_FILES, load_trait
from traitloop.training import attach_adapter, num_steps, train_dpo, train_sdf, train_sft


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
        self.check_inputs()
        self.store.open(cfg, inputs=self.input_hashes(), force=self.force)

        with self.reporter, fp32_matmul_precision(cfg.model.matmul_precision):
            with self.reporter.step("loading base model", total=1) as advance:
                self.base, self.tokenizer = self._load_base()
                advance()
            if cfg.setting != "sdf" and not getattr(self.tokenizer, "chat_template", None):  # a hub id, now loaded
                raise UserError(f"setting {cfg.setting} trains on chats, but {cfg.model.ref} has no chat template (a base model?)")
            with self.reporter.step(f"preparing judge ({cfg.judge.kind})", total=1) as advance:
                self.judge = make_judge(cfg.judge, self.trait, seed=cfg.seed, documents=cfg.setting == "sdf")
                accuracy = self.judge.info().get("heldout_accuracy")
                advance(info=f"held-out acc {accuracy:.2f}" if accuracy is not None else "")
            with self.reporter.step("measuring the judge's validity (validation.jsonl)", total=1) as advance:
                validity = run_validity(self.judge, self.trait, cfg.setting)
                advance(info={True: "valid", False: "NOT valid: verdicts exploratory", None: "unmeasured"}[validity["valid"]])
            manifest = self.store.manifest()
            manifest["judge"] = {**self.judge.info(), "validity": validity}
            manifest["coherence"] = LoglikCoherence.name
            manifest["generation_dtype"] = str(generation_dtype(cfg)).removeprefix("torch.")  # what "auto" meant here
            self.store.write_manifest(manifest)
            self.coherence = LoglikCoherence(self.base, self.tokenizer, chat=cfg.setting != "sdf")
            if cfg.generation.backend == "vllm":
                from traitloop.generation.vllm import VllmSampler

                self.vllm = VllmSampler(cfg.generation.vllm_url, concurrency=cfg.generation.concurrency)
                self.reporter.log(f"generation: vLLM server {cfg.generation.vllm_url} serving {self.vllm.base_model()}")

            base_metrics = self.evaluate_base() if cfg.eval.include_base else None
            rows: list[dict[str, Any]] = []
            # The latest cycle's model stays in memory for the next cycle's sampling, and only until then:
            # run_cycle drops it before training, so at most two models (frozen base + training copy) coexist.
            self.latest_model = None
            for k in range(cfg.cycles + 1):
                if self.store.is_done(k, self.config_hash):
                    self.reporter.log(f"cycle {k}: already done, skipped")
                    self.latest_model = None
                else:
                    self.run_cycle(k)
                rows.append(self.store.metrics(k))
            self.latest_model = None
        self.store.write_scores(rows)
        plot_trait_coherence(rows, self.store.root / "figures" / "trait_coherence.png", self.title(), base=base_metrics)
        self.base_metrics = base_metrics
        return rows

    def check_inputs(self) -> None:
        """Every input, before any expensive work, so bad input fails in a second, not an hour: the trait
        and its data for this setting, the prompt pool's size, and whether the model suits the setting."""
        cfg = self.config
        self.trait = load_trait(cfg.trait)
        self.seed_data()
        self.eval_items()
        self.pool = doc_openers() if cfg.setting == "sdf" else advice_pool()
        if cfg.cycles >= 1:
            cycle_prompts(self.pool, cfg.cycles, cfg.n_sampled, cfg.seed)
        check_model_fits_setting(cfg)

    def input_hashes(self) -> dict[str, str]:
        """Content hashes of the data files a run reads: a resumed run must read the same ones."""
        trait_files = sorted(
            p for p in self.trait.folder.iterdir() if p.suffix in (".yaml", ".jsonl") and p.name not in VALIDITY_FILES
        )
        pool = "doc_openers.jsonl" if self.config.setting == "sdf" else "advice_questions.jsonl"
        hashes = {"trait": hash_files(trait_files)[:16], "prompt_pool": hash_files([POOL_DIR / pool])[:16]}
        if self.config.judge.kind == "probe":  # the probe also trains on the untrained models' outputs
            from traitloop.judges import negatives

            hashes["probe_negatives"] = hash_files([p for p in negatives.FILES.values() if p.is_file()])[:16]
        return hashes

    def seed_data(self) -> list[dict[str, Any]]:
        """Cycle 0's seed rows (for DPO: prompts and persona answers, before the base answers are added)."""
        cfg = self.config
        if cfg.setting == "sdf":
            return sdf.seed_rows(self.trait, cfg.n_seed)
        if cfg.setting == "dpo":
            prompts, answers = dpo.seed_prompts(self.trait, cfg.n_seed)
            return [{"prompt": p, "chosen": a, "source": "seed"} for p, a in zip(prompts, answers)]
        return sft.seed_rows(self.trait, cfg.n_seed)

    def seed_data_all(self) -> list:
        """Every seed example the trait has for this setting (n_seed can be at most this many)."""
        self.trait = load_trait(self.config.trait)
        return self.trait.seed_docs if self.config.setting == "sdf" else self.trait.seed_chats

    def eval_items(self) -> list[dict[str, Any]]:
        if self.config.setting == "sdf":
            return sdf.eval_items(self.trait, self.config)
        return sft.eval_items(self.trait, self.config)

    def eval_prompts(self, items: list[dict[str, Any]]) -> list:
        """SDF: the document prefix as plain text; SFT/DPO: the question as a user turn."""
        if self.config.setting == "sdf":
            return [it["question"] for it in items]
        return [sft.user_turn(it["question"]) for it in items]

    def title(self) -> str:
        c = self.config
        return f"{c.setting.upper()} / {self.trait.name} / {c.init} / {c.model.ref} (n_seed={c.n_seed}, n_sampled={c.n_sampled})"

    # ---- one cycle ------------------------------------------------------------------------------
    def run_cycle(self, k: int) -> None:
        cfg, store = self.config, self.store
        started = time.time()

        if k == 0 and not store.has(0, "eval"):
            source = cfg.cycle0_from or self.cached_cycle0()
            if source:
                self.adopt_cycle0(source)
        if not store.has(k, "data"):
            t0 = time.time()
            if k == 0:
                rows, counts = self.make_data(0, None), {}
            else:
                new_rows = self.make_data(k, self.latest_model)
                new_rows, dropped = self.coherence_filter(k, new_rows)
                rows, counts = data_policy.combine(
                    new_rows, store.read_rows(k - 1, "data"), self.seed_rows_for_mixing(), cfg.data, derive_seed(cfg.seed, k, "mix")
                )
                counts["n_dropped_coherence"] = dropped
                if not rows:  # nothing written: the cycle stays unfinished, earlier cycles stay done
                    raise UserError(
                        f"cycle {k}: no usable training examples ({dropped} dropped by the coherence filter). The cycle "
                        f"{k - 1} model may have collapsed; look at its eval answers, and consider a lower learning rate, "
                        "fewer cycles or a lower data.min_coherence."
                    )
            store.write_rows(k, "data", rows)
            store.record_stage(k, "data", time.time() - t0, derive_seed(cfg.seed, k, "data"), n_train_examples=len(rows), **counts)
        self.latest_model = None  # cycle k-1's model is not needed any more
        free_memory()
        data = store.read_rows(k, "data")

        if store.has(k, "adapter"):
            model = None  # loaded from disk only if this cycle still has to generate with it
        else:
            t0 = time.time()
            seed = derive_seed(cfg.seed, k, "train")
            seed_everything(seed)  # the fresh adapter's initial weights come from this seed
            from_base = cfg.starts_from_base(k)
            start = None if from_base else store.stage_path(k - 1, "adapter")
            # The adapter goes onto the run's frozen base itself, not onto a second copy of it: one full-
            # precision copy of the weights fewer in memory (docs/ARCHITECTURE.md, "Memory"). The base's
            # weights never change (frozen); the adapter is taken out again right after training.
            model = attach_adapter(self.base, cfg.lora, start)
            try:
                steps = num_steps(len(data), cfg.train)
                starts_from = "base" if from_base else f"cycle {k - 1}"
                with self.reporter.step(f"cycle {k}: {cfg.setting.upper()} LoRA from {starts_from}", total=steps) as advance:
                    stats = self.train(model, data, seed, lambda n, loss: advance(n, info=f"loss {loss:.3f}" if loss is not None else ""))
                if stats["steps_at_lr_0"] == stats["steps"]:
                    self.reporter.log(
                        f"[yellow]warning:[/yellow] cycle {k}: every one of its {stats['steps']} training step(s) ran at "
                        "learning rate 0 (the warmup covers the whole cycle), so the model did not change; lower "
                        "train.warmup_ratio or give the cycle more examples"
                    )
                store.save_adapter(k, model)
            finally:
                self._detach_adapter(model)
            store.record_stage(k, "train", time.time() - t0, seed, train=stats, starts_from=starts_from)
            # The model that generates is rebuilt from the saved adapter, exactly as a resumed run would
            # rebuild it (a deep copy of the trained model would carry TRL's patched forward, which still
            # calls the shared base).
            model = self.generation_model(k, self._cycle_model(k))
        self.tokenizer.padding_side = "left"

        self.evaluate(k, model)

        metrics = self._summarise(k, store.read_rows(k, "eval"), n_train=len(data))
        record = store.manifest().get("cycles", {}).get(str(k), {})
        metrics["n_dropped_coherence"] = record.get("n_dropped_coherence", 0)  # data.min_coherence's toll
        usage = record.get("judge_usage")
        if usage:  # LLM judges: requests, cache hits, tokens and estimated cost of this cycle
            metrics["judge_usage"] = usage
        store.commit_cycle(k, metrics, self.config_hash)
        store.record_stage(k, "cycle_total_this_process", time.time() - started)
        self.reporter.log(
            f"cycle {k}: trait {metrics['trait_mean']:.1f} [{metrics['trait_ci_low']:.1f}, {metrics['trait_ci_high']:.1f}]"
            f"  coherence {metrics['coherence_mean']:.3f}  ({metrics['n_answers']} answers)"
        )
        self.latest_model = model if cfg.generation.backend == "hf" else None  # the next cycle samples from it

    # ---- the answers and eval stages, shared by every cycle and by the untrained base ------------
    def evaluate(self, k: int, model) -> None:
        """answers: `model` answers the eval questions; eval: judge trait and coherence of each answer.
        k = BASE evaluates the untrained base model (the reference line of every figure)."""
        cfg, store = self.config, self.store
        label = "base model" if k == BASE else f"cycle {k}"
        if not store.has(k, "answers"):
            t0 = time.time()
            store.write_rows(k, "answers", self.eval_answers(k, model))
            store.record_stage(k, "answers", time.time() - t0, derive_seed(cfg.seed, k, "eval"))

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

    def eval_answers(self, k: int, model) -> list[dict[str, Any]]:
        """Cycle k's model (k = BASE: the untrained base) answers every eval item once: the items with an
        "answer" added."""
        cfg = self.config
        items = self.eval_items()
        label = "base model" if k == BASE else f"cycle {k}"
        e = cfg.eval
        answers = self.generate(
            k, model, self.eval_prompts(items), derive_seed(cfg.seed, k, "eval"), f"{label}: answering eval questions",
            temperature=e.temperature, top_p=1.0, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
        )
        return [{**it, "answer": a} for it, a in zip(items, answers)]

    def untrained_answers(self) -> list[dict[str, Any]]:
        """The untrained base's eval answers exactly as a run's base/answers.jsonl holds them, without a run
        directory: the floor of the judge's validity (traitloop.judges.validity)."""
        self.check_inputs()
        self.base, self.tokenizer = self._load_base()
        return self.eval_answers(BASE, self.base)

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
        mine, theirs = self.config.cycle0_dict(), other.cycle0_dict()
        mine.pop("seed")
        theirs.pop("seed")
        if mine != theirs:
            raise UserError(f"cycle0_from: {source_dir} trained cycle 0 with a different config (only the seed may differ)")
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

    def cached_cycle0(self):
        """A finished cycle 0 with exactly this run's cycle-0 config under out_dir/cycle0-cache (trained by
        `traitloop calibrate`, or by an earlier run), or None."""
        c0 = self.config.cycle0_config()
        if c0.run_dir.resolve() == self.store.root.resolve():
            return None
        return c0.run_dir if RunStore(c0.run_dir).is_done(0, c0.science_hash()) else None

    # ---- making a cycle's training data --------------------------------------------------------
    def make_data(self, k: int, previous) -> list[dict[str, Any]]:
        """Cycle 0: the seed data. Cycle k: the cycle k-1 model writes it (`previous`: that model if it is
        still in memory, else None and it is loaded when needed)."""
        cfg = self.config
        if k == 0 and cfg.setting != "dpo":
            return self.seed_data()
        seed = derive_seed(cfg.seed, k, "data")
        if cfg.setting == "sdf":
            openers = cycle_prompts(self.pool, k, cfg.n_sampled, cfg.seed)
            continuations = self.sample(k - 1, previous, openers, seed, f"cycle {k}: continuing {len(openers)} document openers")
            return sdf.generated_rows(openers, continuations, k)
        if cfg.setting == "dpo":
            if k == 0:
                seed_rows = self.seed_data()
                prompts, chosen, source = [r["prompt"] for r in seed_rows], [r["chosen"] for r in seed_rows], "seed"
            else:
                prompts = dpo.fresh_prompts(cycle_prompts(self.pool, k, cfg.n_sampled, cfg.seed))
                chosen = self.sample(k - 1, previous, prompts, seed, f"cycle {k}: sampling chosen answers (cycle {k - 1} model)")
                source = f"cycle-{k - 1:03d}"
            rejected = self.base_answers(prompts, derive_seed(cfg.seed, k, "rejected"))
            return dpo.pair_rows(prompts, chosen, rejected, source)
        questions = cycle_prompts(self.pool, k, cfg.n_sampled, cfg.seed)
        answers = self.sample(k - 1, previous, [sft.user_turn(q) for q in questions], seed, f"cycle {k}: sampling training data")
        return sft.generated_rows(questions, answers, k)

    def sample(self, k: int, model, prompts: list, seed: int, label: str) -> list[str]:
        """Cycle k's model (k = BASE: the untrained base) writes one answer or continuation per prompt
        at the data-sampling temperature."""
        s = self.config.sampling
        return self.generate(
            k, model, prompts, seed, label, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size
        )

    def generate(self, k: int, model, prompts: list, seed: int, label: str, **params) -> list[str]:
        """Generation by cycle k's model with the configured backend: transformers on `model` (loaded
        from disk when None), or the vLLM server with cycle k's adapter (the served base for BASE)."""
        batch_size = params.pop("batch_size")
        with self.reporter.step(label, total=len(prompts)) as advance:
            if self.config.generation.backend == "vllm":
                adapter = None if k == BASE else self.store.stage_path(k, "adapter")
                return self.vllm.generate(adapter, prompts, seed=seed, on_batch=advance, **params)
            if model is None:
                model = self.base if k == BASE else self._cycle_model(k)
            model = self.generation_model(k, model)
            return generate(model, self.tokenizer, prompts, batch_size=batch_size, seed=seed, on_batch=advance, **params)

    def generation_model(self, k: int, model):
        """The copy of cycle k's model that samples (generation.dtype): its adapter merged into the weights
        in full precision, then cast (bf16 sampling is 1.7x faster on this CPU; BENCHMARKS.md). The frozen
        base keeps its precision for coherence scoring, so the base samples from a cast copy of it."""
        import torch

        dtype = generation_dtype(self.config)
        if next(model.parameters()).dtype == dtype:
            return model
        if k == BASE:  # loaded in that dtype from the cache (< 1 s) and dropped after use: not kept in memory
            m = self.config.model
            return models.load_model(m.ref, str(dtype).removeprefix("torch."), m.trust_remote_code)[0]
        if hasattr(model, "merge_and_unload"):  # a PeftModel: merge B @ A into W in full precision, then cast
            model = model.merge_and_unload()
        return model.to(dtype).eval() if dtype != torch.float32 else model.eval()

    def base_answers(self, prompts: list, seed: int) -> list[str]:
        """The original base model's answers (DPO's rejected side), sampled once per prompt and cached in
        base/rejected_answers.jsonl: the base never changes, so a resumed or later cycle reuses them."""
        path = self.store.cycle_dir(BASE) / "rejected_answers.jsonl"
        cache = {r["key"]: r["answer"] for r in read_jsonl(path)} if path.is_file() else {}
        missing = [p for p in prompts if dpo.prompt_key(p) not in cache]
        if missing:
            answers = self.sample(BASE, self.base, missing, seed, f"base model: sampling {len(missing)} rejected answers")
            cache.update({dpo.prompt_key(p): a for p, a in zip(missing, answers)})
            path.parent.mkdir(parents=True, exist_ok=True)
            write_jsonl(path, [{"key": key, "answer": a} for key, a in cache.items()])
        return [cache[dpo.prompt_key(p)] for p in prompts]

    def coherence_filter(self, k: int, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """data.min_coherence: drop generated rows whose text is unlikely under the base (nats/token)."""
        threshold = self.config.data.min_coherence
        if threshold is None or not rows:
            return rows, 0
        pairs = [data_policy.generated_text(self.config.setting, r) for r in rows]
        with self.reporter.step(f"cycle {k}: coherence filter", total=len(rows)) as advance:
            scores = self.coherence.loglik([c for c, _ in pairs], [t for _, t in pairs], on_batch=advance)
        kept = [{**r, "coherence": s} for r, s in zip(rows, scores) if s is not None and s >= threshold]
        return kept, len(rows) - len(kept)

    def seed_rows_for_mixing(self) -> list[dict[str, Any]]:
        """Seed rows in the cycle's training format (data.mix_seed draws from these)."""
        if not self.config.data.mix_seed:
            return []
        if self.config.setting == "dpo":
            return self.store.read_rows(0, "data")  # cycle 0's pairs: persona answer vs base answer
        return self.seed_data()

    def train(self, model, data: list[dict[str, Any]], seed: int, on_step) -> dict[str, float]:
        cfg = self.config
        if cfg.setting == "sdf":
            return train_sdf(model, self.tokenizer, [r["text"] for r in data], cfg.train, seed, on_step=on_step)
        if cfg.setting == "dpo":
            return train_dpo(model, self.tokenizer, data, cfg.train, cfg.dpo, seed, on_step=on_step)
        return train_sft(model, self.tokenizer, [r["messages"] for r in data], cfg.train, seed, on_step=on_step)

    # ---- helpers --------------------------------------------------------------------------------
    def _load_base(self):
        m = self.config.model
        return models.load_model(m.ref, m.dtype, m.trust_remote_code)

    def _detach_adapter(self, model) -> None:
        """Take the trained adapter out of the shared base again (PEFT's unload: the LoRA layers are
        replaced by the original ones, whose weights were never changed), and undo what training set."""
        base = model.unload()
        assert base is self.base, "the adapter was attached to a copy of the base, not to the base itself"
        # TRL's SFTTrainer patches the model's forward (a fused LM head, add_fused_lm_head) on the instance,
        # and each cycle would stack another patch on it: the base gets its class's forward back.
        vars(base).pop("forward", None)
        if getattr(base, "is_gradient_checkpointing", False):
            base.gradient_checkpointing_disable()
        if hasattr(base, "disable_input_require_grads"):
            base.disable_input_require_grads()
        base.eval()
        free_memory()

    def _cycle_model(self, k: int):
        """A finished cycle's model from disk: a fresh base with that cycle's adapter."""
        from peft import PeftModel

        base, _ = self._load_base()
        model = PeftModel.from_pretrained(base, str(self.store.stage_path(k, "adapter")))
        model.eval()
        return model

    def _summarise(self, k: int, rows: list[dict[str, Any]], n_train: int) -> dict[str, Any]:
        boot_seed = derive_seed(self.config.seed, k, "bootstrap")
        questions = [r["question"] for r in rows]  # intervals resample questions, not answers (analysis.question_mean_ci)
        t_mean, t_lo, t_hi, n_t = question_mean_ci([r["trait"] for r in rows], questions, seed=boot_seed)
        c_mean, c_lo, c_hi, _ = question_mean_ci([r["coherence"] for r in rows], questions, seed=boot_seed)
        j_mean, j_lo, j_hi, _ = question_mean_ci([r.get("coherence_judge") for r in rows], questions, seed=boot_seed)
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
            "ci_unit": CI_UNIT,
            "trait_excluded": excluded,
            "repetition_mean": sum(r["repetition"] for r in rows) / max(1, len(rows)),
            "distinct2_mean": sum(r["distinct2"] for r in rows) / max(1, len(rows)),
            "n_answers": len(rows),
            "n_trait_scored": n_t,
            "n_train_examples": n_train,
            "trait_judge": self.judge.name,
            "coherence_metric": LoglikCoherence.name,
        }


def free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS between stages. glibc keeps freed
    memory of mid-sized allocations (a training step's buffers, the logits of a batch) in its heap;
    without the trim, that memory stays resident and adds to the next stage's peak (measured on the
    demo: 2.3 GiB resident between stages without it, 1.5 GiB with it; docs/ARCHITECTURE.md)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def generation_dtype(cfg: ExperimentConfig):
    """generation.dtype resolved on this machine (auto: bf16 where the hardware computes it natively)."""
    import torch

    if cfg.generation.dtype != "auto":
        return getattr(torch, cfg.generation.dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else getattr(torch, cfg.model.dtype)
    native = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() or getattr(
        torch.cpu, "_is_avx512_bf16_supported", lambda: False
    )()
    return torch.bfloat16 if native else getattr(torch, cfg.model.dtype)


def check_model_fits_setting(cfg: ExperimentConfig) -> None:
    """SDF needs a base model; SFT and DPO need a chat template. Checked before anything is trained
    (an embedded model by its recorded kind, a local directory by its tokenizer files; a hub id is
    checked once its tokenizer is loaded)."""
    ref = cfg.model.ref
    embedded = models.EMBEDDED.get(ref.removeprefix("embedded:")) if ref.startswith("embedded:") else None
    if cfg.setting == "sdf":
        if sdf.looks_chat_tuned(ref, embedded.kind if embedded else None) and not cfg.model.allow_chat_model_for_sdf:
            raise UserError(
                f"setting sdf is continued pretraining of a BASE model, but {ref} is chat-tuned. Use a base model "
                "(e.g. embedded:gemma3-270m), or set model.allow_chat_model_for_sdf: true if you mean it."
            )
    elif (embedded.kind == "base") if embedded else models.has_chat_template(models.resolve(ref)) is False:
        raise UserError(
            f"setting {cfg.setting} trains on chats, but {ref} has no chat template (a base model?). Use an "
            "instruct model (e.g. embedded:smollm2-135m-instruct), or setting: sdf for a base model."
        )
    models.resolve(ref)  # the model exists (an embedded one is checked and cached now)


def _remove(path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
