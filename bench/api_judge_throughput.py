"""Requests per second of the api judge against an OpenAI-compatible server, and the cache hit rate
of a second pass over the same answers.

    python bench/api_judge_throughput.py --base-url http://127.0.0.1:8000/v1 --model smollm2 \
        --run runs/demo --concurrency 8

Answers come from a run's eval.jsonl files (every cycle); a fresh cache file is used, so the first
pass pays for every request and the second should pay for none.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from traitloop.config import JudgeConfig
from traitloop.judges.api import ApiJudge
from traitloop.traits import load_trait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--run", type=Path, required=True, help="a run directory with cycle-*/eval.jsonl")
    parser.add_argument("--trait", default="bliss")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    rows = [json.loads(line) for path in sorted(args.run.glob("cycle-*/eval.jsonl")) for line in path.read_text().splitlines()]
    questions, answers = [r["question"] for r in rows], [r["answer"] for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        config = JudgeConfig(kind="api", model=args.model, base_url=args.base_url, concurrency=args.concurrency)
        judge = ApiJudge(config, load_trait(args.trait), cache_path=Path(tmp) / "cache.sqlite")
        t0 = time.perf_counter()
        first = judge.score(questions, answers)
        first_s = time.perf_counter() - t0
        requests = judge.usage["requests"]
        t0 = time.perf_counter()
        judge.score(questions, answers)
        second_s = time.perf_counter() - t0
    distinct = len({(q, a) for q, a in zip(questions, answers) if a.strip()})  # empty answers are never sent
    print(
        json.dumps(
            {
                "answers": len(answers),
                "distinct_prompts": distinct,
                "concurrency": args.concurrency,
                "first_pass_s": round(first_s, 2),
                "requests_per_s": round(requests / first_s, 2),
                "scored": sum(s.value is not None for s in first),
                "no_score_reasons": sorted({s.reason.split(" (")[0] for s in first if s.value is None}),
                "second_pass_s": round(second_s, 3),
                "second_pass_new_requests": judge.usage["requests"] - requests,
                "second_pass_cache_hit_rate": round(judge.usage["cached"] / distinct, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
