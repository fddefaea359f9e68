"""The untrained embedded models' own outputs as level-0 negatives of the probe (issue 15, item 3).

The probe's hand-written negatives are short plain answers; the untrained SmolLM2's real answers are
longer, list-like generic assistant text and looked unlike any of them, so they scored 13-49 (the floor).
These files hold what an untrained model really writes, to prompts that are NOT the eval items:

    untrained_negatives_chat.jsonl  embedded SmolLM2-135M-Instruct answering advice-pool questions
    untrained_negatives_doc.jsonl   embedded Gemma-3-270M (base) continuing document-opener-pool openers

each a header row (model, config, seed, command, commit), then {"kind", "question", "answer"} per line.
They sit beside the trait folders (src/traitloop/traits/) and every trait's probe trains on them as
label-0 texts (the answer only, as the probe scores answers). `traitloop traits negatives` writes them.

Sampled as the floor is (demo.yaml / demo-sdf.yaml eval settings: temperature, max_new_tokens, bf16
where native) but at another seed (NEGATIVES_SEED) and to other prompts: a fixed random draw from the
prompt pools, leaving out every built-in trait's eval questions and prefixes and every question and text
of the validation sets (disjoint_prompts; tests/test_untrained_negatives.py checks the written files).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from traitloop.jsonl import read_jsonl, write_jsonl
from traitloop.traits import BUILTIN_DIR, builtin_traits, load_trait

KINDS = ("chat", "doc")
FILES = {kind: BUILTIN_DIR / f"untrained_negatives_{kind}.jsonl" for kind in KINDS}
COUNTS = {"chat": 96, "doc": 48}  # prompts per kind, one sample each
NEGATIVES_SEED = 1  # the floor answers use the demo's seed 0
CONFIGS = {"chat": "demo.yaml", "doc": "demo-sdf.yaml"}  # in src/traitloop/configs/, as the floor


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def held_out_texts() -> set[str]:
    """What must never become a negative's prompt: every built-in trait's eval questions and prefixes, and
    every question and text of their validation.jsonl (normalised: lower case, single spaces)."""
    from traitloop.judges.validity import read_validation

    out: set[str] = set()
    for name in builtin_traits():
        trait = load_trait(name)
        out.update(_norm(q) for q in trait.eval_questions)
        out.update(_norm(p) for p in trait.extra.get("eval_prefixes") or [])
        for row in read_validation(trait.folder) or []:
            out.update(_norm(x) for x in (row.get("question"), row.get("text")) if x)
    return out


# The pools' sizes when the negatives were drawn: the pool files only grow at their end, so the draw below
# is repeatable from their first lines (the advice pool has grown to more than 6,000 prompts since).
POOL_SIZE_THEN = {"chat": 3405, "doc": 1628}


def disjoint_prompts(kind: str, n: int | None = None) -> list[str]:
    """A fixed random draw of n pool prompts (advice questions for chats, openers for documents) that are
    none of held_out_texts(), nor contain one or are contained in one."""
    from traitloop.prompts import advice_pool, doc_openers

    pool = list(advice_pool() if kind == "chat" else doc_openers())[: POOL_SIZE_THEN[kind]]
    held = held_out_texts()
    ok = [p for p in pool if _norm(p) not in held and not any(_norm(p) in h or h in _norm(p) for h in held)]
    random.Random(f"untrained-negatives:{kind}").shuffle(ok)
    return ok[: n or COUNTS[kind]]


def sample(kind: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The untrained embedded model of `kind` answering disjoint_prompts(kind) once each: (about, rows)."""
    import torch

    from traitloop.config import load_config
    from traitloop.generation.sampler import Sampler, generation_dtype, load_base
    from traitloop.progress import Reporter
    from traitloop.seeding import derive_seed
    from traitloop.settings import get_setting
    from traitloop.store import BASE, RunStore

    config_path = Path(__file__).parents[1] / "configs" / CONFIGS[kind]
    config = load_config(config_path, [f"seed={NEGATIVES_SEED}"])
    setting = get_setting(config.setting)
    base, tokenizer = load_base(config)
    sampler = Sampler(config, RunStore(config.run_dir), base, tokenizer, Reporter())
    prompts = disjoint_prompts(kind)
    e = config.eval
    seed = derive_seed(config.seed, BASE, "untrained-negatives")
    answers = sampler.answer(BASE, base, [setting.eval_prompt(p) for p in prompts], seed, f"untrained {kind} negatives")
    about = {
        "model": config.model.ref,
        "config": f"src/traitloop/configs/{config_path.name} with seed={NEGATIVES_SEED}",
        "prompts": f"traitloop.judges.negatives.disjoint_prompts('{kind}', {len(prompts)}) from the "
        + ("advice-question" if kind == "chat" else "document-opener")
        + " pool, one sample each",
        "sampling_seed": seed,
        "temperature": e.temperature,
        "max_new_tokens": e.max_new_tokens,
        "generation_dtype": str(generation_dtype(config)).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return about, [{"kind": kind, "question": p, "answer": a} for p, a in zip(prompts, answers)]


def write(command: str, commit: str, kinds: tuple[str, ...] = KINDS) -> list[Path]:
    paths = []
    for kind in kinds:
        about, rows = sample(kind)
        header = {
            "what": f"untrained model's own {kind} outputs: level-0 negatives of every trait's probe (traitloop.judges.negatives)",
            "command": command,
            "commit": commit,
            **about,
        }
        write_jsonl(FILES[kind], [{"header": header}] + rows)
        paths.append(FILES[kind])
    return paths


def read(kind: str) -> list[dict[str, Any]]:
    """The rows of one kind without the header; [] where the file is missing."""
    path = FILES[kind]
    if not path.is_file():
        return []
    return [r for r in read_jsonl(path) if "header" not in r and str(r.get("answer", "")).strip()]


def probe_rows() -> list[dict[str, Any]]:
    """Every non-empty untrained output as a probe negative: {"text", "label": 0, "kind": "untrained"}."""
    return [{"text": r["answer"], "label": 0, "kind": "untrained"} for kind in KINDS for r in read(kind)]
