"""The servers a command talks to, checked before it writes anything: a run's api judge (endpoint and
key) and vLLM generation server, `traitloop judge`'s api judge, and `traitloop data generate`'s api
teacher (`check_api`, the one check of an OpenAI-compatible endpoint and its key).

A run whose judge key is missing, or whose endpoint is down or is no OpenAI-compatible API at all, would
otherwise load the model, train a cycle and only then fail at its first judgement. Here it fails in a
second with one line (UserError, exit 2), before the run directory is touched. One GET /models per server
(the key goes in its Authorization header, as every request's does; it never appears in a message: the
client masks it, and a URL is shown through redact_url, openai_client.py).

`check-config` and `run --dry-run` do not call this: they check files, not servers (a config for a
cluster is checked on a laptop that cannot reach the cluster's endpoint).
"""

from __future__ import annotations

import os

from traitloop.config import ExperimentConfig, JudgeConfig
from traitloop.errors import UserError
from traitloop.openai_client import ApiError, OpenAIClient, redact_url

TIMEOUT_S = 30.0  # at most this long for the one request (a judge's own timeout_s when shorter)
ATTEMPTS = 2


def check_endpoints(config: ExperimentConfig, judge: bool = True) -> None:
    """The run's servers: the api judge (unless `judge` is False: the caller brings its own judge) and
    generation.backend=vllm's server. Raises UserError naming the first problem."""
    if judge and config.judge.kind == "api":
        check_api_judge(config.judge)
    if config.generation.backend == "vllm" and config.generation.vllm_url:
        check_vllm(config)


def judge_base_url(judge: JudgeConfig) -> tuple[str, str]:
    """(the api judge's base URL, the setting it came from), as the judge resolves it."""
    if judge.base_url:
        return judge.base_url, "judge.base_url"
    if os.environ.get("OPENAI_BASE_URL"):
        return os.environ["OPENAI_BASE_URL"], "OPENAI_BASE_URL"
    raise UserError("judge.kind=api needs judge.base_url or the environment variable OPENAI_BASE_URL")


def check_api_judge(judge: JudgeConfig) -> None:
    """The key variable is set and not empty (unless judge.api_key_env is null), and the endpoint answers
    GET /models as an OpenAI-compatible API and accepts the key."""
    url, where = judge_base_url(judge)
    check_api(
        url,
        where,
        judge.api_key_env,
        key_setting="judge.api_key_env",
        who="the api judge",
        no_key="set judge.api_key_env: null",
        timeout=min(judge.timeout_s, TIMEOUT_S),
    )


def check_api(url: str, where: str, key_env: str | None, *, key_setting: str, who: str, no_key: str, timeout: float = TIMEOUT_S) -> None:
    """An OpenAI-compatible endpoint that a command is about to use: the key variable `key_env` is set and not
    empty (None: the server needs no key), and `url` answers GET /models and accepts the key. `where` names
    the setting the URL came from, `key_setting` the one that names the key variable, `who` the user of the
    key ("the api judge"), and `no_key` how to say that the server needs none. Raises UserError (exit 2)
    saying what is wrong and how to fix it; the URL is shown masked (redact_url)."""
    shown = redact_url(url)
    if key_env is not None:
        if key_env not in os.environ:
            raise UserError(
                f"{key_setting}: the environment variable {key_env} is not set, so {who} has no key for {shown}; "
                f"export {key_env}=<the endpoint's key>, or {no_key} for a server that needs no key (a local vLLM server)"
            )
        if not os.environ[key_env].strip():
            raise UserError(
                f"{key_setting}: the environment variable {key_env} is set but empty; put the endpoint's key in it, "
                f"or {no_key} for a server that needs no key (a local vLLM server)"
            )
    with OpenAIClient(url, api_key_env=key_env, timeout_s=timeout, concurrency=1, max_attempts=ATTEMPTS, backoff_s=0.5) as client:
        try:
            client.run(client.models())
        except ApiError as err:
            raise UserError(f"{where} {shown}: {_problem(err, redact_url(client.url('/models')), key_env, timeout)}") from None


def _problem(err: ApiError, models_url: str, key_env: str | None, timeout: float) -> str:
    """What an ApiError on GET /models says about the endpoint, and what to do (the detail is masked)."""
    detail = " ".join(err.detail.split())[:200]
    if err.kind == "unreachable":
        return f"no server answers there ({err.cause}); start the server or correct the URL, then rerun"
    if err.kind == "timeout":
        return f"no answer within {timeout:g} s; start the server or correct the URL, then rerun"
    if err.kind == "status" and err.status in (401, 403):
        return f"the server refused the key in {key_env} (HTTP {err.status}: {detail}); check the key, then rerun"
    if err.kind == "status" and err.retryable:
        return f"the server answered HTTP {err.status} ({detail}) after {err.attempts} attempts; rerun when it answers again"
    answered = f"HTTP {err.status}" if err.kind == "status" else "a body that is not a JSON list of models"
    return (
        f"the server there is no OpenAI-compatible API: GET {models_url} answered {answered}; give the base URL of an "
        "OpenAI-compatible server (it usually ends in /v1)"
    )


def check_vllm(config: ExperimentConfig) -> None:
    """A vLLM server at generation.vllm_url lists its base model: asked as the run's Sampler asks it."""
    from traitloop.generation import vllm

    sampler = vllm.VllmSampler(config.generation.vllm_url, concurrency=config.generation.concurrency)
    try:
        sampler.base_model()
    finally:
        client = getattr(sampler, "client", None)
        if client is not None:
            client.close()
