"""The cycle engine. Read top to bottom: one run = cycles 0..N, each in four resumable stages.

    data     cycle 0: the seed data; cycle k: the cycle k-1 model writes new data (the setting,
             traitloop/settings/), then the data policy (filter, accumulate, mix seed; data_policy.py)
    adapter  LoRA training by the setting (reset: a fresh adapter on the base; continual: continue
             cycle k-1's, so for DPO the reference is the cycle k-1 model)
    answers  the cycle's model answers the eval questions (the Sampler, generation/sampler.py)
    eval     trait (judge) and coherence of every answer (the Evaluator, evaluation.py)
then metrics.json and DONE. Every stage's output is one atomic file in the cycle directory
(store.py), so a rerun of the same command skips finished cycles and resumes an unfinished one at
its first missing stage. Every stage seeds itself from (run seed, cycle, stage).

The engine never asks which setting it runs: the setting object decides. Its collaborators (the
setting, the judge, the reporter) are passed in, so tests and benchmarks swap them.
"""

from __future__ import annotations

import time
from typing import Any

from traitloop import data_policy
from traitloop.config import ExperimentConfig
from traitloop.errors import UserError
from traitloop.evaluation import Evaluator, heldout_perplexity
from traitloop.generation.sampler import Sampler, free_memory, generation_dtype, load_base
from traitloop.judges import make_judge
from traitloop.judges.base import Judge
from traitloop.judges.coherence import LoglikCoherence
from traitloop.judges.validity import run_validity
from traitloop.precision import fp32_matmul_precision
from traitloop.preflight import check_endpoints
from traitloop.progress import Reporter
from traitloop.prompts import cycle_prompts
from traitloop.run_inputs import check_inputs, input_hashes
from traitloop.seeding import derive_seed, seed_everything
from traitloop.settings import CycleSources, Setting, get_setting
from traitloop.store import BASE, RunStore
from traitloop.tracking import Tracker, tracker_for
from traitloop.training import attach_adapter, detach_adapter, num_steps

Row = dict[str, Any]


class Experiment:
    def __init__(
        self,
        config: ExperimentConfig,
        force: bool = False,
        reporter: Reporter | None = None,
        *,
        setting: Setting | None = None,
        judge: Judge | None = None,
        tracker: Tracker | None = None,
    ):
        """setting: the config's setting from the registry unless given; judge: made from config.judge
        unless given; tracker: made from config.tracking unless given (traitloop.tracking; whatever it
        raises is one warning, never a failed run)."""
        self.config = config
        self.force = force
        self.reporter = reporter or Reporter()
        self.setting = setting or get_setting(config.setting)
        self.judge = judge
        self.tracker = tracker_for(config.tracking, tracker, self.reporter)
        self.store = RunStore(config.run_dir)
        self.config_hash = config.science_hash()
        self.base_metrics: dict[str, Any] | None = None
        self.latest_model = None  # the newest cycle's model, kept only until the next cycle has sampled from it

    # ---- the whole run --------------------------------------------------------------------------
    def run(self) -> list[Row]:
        """Every cycle, resuming where an earlier process stopped; the per-cycle metrics (scores.csv)."""
        cfg = self.config
        self.check_inputs()
        check_endpoints(cfg, judge=self.judge is None)  # the judge's and vLLM's servers answer (traitloop.preflight)
        self.store.open(cfg, inputs=self.input_hashes(), force=self.force)
        with self.store.locked(), self.reporter, fp32_matmul_precision(cfg.model.matmul_precision), self.tracker.tracking(cfg):
            self.prepare()
            self.base_metrics = self.evaluate_base() if cfg.eval.include_base else None
            rows = []
            for k in range(cfg.cycles + 1):
                if self.store.resume_cycle(k, self.config_hash):  # False: made safe to resume (store.py, "Bad state")
                    self.reporter.log(f"cycle {k}: already done, skipped")
                    self.latest_model = None
                else:
                    self.run_cycle(k)
                if k == 0 and cfg.publish_cycle0 and (published := self.store.publish_cycle0(cfg)):  # also after a resume
                    self.reporter.log(f"cycle 0: copied to {published} for runs with the same cycle-0 config and seed")
                rows.append(self.store.metrics(k))
                self.tracker.log_stored_cycle(self.store, k)  # skipped cycles too: each tracking run is complete
            self.latest_model = None
        self.store.write_scores(rows)
        return rows

    def check_inputs(self) -> None:
        """Every input, before any expensive work, so bad input fails in a second, not an hour
        (traitloop.run_inputs)."""
        self.trait, self.pool, self.heldout = check_inputs(self.config, self.setting)

    def input_hashes(self) -> dict[str, str]:
        return input_hashes(self.config, self.setting, self.trait, bool(self.heldout))

    def prepare(self) -> None:
        """The run's collaborators: the frozen base, the judge (its validity recorded in the manifest),
        the Sampler and the Evaluator."""
        cfg = self.config
        with self.reporter.step("loading base model", total=1) as advance:
            self.base, self.tokenizer = load_base(cfg)
            advance()
        if self.setting.chats and not getattr(self.tokenizer, "chat_template", None):  # a hub id, now loaded
            raise UserError(f"setting {cfg.setting} trains on chats, but {cfg.model.ref} has no chat template (a base model?)")
        with self.reporter.step(f"preparing judge ({cfg.judge.kind})", total=1) as advance:
            if self.judge is None:
                self.judge = make_judge(cfg.judge, self.trait, seed=cfg.seed, documents=not self.setting.chats)
            accuracy = self.judge.info().get("heldout_accuracy")
            advance(info=f"held-out acc {accuracy:.2f}" if accuracy is not None else "")
        with self.reporter.step("measuring the judge's validity (validation.jsonl)", total=1) as advance:
            validity = run_validity(self.judge, self.trait, documents=not self.setting.chats)
            advance(info={True: "valid", False: "NOT valid: verdicts exploratory", None: "unmeasured"}[validity["valid"]])
        manifest = self.store.manifest()
        manifest["judge"] = {**self.judge.info(), "validity": validity}
        manifest["coherence"] = LoglikCoherence.name
        manifest["generation_dtype"] = str(generation_dtype(cfg)).removeprefix("torch.")  # what "auto" meant here
        self.store.write_manifest(manifest)
        coherence = LoglikCoherence(self.base, self.tokenizer, chat=self.setting.chats)
        self.evaluator = Evaluator(self.judge, coherence, cfg.judge.coherence, self.reporter)
        self.sampler = Sampler(cfg, self.store, self.base, self.tokenizer, self.reporter)
        server_info = getattr(self.sampler.vllm, "server_info", None)  # generation.backend vllm: its version and LoRA settings
        if server_info is not None:
            self.store.write_manifest({**self.store.manifest(), "vllm": server_info(cfg.lora)})

    # ---- one cycle ------------------------------------------------------------------------------
    def run_cycle(self, k: int) -> None:
        cfg, store = self.config, self.store
        started = time.time()
        if k == 0 and not store.has(0, "eval"):
            source = cfg.cycle0_from or store.cached_cycle0(cfg)
            if source:
                store.adopt_cycle0(source, cfg)
                self.reporter.log(f"cycle 0: adopted from {source}")
        if not store.has(k, "data"):
            self.data_stage(k)
        self.latest_model = None  # cycle k-1's model is not needed any more
        free_memory()
        data = store.read_rows(k, "data")
        model = None if store.has(k, "adapter") else self.adapter_stage(k, data)  # None: loaded if needed
        self.tokenizer.padding_side = "left"
        self.evaluate(k, model)

        metrics = self.evaluator.summarise(k, store.read_rows(k, "eval"), cfg.seed, n_train=len(data)) | store.heldout(k)
        record = store.manifest().get("cycles", {}).get(str(k), {})
        metrics["n_dropped_coherence"] = record.get("n_dropped_coherence", 0)  # data.min_coherence's toll
        if record.get("judge_usage"):  # LLM judges: requests, cache hits, tokens and estimated cost of this cycle
            metrics["judge_usage"] = record["judge_usage"]
        store.commit_cycle(k, metrics, self.config_hash)
        store.record_stage(k, "cycle_total_this_process", time.time() - started)
        self.reporter.log(
            f"cycle {k}: trait {metrics['trait_mean']:.1f} [{metrics['trait_ci_low']:.1f}, {metrics['trait_ci_high']:.1f}]"
            f"  coherence {metrics['coherence_mean']:.3f}  ({metrics['n_answers']} answers)"
        )
        self.latest_model = model if cfg.generation.backend == "hf" else None  # the next cycle samples from it

    def data_stage(self, k: int) -> None:
        """Cycle k's training rows: the setting writes them (with the cycle k-1 model for k >= 1), then
        the data policy filters, accumulates and mixes in seed rows."""
        cfg, store, t0 = self.config, self.store, time.time()
        data_seed = derive_seed(cfg.seed, k, "data")
        sources = CycleSources(
            cycle=k,
            trait=self.trait,
            config=cfg,
            prompts=cycle_prompts(self.pool, k, cfg.n_sampled, cfg.seed) if k >= 1 else [],
            sample=lambda prompts, label: self.sampler.sample(k - 1, self.latest_model, prompts, data_seed, label),
            base_answers=lambda prompts: self.sampler.base_answers(prompts, derive_seed(cfg.seed, k, "rejected")),
        )
        rows, counts = self.setting.cycle_rows(sources), {}
        if k >= 1:
            new_rows, dropped = self.coherence_filter(k, rows)
            seed_rows = self.setting.mixing_rows(self.trait, cfg, store.read_rows(0, "data")) if cfg.data.mix_seed else []
            rows, counts = data_policy.combine(
                new_rows, store.read_rows(k - 1, "data"), seed_rows, cfg.data, derive_seed(cfg.seed, k, "mix")
            )
            counts["n_dropped_coherence"] = dropped
            if not rows:  # nothing written: the cycle stays unfinished, earlier cycles stay done
                raise UserError(
                    f"cycle {k}: no usable training examples ({dropped} dropped by the coherence filter). The cycle "
                    f"{k - 1} model may have collapsed; look at its eval answers, and consider a lower learning rate, "
                    "fewer cycles or a lower data.min_coherence."
                )
        store.write_rows(k, "data", rows)
        store.record_stage(k, "data", time.time() - t0, data_seed, n_train_examples=len(rows), **counts)

    def coherence_filter(self, k: int, rows: list[Row]) -> tuple[list[Row], int]:
        """data.min_coherence (typicality, nats/token under the base) and data.min_coherence_score (the
        coherence score, 0-100): drop generated rows below either threshold."""
        by_typicality, by_score = self.config.data.min_coherence, self.config.data.min_coherence_score
        if (by_typicality is None and by_score is None) or not rows:
            return rows, 0
        pairs = [self.setting.generated_text(r) for r in rows]
        contexts, texts = [c for c, _ in pairs], [t for _, t in pairs]
        with self.reporter.step(f"cycle {k}: coherence filter", total=len(rows)) as advance:
            if by_score is None:  # typicality alone: one pass
                typical, scores = self.evaluator.coherence.loglik(contexts, texts, on_batch=advance), [None] * len(rows)
            else:
                typical, scores = self.evaluator.scorer.score(contexts, texts, on_batch=advance)
        kept = [
            {**r, "coherence": t, **({"coherence_score": s} if by_score is not None else {})}
            for r, t, s in zip(rows, typical, scores)
            if t is not None and (by_typicality is None or t >= by_typicality) and (by_score is None or (s is not None and s >= by_score))
        ]
        return kept, len(rows) - len(kept)

    def adapter_stage(self, k: int, data: list[Row]):
        """Train cycle k's adapter and save it; returns the model that samples next (rebuilt from the saved
        adapter, exactly as a resumed run rebuilds it)."""
        cfg, t0 = self.config, time.time()
        seed = derive_seed(cfg.seed, k, "train")
        seed_everything(seed)  # the fresh adapter's initial weights come from this seed
        from_base = cfg.starts_from_base(k)
        starts_from = "base" if from_base else f"cycle {k - 1}"
        # The adapter goes onto the run's frozen base itself, not onto a second copy of it (docs/ARCHITECTURE.md,
        # "Memory"); it is taken out again right after training.
        model = attach_adapter(self.base, cfg.lora, None if from_base else self.store.stage_path(k - 1, "adapter"))
        try:
            label = f"cycle {k}: {cfg.setting.upper()} LoRA from {starts_from}"
            with self.reporter.step(label, total=num_steps(len(data), cfg.train)) as advance, self.tracker.curves():
                on_step = lambda n, loss: advance(n, info=f"loss {loss:.3f}" if loss is not None else "")  # noqa: E731
                stats = self.setting.train(model, self.tokenizer, data, cfg, seed, on_step)
            if stats["steps_at_lr_0"] == stats["steps"]:
                self.reporter.log(
                    f"[yellow]warning:[/yellow] cycle {k}: every one of its {stats['steps']} training step(s) ran at "
                    "learning rate 0 (the warmup covers the whole cycle), so the model did not change; lower "
                    "train.warmup_ratio or give the cycle more examples"
                )
            self.store.save_adapter(k, model)
        finally:
            detach_adapter(model, self.base)
            free_memory()
        self.store.record_stage(k, "train", time.time() - t0, seed, train=stats, starts_from=starts_from)
        # A deep copy of the trained model would carry TRL's patched forward, which still calls the shared base.
        return self.sampler.generation_model(k, self.sampler.cycle_model(k))

    # ---- the answers and eval stages, shared by every cycle and by the untrained base ------------
    def evaluate(self, k: int, model) -> None:
        """answers: `model` answers the eval questions; eval: judge trait and coherence of each answer.
        k = BASE evaluates the untrained base model (the reference line of every figure)."""
        store = self.store
        if self.heldout and not store.has(k, "heldout"):
            t0 = time.time()
            if model is None:  # resumed after training: rebuilt from disk
                model = self.sampler.cycle_model(k)
            model = self.sampler.generation_model(k, model)  # the copy that samples (generation.dtype)
            store.write_heldout(k, heldout_perplexity(model, self.tokenizer, self.setting.chats, self.heldout))
            store.record_stage(k, "heldout", time.time() - t0)
        if not store.has(k, "answers"):
            t0 = time.time()
            store.write_rows(k, "answers", self.eval_answers(k, model))
            store.record_stage(k, "answers", time.time() - t0, derive_seed(self.config.seed, k, "eval"))
        self.evaluator.eval_stage(store, k, "base model" if k == BASE else f"cycle {k}")

    def eval_answers(self, k: int, model) -> list[Row]:
        """Cycle k's model (k = BASE: the untrained base) answers every eval item once: the items with an
        "answer" added."""
        items = self.setting.eval_items(self.trait, self.config)
        prompts = [self.setting.eval_prompt(it["question"]) for it in items]
        label = f"{'base model' if k == BASE else f'cycle {k}'}: answering eval questions"
        answers = self.sampler.answer(k, model, prompts, derive_seed(self.config.seed, k, "eval"), label)
        # policy: a cut-off answer is kept (it is what the model wrote) and flagged; the cycle counts them
        return [{**it, "answer": a, **({"truncated": True} if getattr(a, "truncated", False) else {})} for it, a in zip(items, answers)]

    def evaluate_base(self) -> dict[str, Any]:
        """The untrained model's trait and coherence, once per run (base/metrics.json)."""
        if self.store.base_metrics() is None and (source := self.store.cached_cycle0(self.config)) and self.store.adopt_base(source):
            self.reporter.log(f"base model: its evaluation adopted from {source} (same model, eval, judge and seed)")
        if self.store.base_metrics() is None:
            self.evaluate(BASE, self.base)
            metrics = self.evaluator.summarise(BASE, self.store.read_rows(BASE, "eval"), self.config.seed, n_train=0)
            self.store.write_base_metrics(metrics | self.store.heldout(BASE))
        return self.store.base_metrics()

    def untrained_answers(self) -> list[Row]:
        """The untrained base's eval answers exactly as a run's base/answers.jsonl holds them, without a run
        directory: the floor of the judge's validity (traitloop.judges.validity)."""
        self.check_inputs()
        self.base, self.tokenizer = load_base(self.config)
        self.sampler = Sampler(self.config, self.store, self.base, self.tokenizer, self.reporter)
        return self.eval_answers(BASE, self.base)

    def title(self) -> str:
        c = self.config
        return f"{c.setting.upper()} / {self.trait.name} / {c.init} / {c.model.ref} (n_seed={c.n_seed}, n_sampled={c.n_sampled})"
