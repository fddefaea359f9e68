"""Before a run: how much work it is and how long it should take here (`traitloop run --dry-run CONFIG`).

Work is counted from the config and the trait's data: cycles, training examples, generated tokens
(training-data sampling + eval answers), trained tokens, judged answers. Time is work divided by the
machine's measured throughput, read from $TRAITLOOP_CACHE/throughput.json, which `python -m bench`
writes (or, when the file is missing, a ~20-second micro-measurement on the embedded model, saved
there). Throughput is per token of the measured model; another model's rates are scaled by
parameter count when its size can be read from its safetensors headers.

The model of one cycle k (reset or continual alike):
    sampling   k >= 1: n_sampled answers x max_new_tokens x answer_fill generated tokens
               (dpo: twice, chosen by the previous model and rejected by the base; cycle 0 samples
               the base's rejected answers to the seed prompts)
    training   tokens per example (sft: template + question + answer; sdf: opener + continuation;
               dpo: both sides of the pair), cut at max_length, x epochs; data.policy accumulate and
               data.mix_seed add examples; data.min_coherence adds a forward over the new examples
    eval       questions (sdf: prefixes) x samples answers, x eval max_new_tokens x answer_fill
               tokens; judged by the probe (answers/s) and scored for coherence (one forward each)
    loads      one fresh base per training stage
plus, once per run: the base model load, the judge fit and (eval.include_base) the base's eval.
Per-token rates: the setting's own when the bench measured it (dpo), else the SFT rates (said so).
answer_fill is the measured mean answer length / max_new_tokens; batched sampling runs each batch to
its longest answer, which the measured tokens/s already includes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from traitloop.config import ExperimentConfig
from traitloop.models import cache_dir
from traitloop.settings import get_setting

MEASURED_MODEL = "embedded:smollm2-135m-instruct"
KNOWN_SETTINGS = {"sft"}  # settings whose costs the bench measures; others use the SFT per-token rates

# Used where throughput.json lacks a figure (the micro-measurement does not fit the probe judge).
ASSUMED = {
    "judge_answers_per_s": 20.0,
    "judge_fit_s": 10.0,
    "coherence_tokens_per_s": 500.0,
    "model_load_s": 1.0,
    "answer_fill": 0.8,
    "chars_per_token": 4.0,
    "template_tokens": 31,
}


# ---- the throughput file -----------------------------------------------------------------------------
def throughput_path() -> Path:
    return cache_dir() / "throughput.json"


def load_throughput() -> dict[str, Any] | None:
    path = throughput_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and data.get("sample_tokens_per_s") and data.get("train_tokens_per_s")
    return data if ok else None


def save_throughput(data: dict[str, Any]) -> Path:
    from traitloop.jsonl import write_json

    path = throughput_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
    return path


def tokenizer_figures(tokenizer, chats: list[list[dict[str, str]]]) -> dict[str, float]:
    """Characters per token of chat text, and the chat template's own tokens around one user turn."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in chats]
    tokens = sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts)
    empty = tokenizer.apply_chat_template([{"role": "user", "content": ""}], add_generation_prompt=True, tokenize=False)
    return {
        "chars_per_token": round(sum(len(m["content"]) for c in chats for m in c) / max(1, tokens), 3),
        "template_tokens": len(tokenizer(empty, add_special_tokens=False).input_ids) + 2,  # + end of each turn
    }


def measure_throughput(log=print) -> dict[str, Any]:
    """~20 s on an idle 2-core machine (longer on a busy one): a few generate steps in fp32 and bf16,
    one coherence pass and two training steps on the embedded model, with the torch threads a run uses
    and the default model.matmul_precision."""
    from traitloop.config import ModelConfig
    from traitloop.precision import fp32_matmul_precision

    precision = ModelConfig().matmul_precision
    with fp32_matmul_precision(precision):
        return _measure_throughput(log) | {"matmul_precision": precision}


def _measure_throughput(log) -> dict[str, Any]:
    import torch

    from traitloop.config import LoraConfig, TrainConfig
    from traitloop.generation.hf import generate
    from traitloop.judges.coherence import LoglikCoherence
    from traitloop.models import load_model
    from traitloop.prompts import advice_pool
    from traitloop.training import attach_adapter, train_sft
    from traitloop.traits import load_trait

    log("measuring this machine's throughput once (about 20 s; `python -m bench` measures it properly) ...")
    n_tokens = lambda texts: sum(len(tok(t, add_special_tokens=False).input_ids) for t in texts)  # noqa: E731
    t0 = time.perf_counter()
    model, tok = load_model(MEASURED_MODEL)
    load_s = time.perf_counter() - t0
    questions, new_tokens = list(advice_pool()[:16]), 16
    turns = [[{"role": "user", "content": q}] for q in questions]

    def sample_rate(m) -> tuple[float, list[str]]:
        t0 = time.perf_counter()
        answers = generate(m, tok, turns, temperature=0.8, max_new_tokens=new_tokens, batch_size=16, seed=0)
        return n_tokens(answers) / (time.perf_counter() - t0), answers

    fp32_rate, answers = sample_rate(model)
    t0 = time.perf_counter()
    LoglikCoherence(model, tok).loglik(questions, answers)
    prompts = [tok.apply_chat_template(t, add_generation_prompt=True, tokenize=False) for t in turns]
    coherence_rate = (n_tokens(prompts) + n_tokens(answers)) / (time.perf_counter() - t0)
    bf16_rate, _ = sample_rate(model.to(torch.bfloat16))

    chats = load_trait("bliss").seed_chats[:4]
    train = TrainConfig(batch_size=2)
    train_tokens = sum(min(n_tokens([tok.apply_chat_template(c, tokenize=False)]), train.max_length) for c in chats)
    t0 = time.perf_counter()
    train_sft(attach_adapter(load_model(MEASURED_MODEL)[0], LoraConfig()), tok, chats, train, seed=0)
    train_rate = train_tokens / (time.perf_counter() - t0)  # includes the trainer's setup: pessimistic
    return {
        "model_ref": MEASURED_MODEL,
        "params": sum(p.numel() for p in model.parameters()),
        "sample_tokens_per_s": {"16": round(fp32_rate, 2)},
        "sample_bf16_speedup": round(bf16_rate / fp32_rate, 3),
        "sample_max_new_tokens": new_tokens,
        "answer_fill": round(n_tokens(answers) / (len(questions) * new_tokens), 3),
        "train_tokens_per_s": round(train_rate, 2),
        "coherence_tokens_per_s": round(coherence_rate, 1),
        "model_load_s": round(load_s, 2),
        **tokenizer_figures(tok, chats),
        "threads": torch.get_num_threads(),
        "source": "micro-measurement (traitloop run --dry-run)",
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
    }


def get_throughput(log=print) -> dict[str, Any]:
    """throughput.json, measured and saved first if missing."""
    data = load_throughput()
    if data is None:
        data = measure_throughput(log)
        save_throughput(data)
    return data


# ---- the estimate ------------------------------------------------------------------------------------
def _count_params(ref: str) -> int | None:
    """Parameters of a model on disk, from its safetensors headers (no weights read); None if unknown."""
    from traitloop.models import EMBEDDED, embedded_cache_path

    if ref.startswith("embedded:"):
        name = ref.removeprefix("embedded:")
        folder = embedded_cache_path(name) if name in EMBEDDED else None
    else:
        folder = Path(ref).expanduser()
    if folder is None or not folder.is_dir():
        return None
    total = 0
    for path in folder.glob("*.safetensors"):
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total or None


def _generates_in_bf16(config: ExperimentConfig) -> bool:
    """Does this run sample in bf16 here (generation.dtype bfloat16, or auto on bf16 hardware)?"""
    dtype = getattr(getattr(config, "generation", None), "dtype", None)
    if dtype in (None, "float32"):
        return config.model.dtype == "bfloat16"
    if dtype == "bfloat16":
        return True
    import torch

    from traitloop.loop import generation_dtype

    return generation_dtype(config) == torch.bfloat16


def _sample_rate(tp: dict[str, Any], batch_size: int, notes: list[str]) -> float:
    """Generated tokens/s at `batch_size`: measured, interpolated linearly between the two measured batch
    sizes around it, or (outside the measured range) the rate at the nearest one."""
    rates = {int(k): float(v) for k, v in tp["sample_tokens_per_s"].items()}
    if batch_size in rates:
        return rates[batch_size]
    below = [b for b in rates if b < batch_size]
    above = [b for b in rates if b > batch_size]
    if below and above:
        lo, hi = max(below), min(above)
        notes.append(f"sampling at batch {batch_size}: rate interpolated between batches {lo} and {hi}")
        return rates[lo] + (rates[hi] - rates[lo]) * (batch_size - lo) / (hi - lo)
    nearest = min(rates, key=lambda b: (abs(b - batch_size), b))
    notes.append(f"sampling at batch {batch_size} uses the rate measured at batch {nearest}")
    return rates[nearest]


def _tokens(text_chars: float, tp: dict[str, Any]) -> float:
    return text_chars / tp["chars_per_token"]


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / max(1, len(xs))


def _shape(config: ExperimentConfig, tp: dict[str, Any]) -> dict[str, Any]:
    """Tokens of one example of each kind: the setting's own cost shape (Setting.cost_shape)."""
    from traitloop.settings import TokenCounts, get_setting
    from traitloop.traits import load_trait

    counts = TokenCounts(
        tokens=lambda chars: _tokens(chars, tp), template=tp["template_tokens"], answer=config.sampling.max_new_tokens * tp["answer_fill"]
    )
    return get_setting(config.setting).cost_shape(config, load_trait(config.trait), counts)


def estimate(config: ExperimentConfig, throughput: dict[str, Any] | None = None) -> dict[str, Any]:
    """Planned work and estimated wall time of `config` on this machine (nothing is written)."""
    import torch

    measured = throughput if throughput is not None else get_throughput()
    tp = {**ASSUMED, **measured}
    assumed = sorted(k for k in ASSUMED if k not in measured)
    notes: list[str] = []
    setting = get_setting(config.setting)

    # Training rate per token: the setting's own when measured, else the SFT rate scaled by the setting's
    # relative cost per token (said so).
    train_rate = float(tp["train_tokens_per_s"])
    if tp.get(f"{setting.name}_train_tokens_per_s"):
        train_rate = float(tp[f"{setting.name}_train_tokens_per_s"])
    elif setting.train_cost_vs_sft != 1.0:
        train_rate /= setting.train_cost_vs_sft
        notes.append(
            f"{setting.name}: training time from the SFT per-token rate / {setting.train_cost_vs_sft:.2f} "
            f"({setting.train_cost_why}); {setting.name} itself not measured here yet (python -m bench measures it)"
        )
    elif setting.name not in KNOWN_SETTINGS:
        notes.append(f"{setting.name}: its costs are not measured yet; estimated with the SFT per-token rates")

    # Another model than the measured one: scale per-token rates by parameter count when known.
    scale = 1.0
    if config.model.ref != tp.get("model_ref", MEASURED_MODEL):
        params = _count_params(config.model.ref)
        if params and tp.get("params"):
            scale = tp["params"] / params
            notes.append(
                f"throughput measured on {tp.get('model_ref')}; rates scaled by parameter count "
                f"({tp['params'] / 1e6:.0f}M / {params / 1e6:.0f}M)"
            )
        else:
            notes.append(
                f"throughput measured on {tp.get('model_ref')}; the size of {config.model.ref} is unknown "
                "here (not on disk yet), so its rates are taken as equal: too low an estimate for a larger model"
            )
    threads = torch.get_num_threads()  # what a run started like this one would use (OMP_NUM_THREADS, else all cores)
    if tp.get("threads") and tp["threads"] != threads:
        notes.append(
            f"throughput was measured with {tp['threads']} torch thread(s), this run would use {threads}: "
            "faster on an idle machine, much slower on a busy one (python -m bench measures both)"
        )
    if config.model.dtype != "float32":
        notes.append(f"model.dtype={config.model.dtype}: rates were measured in float32")
    sample_rate = _sample_rate(tp, config.sampling.batch_size, notes) * scale
    eval_rate = _sample_rate(tp, config.eval.batch_size, notes) * scale
    backend = getattr(getattr(config, "generation", None), "backend", "hf")
    if backend != "hf":
        notes.append(f"generation.backend={backend}: sampling time estimated with transformers' measured rates")
    elif _generates_in_bf16(config):
        gain = tp.get("sample_bf16_speedup")
        if gain:
            sample_rate, eval_rate = sample_rate * gain, eval_rate * gain
            notes.append(f"sampling in bf16 (generation.dtype): measured {gain:.2f}x the fp32 rate")
        else:
            notes.append("sampling in bf16 (generation.dtype): its rate is not measured; fp32 rates used (too slow)")
    train_rate *= scale
    coherence_rate = float(tp["coherence_tokens_per_s"]) * scale
    load_s = float(tp["model_load_s"]) / scale

    measured_at = tp.get("sample_max_new_tokens")
    longest = max(config.sampling.max_new_tokens, config.eval.max_new_tokens)
    if measured_at and longest > measured_at:
        notes.append(
            f"answers are taken to fill {tp['answer_fill']:.0%} of max_new_tokens, as measured at {measured_at} "
            f"tokens; at {longest} more of them stop early, so tokens and time may be overestimated"
        )
    shape = _shape(config, tp)
    n_eval = shape["eval_items"] * config.eval.samples_per_question
    eval_answer = config.eval.max_new_tokens * tp["answer_fill"]
    judge_known = config.judge.kind == "probe"
    if not judge_known:
        notes.append(f"judge.kind={config.judge.kind}: LLM-judge time depends on the endpoint and is not included")

    def eval_cost() -> dict[str, float]:
        judge_s = n_eval / tp["judge_answers_per_s"] if judge_known else 0.0
        return {"eval": n_eval * eval_answer / eval_rate, "judge": judge_s + n_eval * (shape["eval_prompt"] + eval_answer) / coherence_rate}

    done, copied = _finished_cycles(config)
    data = config.data
    cycles = []
    for k in range(config.cycles + 1):
        if k == 0:
            examples = len(shape["seed"])
            train_tokens = sum(min(t, config.train.max_length) for t in shape["seed"])
            sample_tokens = examples * shape["seed_sampled"]
            filter_tokens = 0.0
        else:
            carried = config.n_sampled * (k - 1) if data.policy == "accumulate" else 0
            mixed = min(data.mix_seed, len(shape["seed"]))
            examples = config.n_sampled + carried + mixed
            per_example = min(shape["trained"], config.train.max_length * setting.sequences_per_example)
            seed_mean = _mean(min(t, config.train.max_length) for t in shape["seed"])
            train_tokens = (config.n_sampled + carried) * per_example + mixed * seed_mean
            sample_tokens = config.n_sampled * shape["sampled"]
            filter_tokens = config.n_sampled * shape["trained"] if data.min_coherence is not None else 0.0
        train_tokens *= config.train.epochs
        stages = {
            "sampling": sample_tokens / sample_rate,
            "training": train_tokens / train_rate + filter_tokens / coherence_rate,
            "loads": load_s,
            **eval_cost(),
        }
        status = "done" if k in done else "copied" if k in copied else "planned"
        cycles.append(
            {
                "cycle": k,
                "status": status,
                "examples": examples,
                "train_tokens": round(train_tokens),
                "sample_tokens": round(sample_tokens),
                "eval_tokens": round(n_eval * eval_answer),
                "stages_s": {key: round(v, 1) for key, v in stages.items()},
                "seconds": round(sum(stages.values()), 1) if status == "planned" else 0.0,
            }
        )

    base_eval = sum(eval_cost().values()) if config.eval.include_base else 0.0
    setup = {"model_load": load_s, "judge_fit": float(tp["judge_fit_s"]) if judge_known else 0.0, "base_eval": base_eval}
    if done:
        notes.append(f"cycles {sorted(done)} are already done in {config.run_dir} and will be skipped")
    if copied:
        notes.append("cycle 0 is copied from a finished run (cycle0_from or the cycle0-cache), not trained")
    if assumed:
        notes.append("not measured, assumed: " + ", ".join(assumed))
    planned = [c for c in cycles if c["status"] == "planned"]
    return {
        "name": config.name,
        "setting": setting.name,
        "model": config.model.ref,
        "init": config.init,
        "cycles": len(cycles),
        "cycles_to_run": len(planned),
        "examples_per_cycle": [c["examples"] for c in cycles],
        "per_cycle": cycles,
        "setup_s": {k: round(v, 1) for k, v in setup.items()},
        "totals": {
            "examples": sum(c["examples"] for c in planned),
            "train_tokens": sum(c["train_tokens"] for c in planned),
            "sample_tokens": sum(c["sample_tokens"] for c in planned),
            "eval_tokens": sum(c["eval_tokens"] for c in planned) + (round(n_eval * eval_answer) if config.eval.include_base else 0),
            "eval_answers": n_eval * (len(planned) + bool(config.eval.include_base)),
            "seconds": round(sum(c["seconds"] for c in planned) + sum(setup.values()), 1),
        },
        "throughput": {k: tp.get(k) for k in ("source", "measured_at", "cpu_model", "cores", "threads")},
        "notes": list(dict.fromkeys(notes)),
    }


def _finished_cycles(config: ExperimentConfig) -> tuple[set[int], set[int]]:
    """Cycles already done in an existing run dir (skipped on resume), and cycle 0 when it will be copied
    (cycle0_from, or a matching finished cycle 0 in out_dir/cycle0-cache)."""
    from traitloop.store import RunStore

    copied = {0} if config.cycle0_from else set()
    if hasattr(config, "cycle0_config"):
        c0 = config.cycle0_config()
        if c0.run_dir.resolve() != config.run_dir.resolve() and RunStore(c0.run_dir).is_done(0, c0.science_hash()):
            copied = {0}
    store, key = RunStore(config.run_dir), config.science_hash()
    if not store.is_run():
        return set(), copied
    return {k for k in range(config.cycles + 1) if store.is_done(k, key)}, copied


# ---- from runs already finished: their own stage timings ----------------------------------------------
NOT_A_STAGE = ("cycle_total_this_process", "adopted", "judge_retry")  # totals and copies, not work to repeat


def computed_timings(run_dir: Path) -> dict[int, dict[str, float]]:
    """Per cycle (k = -1: the base model's evaluation), the seconds of each stage the run's manifest recorded,
    totals and retries left out; a cycle copied from another run (adopted) is left out, as it cost nothing."""
    from traitloop.store import RunStore

    out = {}
    for key, record in RunStore(run_dir).manifest().get("cycles", {}).items():
        timings = record.get("timings_s", {})
        stages = {stage: float(seconds) for stage, seconds in timings.items() if stage not in NOT_A_STAGE}
        if stages and "adopted" not in timings:
            out[int(key)] = stages
    return out


def measured_cycle_seconds(run_dir: Path) -> dict[int, float]:
    """Seconds each cycle of a run took, summed over its stages (computed_timings)."""
    return {k: sum(stages.values()) for k, stages in computed_timings(run_dir).items()}


def measured_stage_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds a run spent in each stage (train, data, answers, judge, heldout, ...), summed over the base
    evaluation and every cycle it computed itself (computed_timings)."""
    out: dict[str, float] = {}
    for stages in computed_timings(run_dir).values():
        for stage, seconds in stages.items():
            out[stage] = out.get(stage, 0.0) + seconds
    return out


def measured_profile(run_dirs: list[Path]) -> dict[int, float]:
    """Per cycle (k = -1: the base evaluation), the median of the seconds it took in the given runs that
    computed it themselves: the runs of one sweep grid do the same work per cycle."""
    import statistics

    per_cycle: dict[int, list[float]] = {}
    for run_dir in run_dirs:
        for k, seconds in measured_cycle_seconds(run_dir).items():
            per_cycle.setdefault(k, []).append(seconds)
    return {k: statistics.median(values) for k, values in sorted(per_cycle.items())}


def remaining_from_profile(config: ExperimentConfig, profile: dict[int, float], copies_cycle0: bool = False) -> float | None:
    """Seconds `config`'s run still needs, from a grid's measured per-cycle profile: the cycles (and the base
    evaluation) it has not finished, less cycle 0 and the base evaluation when it will copy them
    (copies_cycle0: a publish_cycle0 run whose seed's cycle 0 another run computes). None when the profile
    lacks a cycle it needs (estimate it from the throughput instead)."""
    from traitloop.store import RunStore

    done, copied = _finished_cycles(config)
    copies_cycle0 = copies_cycle0 or (0 in copied and config.publish_cycle0)  # its seed's cycle 0 is in the cache already
    skip = done | copied | ({0} if copies_cycle0 else set())
    base_needed = config.eval.include_base and RunStore(config.run_dir).base_metrics() is None and not copies_cycle0
    needed = ([-1] if base_needed else []) + [k for k in range(config.cycles + 1) if k not in skip]
    if any(k not in profile for k in needed):
        return None
    return sum(profile[k] for k in needed)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds % 3600 // 60, seconds % 60
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def estimate_table(est: dict[str, Any]) -> Table:
    tp = est["throughput"]
    where = f"{tp.get('cores')} cores, {tp.get('cpu_model')}" if tp.get("cpu_model") else "this machine"
    table = Table(
        title=f"dry run: {est['name']} ({est['setting']} / {est['init']} / {est['model']}): nothing is run or written",
        caption=f"throughput: {tp.get('source')}, {tp.get('measured_at')}, {where}\n" + "\n".join(f"note: {n}" for n in est["notes"]),
    )
    for col in ["cycle", "examples", "trained tokens", "sampled tokens", "eval tokens", "est. time", "sampling / training / eval / judge"]:
        table.add_column(col, justify="right")
    setup = est["setup_s"]
    table.add_row(
        "setup",
        "",
        "",
        "",
        "",
        _duration(sum(setup.values())),
        f"load {setup['model_load']:.0f}s, judge fit {setup['judge_fit']:.0f}s, base eval {setup['base_eval']:.0f}s",
    )
    for c in est["per_cycle"]:
        s = c["stages_s"]
        time_cell = _duration(c["seconds"]) if c["status"] == "planned" else c["status"]
        table.add_row(
            str(c["cycle"]),
            str(c["examples"]),
            f"{c['train_tokens']:,}",
            f"{c['sample_tokens']:,}",
            f"{c['eval_tokens']:,}",
            time_cell,
            f"{s['sampling']:.0f} / {s['training']:.0f} / {s['eval']:.0f} / {s['judge']:.0f} s",
        )
    t = est["totals"]
    table.add_row(
        f"total ({est['cycles_to_run']} of {est['cycles']} cycles)",
        str(t["examples"]),
        f"{t['train_tokens']:,}",
        f"{t['sample_tokens']:,}",
        f"{t['eval_tokens']:,}",
        _duration(t["seconds"]),
        "",
        style="bold",
    )
    return table
