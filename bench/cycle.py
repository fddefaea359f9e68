"""One full experiment (cycles 0..1) in this process, traitloop or the reference pipeline; prints one
JSON line: wall time, where the time went, and this process's peak resident memory.

    python -m bench.cycle traitloop --size quick --out /tmp/x
    python -m bench.cycle reference --size quick --out /tmp/y
    python -m bench.cycle traitloop-medium --size quick --out /tmp/z   (model.matmul_precision: medium)

Identical work on both sides: cycle 0 trains on the first n_seed bliss seed chats; cycle 1 samples
n_sampled answers (T=0.8) from the cycle-0 model to the same pool prompts and trains a fresh adapter
on them; each cycle answers questions x samples eval items (T=0.7) and judges them (probe trait
score + log-likelihood coherence under the base). No untrained-base evaluation on either side.
Profile buckets: model_loads, judge_fit, sampling, training, eval_answers, judge_trait,
judge_coherence, other (wall minus the rest: data writing, hashing, adapter saves, trainer setup
outside the timed calls, ...).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from bench.cases import MODEL_REF, SIZES
from bench.machine import max_rss_gib

SEED = 0


class Profile:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def __call__(self, bucket: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[bucket] += time.perf_counter() - t0
            self.calls[bucket] += 1

    def wrap(self, owner, name: str, bucket: str) -> None:
        """Time every call of owner.name into `bucket`."""
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            with self(bucket):
                return original(*args, **kwargs)

        setattr(owner, name, timed)

    def result(self, wall: float) -> dict[str, float]:
        out = {k: round(v, 2) for k, v in self.seconds.items()}
        out["other"] = round(wall - sum(self.seconds.values()), 2)
        return out


def run_traitloop(size: dict, out: Path, matmul_precision: str | None = None) -> dict:
    from traitloop import loop, models
    from traitloop.config import build_config
    from traitloop.judges import make_judge
    from traitloop.judges.coherence import LoglikCoherence
    from traitloop.judges.probe import ProbeJudge
    from traitloop.progress import Reporter
    from traitloop.traits import load_trait

    config = build_config(
        {
            "name": "bench",
            "out_dir": str(out),
            "trait": "bliss",
            "seed": SEED,
            "cycles": 1,
            "n_seed": size["n_seed"],
            "n_sampled": size["n_sampled"],
            "model": {"ref": MODEL_REF, **({"matmul_precision": matmul_precision} if matmul_precision else {})},
            "sampling": {"max_new_tokens": size["new_tokens"]},
            "eval": {
                "questions": size["questions"],
                "samples_per_question": size["samples"],
                "max_new_tokens": size["new_tokens"],
                "include_base": False,
            },
        }
    )
    prof = Profile()
    prof.wrap(models, "load_model", "model_loads")
    prof.wrap(ProbeJudge, "score", "judge_trait")
    prof.wrap(LoglikCoherence, "loglik", "judge_coherence")
    t0 = time.perf_counter()
    with prof("judge_fit"):  # the judge is a collaborator the engine takes: fitted here, timed
        judge = make_judge(config.judge, load_trait(config.trait), seed=config.seed)
    loop.Experiment(config, reporter=Reporter(enabled=False), judge=judge).run()
    wall = time.perf_counter() - t0
    # Stage times the loop records itself; the timed calls above are nested inside some of them.
    timings = [c["timings_s"] for c in json.loads((config.run_dir / "manifest.json").read_text())["cycles"].values()]
    stage = lambda name: sum(t.get(name, 0.0) for t in timings)  # noqa: E731
    p = dict(prof.seconds)
    n_loads = prof.calls["model_loads"]  # the base once, then a fresh base per training stage
    loads_in_training = p["model_loads"] * (n_loads - 1) / n_loads
    p["sampling"] = stage("data")
    p["training"] = stage("train") - loads_in_training
    p["eval_answers"] = stage("answers")
    prof.seconds = defaultdict(float, p)
    return {"wall_s": wall, "profile": prof.result(wall)}


def run_reference(size: dict, out: Path) -> dict:
    from bench import reference
    from traitloop.judges.probe import ProbeJudge
    from traitloop.models import resolve
    from traitloop.prompts import advice_pool, cycle_prompts
    from traitloop.traits import load_trait

    prof = Profile()
    t0 = time.perf_counter()
    model_dir = resolve(MODEL_REF)
    trait = load_trait("bliss")
    questions = [q for q in trait.eval_questions[: size["questions"]] for _ in range(size["samples"])]
    with prof("judge_fit"):
        probe = ProbeJudge(trait, seed=SEED)

    def stage(bucket: str, fn, *args, **kwargs):
        """Run fn, moving the model load it reports out of `bucket` into model_loads."""
        with prof(bucket):
            result = fn(*args, **kwargs)
        info = result[1] if isinstance(result, tuple) else result
        if isinstance(info, dict) and "load_s" in info:
            prof.seconds[bucket] -= info["load_s"]
            prof.seconds["model_loads"] += info["load_s"]
        return result

    for k in (0, 1):
        if k == 0:
            chats = trait.seed_chats[: size["n_seed"]]
        else:
            prompts = cycle_prompts(advice_pool(), 1, size["n_sampled"], SEED)
            answers, _ = stage(
                "sampling", reference.generate, model_dir, prompts, 0.8, size["new_tokens"], SEED, adapter_dir=out / "adapter-0"
            )
            chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": a}] for p, a in zip(prompts, answers) if a.strip()]
        stage("training", reference.train, model_dir, chats, out / f"adapter-{k}", 512)
        answers, _ = stage(
            "eval_answers", reference.generate, model_dir, questions, 0.7, size["new_tokens"], SEED, adapter_dir=out / f"adapter-{k}"
        )
        with prof("judge_trait"):
            reference.judge(probe, questions, answers)
        stage("judge_coherence", reference.coherence, model_dir, questions, answers)
        (out / f"eval-{k}.json").write_text(json.dumps({"questions": questions, "answers": answers}))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "profile": prof.result(wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "which",
        choices=["traitloop", "traitloop-medium", "reference"],
        help="traitloop-medium: traitloop with model.matmul_precision medium",
    )
    parser.add_argument("--size", choices=list(SIZES), default="quick")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from traitloop.cli import quiet_libraries

    quiet_libraries()
    import peft  # noqa: E401,F401  imported before the clock starts, on both sides

    size = SIZES[args.size]["cycle"]
    if args.which == "reference":
        result = run_reference(size, args.out)
    else:
        result = run_traitloop(size, args.out, "medium" if args.which == "traitloop-medium" else None)
    result["max_rss_gib"] = round(max_rss_gib(), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
