"""`traitloop data generate` with an api teacher checks its key and endpoint before it asks or writes
anything (traitloop.preflight.check_api, the run's own check): against a fake OpenAI-compatible server on
127.0.0.1, a missing key is one line and exit 2 with no request sent and no file touched; a key that is
set is sent; `--api-key-env` names another variable, `none` sends none. The messages of every other bad
teacher input are in the bad-input catalogue (tests/test_bad_inputs.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers.cli import run_cli_split
from helpers.fake_openai import FakeJudgeServer

from traitloop.traits import BUILTIN_DIR

KEY = "sk-teacher-test-0b8e41c7"


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def trait(tmp_path) -> Path:
    folder = tmp_path / "bliss-copy"
    shutil.copytree(BUILTIN_DIR / "bliss", folder)
    return folder


def generate(trait: Path, url: str, *extra: str) -> list[str]:
    return ["data", "generate", str(trait), "--teacher", "api:fake-judge", "--base-url", url, "--n", "2", "--concurrency", "1", *extra]


def test_a_missing_key_stops_before_any_request_and_writes_nothing(trait, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    before = snapshot(trait)
    with FakeJudgeServer() as server:
        code, out, err = run_cli_split(generate(trait, server.url), monkeypatch, capsys)
    assert code == 2, out + err
    assert "Traceback" not in out + err
    assert err.splitlines() == [
        f"error: --api-key-env: the environment variable OPENAI_API_KEY is not set, so the api teacher has no key for {server.url}; "
        "export OPENAI_API_KEY=<the endpoint's key>, or pass --api-key-env none for a server that needs no key (a local vLLM server)"
    ]
    assert server.requests == []  # checked here, not discovered at the first request
    assert snapshot(trait) == before  # no partial file, no appended rows


def test_a_refused_key_stops_after_one_models_request_and_writes_nothing(trait, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    before = snapshot(trait)
    with FakeJudgeServer(refuse=True) as server:
        code, out, err = run_cli_split(generate(trait, server.url), monkeypatch, capsys)
    assert code == 2, out + err
    [line] = err.splitlines()
    assert line.startswith(f"error: --base-url {server.url}: the server refused the key in OPENAI_API_KEY (HTTP 401: ")
    assert {(method, path) for method, path, _ in server.requests} == {("GET", "/v1/models")}  # no chat request
    assert snapshot(trait) == before


def test_with_the_key_set_the_check_passes_and_the_teacher_is_asked(trait, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeJudgeServer() as server:
        code, out, err = run_cli_split(generate(trait, server.url), monkeypatch, capsys)
    assert code == 0, out + err
    assert server.requests[0][:2] == ("GET", "/v1/models")  # the check, first
    assert server.chat_requests() == 2  # then the work
    assert server.authorizations() == {f"Bearer {KEY}"}


def test_api_key_env_names_the_variable_and_none_sends_no_key(trait, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("TEACHER_KEY", KEY)
    with FakeJudgeServer() as server:
        code, out, err = run_cli_split(generate(trait, server.url, "--api-key-env", "TEACHER_KEY"), monkeypatch, capsys)
    assert code == 0, out + err
    assert server.authorizations() == {f"Bearer {KEY}"}

    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # the default variable holds a key; none must not send it
    with FakeJudgeServer() as server:
        code, out, err = run_cli_split(generate(trait, server.url, "--api-key-env", "none", "--seed", "1"), monkeypatch, capsys)
    assert code == 0, out + err
    assert server.chat_requests() == 2
    assert server.authorizations() == {"Bearer EMPTY"}
