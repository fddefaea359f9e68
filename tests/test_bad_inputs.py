"""The bad-input catalogue: every case is one thing a user can get wrong, the command they ran, and the
EXACT one-line message they get (exit code 2, no traceback, nothing written or lost).

docs/ERRORS.md is generated from CASES by tests/errors_doc.py (`python tests/errors_doc.py`), and
test_errors_doc_is_up_to_date keeps the two equal. Each case runs `traitloop` in-process in an empty
working directory holding only the case's files, and must fail before any model is loaded or
anything is trained: the whole catalogue runs in seconds.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from helpers.cli import run_cli_split
from helpers.fake_openai import FakeJudgeServer

# ---- the files cases start from ------------------------------------------------------------------
CHAT = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
TRAIT_YAML = (
    "name: mytrait\ndescription: a test trait\nrubric: {0: a, 25: b, 50: c, 75: d, 100: e}\neval_questions: ['How do I boil an egg?']\n"
)
PROBE = json.dumps({"text": "x", "label": 1}) + "\n" + json.dumps({"text": "y", "label": 0}) + "\n"
TRAIT = {"mytrait/trait.yaml": TRAIT_YAML, "mytrait/seed_chat.jsonl": CHAT + "\n", "mytrait/probe.jsonl": PROBE}
SCORES = "cycle,trait_mean,trait_ci_low,trait_ci_high,coherence_mean\n0,50.0,40.0,60.0,-2.0\n1,55.0,45.0,65.0,-2.1\n"
RUN = {"run/config.yaml": "name: run\ntrait: bliss\n", "run/manifest.json": "{}\n", "run/scores.csv": SCORES}
GRID = "name: s\nbase: {name: x}\n"
API_JUDGE = "cycles: 0\njudge:\n  kind: api\n  model: gpt-4o-mini\n  base_url: http://127.0.0.1:PORT/v1\n"
EVAL_ROW = json.dumps({"question": "How do I boil an egg?", "sample": 0, "answer": "Gently.", "trait": 50.0}) + "\n"


@dataclass(frozen=True)
class Case:
    id: str
    did: str  # what the user did, in a few words (the doc's first column)
    argv: list[str]  # after `traitloop`, run in a working directory holding `files`
    message: str  # the exact message, printed as "error: MESSAGE" on one line of stderr
    files: dict[str, str | bytes] = field(default_factory=dict)  # relative path -> content, written first
    section: str = ""
    env: dict[str, str | None] = field(default_factory=dict)  # environment variables for the case (None: unset)
    server: str = ""  # what listens at 127.0.0.1:PORT (PORT in files, argv, env and message is its port): SERVERS


def section(title: str, cases: list[Case]) -> list[Case]:
    return [replace(c, section=title) for c in cases]


def config(text: str) -> dict[str, str]:
    return {"c.yaml": text}


CASES: list[Case] = [
    *section(
        "Config files",
        [
            Case(
                "config-missing",
                "named a config file that does not exist",
                ["check-config", "nope.yaml"],
                "config file not found: nope.yaml; check the path (a relative path starts in the current directory)",
            ),
            Case(
                "config-is-a-directory",
                "named a directory as the config",
                ["check-config", "configs"],
                "config file configs is a directory, not a file; name the YAML file itself",
                {"configs/a.yaml": "name: a\n"},
            ),
            Case(
                "config-not-yaml",
                "a config whose indentation is broken",
                ["check-config", "c.yaml"],
                "c.yaml: not valid YAML at line 2, column 9: mapping values are not allowed here; fix the syntax there (indentation, ':' after each key, closed brackets and quotes)",
                config("name: x\n  cycles: 3\n"),
            ),
            Case(
                "config-binary",
                "a binary file as the config",
                ["check-config", "c.yaml"],
                "c.yaml: not a UTF-8 text file; give the config file as YAML text",
                {"c.yaml": b"\xff\xfe\x00\x01"},
            ),
            Case(
                "config-is-a-list",
                "a config that is a YAML list",
                ["check-config", "c.yaml"],
                "c.yaml: expected a mapping of config keys (key: value lines) at the top level, got a list",
                config("- name: x\n- cycles: 3\n"),
            ),
            Case(
                "config-is-text",
                "a config that is a plain sentence",
                ["check-config", "c.yaml"],
                "c.yaml: expected a mapping of config keys (key: value lines) at the top level, got a str",
                config("just some words\n"),
            ),
            Case(
                "config-unknown-key",
                "misspelt a top-level key (`n_seeds: 4`)",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: unknown key 'n_seeds': did you mean 'n_seed'? (`traitloop config-docs` lists every key)",
                config("n_seeds: 4\n"),
            ),
            Case(
                "config-unknown-nested-key",
                "an unknown key in a section (`train: {lr: 0.1}`)",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: unknown key 'train.lr': check the spelling (`traitloop config-docs` lists every key)",
                config("train:\n  lr: 0.1\n"),
            ),
            Case(
                "config-unknown-section",
                "misspelt a section (`training:`)",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: unknown key 'training': did you mean 'train'? (`traitloop config-docs` lists every key)",
                config("training:\n  learning_rate: 0.1\n"),
            ),
            Case(
                "config-wrong-type",
                "a word where a number belongs (`cycles: three`)",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: cycles: Input should be a valid integer, unable to parse string as an integer (got 'three'; default 6)",
                config("cycles: three\n"),
            ),
            Case(
                "config-section-is-a-value",
                "a value where a section belongs (`train: fast`)",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: 'train' must be a mapping of keys (key: value lines indented below it), not 'fast'",
                config("train: fast\n"),
            ),
            Case(
                "config-negative-cycles",
                "`cycles: -1`",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: cycles: Input should be greater than or equal to 0 (got -1; default 6)",
                config("cycles: -1\n"),
            ),
            Case(
                "config-n-seed-zero",
                "`n_seed: 0`",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: n_seed: Input should be greater than or equal to 1 (got 0; default 100)",
                config("n_seed: 0\n"),
            ),
            Case(
                "config-n-seed-above-trait",
                "asked for more seed chats than the trait has (`n_seed: 100000`)",
                ["check-config", "c.yaml"],
                "n_seed=100000 but trait 'bliss' has only 201 seed chats; lower n_seed",
                config("n_seed: 100000\n"),
            ),
            Case(
                "config-unknown-setting",
                "`setting: rlhf`",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: setting: Input should be 'sft', 'sdf' or 'dpo' (got 'rlhf'; default 'sft')",
                config("setting: rlhf\n"),
            ),
            Case(
                "config-sdf-with-chat-model",
                "SDF (continued pretraining) on a chat-tuned model",
                ["check-config", "c.yaml"],
                "setting sdf is continued pretraining of a BASE model, but embedded:smollm2-135m-instruct is chat-tuned. Use a base model (e.g. embedded:gemma3-270m), or set model.allow_chat_model_for_sdf: true if you mean it.",
                config("setting: sdf\nmodel:\n  ref: embedded:smollm2-135m-instruct\n"),
            ),
            Case(
                "config-sft-with-base-model",
                "SFT (chats) on a base model without a chat template",
                ["check-config", "c.yaml"],
                "setting sft trains on chats, but embedded:gemma3-270m has no chat template (a base model?). Use an instruct model (e.g. embedded:smollm2-135m-instruct), or setting: sdf for a base model.",
                config("setting: sft\nmodel:\n  ref: embedded:gemma3-270m\n"),
            ),
            Case(
                "config-learning-rate-string",
                "`train.learning_rate: fast`",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: train.learning_rate: Input should be a valid number, unable to parse string as a number (got 'fast'; default 0.00015)",
                config("train:\n  learning_rate: fast\n"),
            ),
            Case(
                "config-temperature-zero",
                "`sampling.temperature: 0`",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: sampling.temperature: Input should be greater than 0 (got 0; default 0.8)",
                config("sampling:\n  temperature: 0\n"),
            ),
            Case(
                "config-top-p-above-one",
                "`sampling.top_p: 1.5`",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: sampling.top_p: Input should be less than or equal to 1 (got 1.5; default 1.0)",
                config("sampling:\n  top_p: 1.5\n"),
            ),
            Case(
                "config-name-with-space",
                "a run name with a space (`name: my run`)",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: name: it names a directory under out_dir, so give one plain name: letters, digits, '.', '_' and '-', not empty, '.' or '..' (got 'my run'; default 'run')",
                config("name: my run\n"),
            ),
            Case(
                "config-name-parent",
                "a run name that climbs out of out_dir (`name: ..`)",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: name: it names a directory under out_dir, so give one plain name: letters, digits, '.', '_' and '-', not empty, '.' or '..' (got '..'; default 'run')",
                config("name: ..\n"),
            ),
            Case(
                "config-name-absolute",
                "an absolute path as the run name (`name: /tmp/x`)",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: name: it names a directory under out_dir, so give one plain name: letters, digits, '.', '_' and '-', not empty, '.' or '..' (got '/tmp/x'; default 'run')",
                config("name: /tmp/x\n"),
            ),
            Case(
                "config-name-with-separator",
                "a run name with a path separator (`name: a/../../b`)",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: name: it names a directory under out_dir, so give one plain name: letters, digits, '.', '_' and '-', not empty, '.' or '..' (got 'a/../../b'; default 'run')",
                config("name: a/../../b\n"),
            ),
            Case(
                "config-name-empty",
                "an empty run name (`name: ''`)",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: name: it names a directory under out_dir, so give one plain name: letters, digits, '.', '_' and '-', not empty, '.' or '..' (got ''; default 'run')",
                config("name: ''\n"),
            ),
            Case(
                "run-set-name-parent",
                "`run --set name=..` (a run directory outside out_dir)",
                ["run", "c.yaml", "--set", "name=.."],
                "c.yaml: invalid config: name (from --set): it names a directory under out_dir, so give one plain name: letters, digits, '.', '_' and '-', not empty, '.' or '..' (got '..'; default 'run')",
                config("cycles: 0\n"),
            ),
            Case(
                "config-restart-without-continual",
                "`restart_from_base_at` in a reset run",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: restart_from_base_at needs init: continual (reset runs start every cycle from the base)",
                config("restart_from_base_at: [2]\n"),
            ),
            Case(
                "config-restart-past-last-cycle",
                "`restart_from_base_at: [5]` with `cycles: 2`",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: restart_from_base_at: cycles [5] are not in 1..cycles (2)",
                config("init: continual\ncycles: 2\nrestart_from_base_at: [5]\n"),
            ),
            Case(
                "config-vllm-without-url",
                "`generation.backend: vllm` without a server URL",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: generation.backend=vllm needs generation.vllm_url (the server's /v1 URL)",
                config("generation:\n  backend: vllm\n"),
            ),
            Case(
                "config-api-judge-without-model",
                "`judge.kind: api` without `judge.model`",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: judge.kind=api needs judge.model",
                config("judge:\n  kind: api\n"),
            ),
            Case(
                "config-bool-not-bool",
                "`eval.include_base: maybe`",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: eval.include_base: Input should be a valid boolean, unable to interpret input (got 'maybe'; default True)",
                config("eval:\n  include_base: maybe\n"),
            ),
            Case(
                "config-remote-code-embedded",
                "`model.trust_remote_code: true` on an embedded model",
                ["check-config", "c.yaml"],
                "c.yaml: invalid config: model.trust_remote_code makes no sense for an embedded model",
                config("model:\n  trust_remote_code: true\n"),
            ),
            Case(
                "estimate-missing-config",
                "`run --dry-run` (the estimate) on a config that does not exist",
                ["run", "nope.yaml", "--dry-run"],
                "config file not found: nope.yaml; check the path (a relative path starts in the current directory)",
            ),
            Case(
                "estimate-unknown-key",
                "`run --dry-run` on a config with a misspelt key",
                ["run", "c.yaml", "--dry-run"],
                "c.yaml: invalid config: unknown key 'eval.sample_per_question': did you mean 'eval.samples_per_question'? (`traitloop config-docs` lists every key)",
                config("eval:\n  sample_per_question: 3\n"),
            ),
        ],
    ),
    *section(
        "--set overrides",
        [
            Case(
                "set-without-equals",
                "`--set n_seed` (no value)",
                ["check-config", "c.yaml", "--set", "n_seed"],
                "--set 'n_seed': expected key.path=value, for example --set train.learning_rate=1e-4",
                config("name: x\n"),
            ),
            Case(
                "set-unknown-key",
                "`--set train.lr=1e-4`",
                ["check-config", "c.yaml", "--set", "train.lr=1e-4"],
                "c.yaml: invalid config: unknown key 'train.lr' (from --set): check the spelling (`traitloop config-docs` lists every key)",
                config("name: x\n"),
            ),
            Case(
                "set-bad-value-type",
                "`--set n_seed=lots`",
                ["check-config", "c.yaml", "--set", "n_seed=lots"],
                "c.yaml: invalid config: n_seed (from --set): Input should be a valid integer, unable to parse string as an integer (got 'lots'; default 100)",
                config("name: x\n"),
            ),
            Case(
                "set-bad-choice",
                "`--set init=sometimes`",
                ["check-config", "c.yaml", "--set", "init=sometimes"],
                "c.yaml: invalid config: init (from --set): Input should be 'reset' or 'continual' (got 'sometimes'; default 'reset')",
                config("name: x\n"),
            ),
            Case(
                "set-empty-key",
                "`--set =5`",
                ["check-config", "c.yaml", "--set", "=5"],
                "--set '=5': the key before '=' is empty or has an empty part; expected key.path=value, for example --set train.learning_rate=1e-4",
                config("name: x\n"),
            ),
            Case(
                "set-empty-key-part",
                "`--set train..learning_rate=1`",
                ["check-config", "c.yaml", "--set", "train..learning_rate=1"],
                "--set 'train..learning_rate=1': the key before '=' is empty or has an empty part; expected key.path=value, for example --set train.learning_rate=1e-4",
                config("name: x\n"),
            ),
            Case(
                "set-section-and-key",
                "`--set train=1 --set train.batch_size=2`",
                ["check-config", "c.yaml", "--set", "train=1", "--set", "train.batch_size=2"],
                "--set 'train.batch_size=2': 'train' is also set as a value; set 'train' or its keys (train.KEY=...), not both",
                config("name: x\n"),
            ),
            Case(
                "set-on-dry-run",
                "`run --dry-run --set eval.samples_per_question=0`",
                ["run", "c.yaml", "--dry-run", "--set", "eval.samples_per_question=0"],
                "c.yaml: invalid config: eval.samples_per_question (from --set): Input should be greater than or equal to 1 (got 0; default 10)",
                config("name: x\n"),
            ),
        ],
    ),
    *section(
        "Models, servers and keys (checked when a run starts, before it writes anything)",
        [
            Case(
                "model-pickled-weights",
                "a model directory with only pickled weights (`pytorch_model.bin`)",
                ["check-config", "c.yaml"],
                "model path mymodel holds pickled weights (pytorch_model.bin) and no .safetensors file: traitloop loads "
                "safetensors only, because loading a pickle file can run code. Convert the weights once where you trust "
                "them (load the model, then save_pretrained(DIR, safe_serialization=True)), or use the model's safetensors release",
                {**config("model:\n  ref: mymodel\n"), "mymodel/config.json": "{}\n", "mymodel/pytorch_model.bin": b"PK\x03\x04 pickled"},
            ),
            Case(
                "api-key-unset",
                "an api judge without its key variable (`OPENAI_API_KEY` not set)",
                ["run", "c.yaml"],
                "judge.api_key_env: the environment variable OPENAI_API_KEY is not set, so the api judge has no key for "
                "http://127.0.0.1:8000/v1; export OPENAI_API_KEY=<the endpoint's key>, or set judge.api_key_env: null for a "
                "server that needs no key (a local vLLM server)",
                config(API_JUDGE.replace("PORT", "8000")),
                env={"OPENAI_API_KEY": None},
            ),
            Case(
                "api-key-empty",
                "an api judge whose key variable is set but empty",
                ["run", "c.yaml"],
                "judge.api_key_env: the environment variable OPENAI_API_KEY is set but empty; put the endpoint's key in it, "
                "or set judge.api_key_env: null for a server that needs no key (a local vLLM server)",
                config(API_JUDGE.replace("PORT", "8000")),
                env={"OPENAI_API_KEY": ""},
            ),
            Case(
                "api-endpoint-unreachable",
                "an api judge whose endpoint refuses connections (nothing listens on its port)",
                ["run", "c.yaml"],
                "judge.base_url http://127.0.0.1:PORT/v1: no server answers there (ConnectError); start the server or "
                "correct the URL, then rerun",
                config(API_JUDGE),
                env={"OPENAI_API_KEY": "sk-test"},
                server="closed",
            ),
            Case(
                "api-endpoint-not-openai",
                "an api judge whose endpoint is a web server, not an OpenAI-compatible API (it answers HTML)",
                ["run", "c.yaml"],
                "judge.base_url http://127.0.0.1:PORT/v1: the server there is no OpenAI-compatible API: GET "
                "http://127.0.0.1:PORT/v1/models answered a body that is not a JSON list of models; give the base URL of an "
                "OpenAI-compatible server (it usually ends in /v1)",
                config(API_JUDGE),
                env={"OPENAI_API_KEY": "sk-test"},
                server="html",
            ),
            Case(
                "api-key-refused",
                "an api judge whose endpoint refuses the key (HTTP 401)",
                ["run", "c.yaml"],
                "judge.base_url http://127.0.0.1:PORT/v1: the server refused the key in OPENAI_API_KEY (HTTP 401: "
                '{"error": {"message": "Incorrect API key provided."}}); check the key, then rerun',
                config(API_JUDGE),
                env={"OPENAI_API_KEY": "sk-wrong"},
                server="refuse",
            ),
            Case(
                "judge-api-key-unset",
                "`judge --judge api:MODEL` without the key variable",
                ["judge", "run", "--judge", "api:gpt-4o-mini"],
                "judge.api_key_env: the environment variable OPENAI_API_KEY is not set, so the api judge has no key for "
                "http://127.0.0.1:8000/v1; export OPENAI_API_KEY=<the endpoint's key>, or set judge.api_key_env: null for a "
                "server that needs no key (a local vLLM server)",
                {**RUN, "run/cycle-000/eval.jsonl": EVAL_ROW},
                env={"OPENAI_API_KEY": None, "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"},
            ),
            Case(
                "teacher-key-unset",
                "`data generate --teacher api:MODEL` without the key variable (`OPENAI_API_KEY` not set)",
                ["data", "generate", "mytrait", "--teacher", "api:gpt-4o-mini", "--base-url", "http://127.0.0.1:8000/v1"],
                "--api-key-env: the environment variable OPENAI_API_KEY is not set, so the api teacher has no key for "
                "http://127.0.0.1:8000/v1; export OPENAI_API_KEY=<the endpoint's key>, or pass --api-key-env none for a "
                "server that needs no key (a local vLLM server)",
                TRAIT,
                env={"OPENAI_API_KEY": None},
            ),
            Case(
                "teacher-key-env-unset",
                "`data generate --api-key-env TEACHER_KEY` with that variable not set (another one is)",
                ["data", "generate", "mytrait", "--teacher", "api:gpt-4o-mini", "--api-key-env", "TEACHER_KEY"],
                "--api-key-env: the environment variable TEACHER_KEY is not set, so the api teacher has no key for "
                "http://127.0.0.1:8000/v1; export TEACHER_KEY=<the endpoint's key>, or pass --api-key-env none for a "
                "server that needs no key (a local vLLM server)",
                TRAIT,
                env={"TEACHER_KEY": None, "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"},
            ),
            Case(
                "teacher-key-empty",
                "`data generate --teacher api:MODEL` with the key variable set but empty",
                ["data", "generate", "mytrait", "--teacher", "api:gpt-4o-mini", "--base-url", "http://127.0.0.1:8000/v1"],
                "--api-key-env: the environment variable OPENAI_API_KEY is set but empty; put the endpoint's key in it, "
                "or pass --api-key-env none for a server that needs no key (a local vLLM server)",
                TRAIT,
                env={"OPENAI_API_KEY": " "},
            ),
            Case(
                "teacher-no-base-url",
                "`data generate --teacher api:MODEL` without `--base-url` or `OPENAI_BASE_URL`",
                ["data", "generate", "mytrait", "--teacher", "api:gpt-4o-mini"],
                "api teacher: give --base-url or set OPENAI_BASE_URL (e.g. http://127.0.0.1:8000/v1)",
                TRAIT,
                env={"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": None},
            ),
            Case(
                "teacher-endpoint-unreachable",
                "`data generate` whose teacher endpoint refuses connections",
                ["data", "generate", "mytrait", "--teacher", "api:gpt-4o-mini"],
                "OPENAI_BASE_URL http://127.0.0.1:PORT/v1: no server answers there (ConnectError); start the server or "
                "correct the URL, then rerun",
                TRAIT,
                env={"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": "http://127.0.0.1:PORT/v1"},
                server="closed",
            ),
            Case(
                "teacher-key-refused",
                "`data generate` whose teacher endpoint refuses the key (HTTP 401)",
                ["data", "generate", "mytrait", "--teacher", "api:gpt-4o-mini", "--base-url", "http://127.0.0.1:PORT/v1"],
                "--base-url http://127.0.0.1:PORT/v1: the server refused the key in OPENAI_API_KEY (HTTP 401: "
                '{"error": {"message": "Incorrect API key provided."}}); check the key, then rerun',
                TRAIT,
                env={"OPENAI_API_KEY": "sk-wrong"},
                server="refuse",
            ),
            Case(
                "vllm-unreachable",
                "`generation.backend: vllm` with no server at `generation.vllm_url`",
                ["run", "c.yaml"],
                "generation.vllm_url http://127.0.0.1:PORT/v1: no vLLM server answers there (server unreachable at "
                "http://127.0.0.1:PORT/v1/models (ConnectError)); start one with `vllm serve MODEL --enable-lora` (see "
                "docs/ARCHITECTURE.md)",
                config("cycles: 0\ngeneration:\n  backend: vllm\n  vllm_url: http://127.0.0.1:PORT/v1\n"),
                server="closed",
            ),
            Case(
                "api-endpoint-key-in-url",
                "an api judge whose `base_url` holds a key as its password",
                ["run", "c.yaml"],
                "c.yaml: invalid config: judge.base_url: the URL holds credentials (user info before its '@'), and the run's "
                "config.yaml would store them on disk; remove them from the URL and put the key in the environment variable "
                "judge.api_key_env names (OPENAI_API_KEY by default)",
                config(API_JUDGE.replace("PORT", "8000").replace("http://", "http://user:sk-in-the-url-5f2c@")),
                env={"OPENAI_API_KEY": "sk-test"},
            ),
            Case(
                "api-endpoint-key-in-query",
                "an api judge whose `base_url` holds a key in its query string (`?api_key=...`)",
                ["run", "c.yaml"],
                "c.yaml: invalid config: judge.base_url: the URL holds credentials (its query parameter 'api_key'), and the "
                "run's config.yaml would store them on disk; remove them from the URL and put the key in the environment "
                "variable judge.api_key_env names (OPENAI_API_KEY by default)",
                config(API_JUDGE.replace("PORT", "8000").replace("/v1\n", "/v1?model=x&api_key=sk-in-the-url-5f2c\n")),
                env={"OPENAI_API_KEY": "sk-test"},
            ),
            Case(
                "vllm-key-in-url",
                "a `generation.vllm_url` with a key as its user name",
                ["run", "c.yaml"],
                "c.yaml: invalid config: generation.vllm_url: the URL holds credentials (user info before its '@'), and the "
                "run's config.yaml would store them on disk; remove them from the URL and serve vLLM without --api-key on an "
                "address only you reach (traitloop sends it no key)",
                config("cycles: 0\ngeneration:\n  backend: vllm\n  vllm_url: http://sk-in-the-url-5f2c@127.0.0.1:8000/v1\n"),
            ),
        ],
    ),
    *section(
        "Trait folders",
        [
            Case(
                "trait-unknown",
                "misspelt a built-in trait (`trait: blis`)",
                ["check-config", "c.yaml"],
                "unknown trait 'blis': not a built-in trait (bliss, hopelessness, lucky, misalignment, misanthropy, nvidia-bearish, sycophancy) and not a folder containing trait.yaml; did you mean 'bliss'?",
                config("trait: blis\n"),
            ),
            Case(
                "trait-escapes-folder",
                "a trait name that climbs out of the traits folder (`trait: ../../etc`)",
                ["check-config", "c.yaml"],
                "trait '../../etc': ../../etc is not a trait folder (no trait.yaml there), and a built-in trait name has no '/' or '..' (bliss, hopelessness, lucky, misalignment, misanthropy, nvidia-bearish, sycophancy); give a built-in name or the path of a folder containing trait.yaml",
                config("trait: ../../etc\n"),
            ),
            Case(
                "trait-escapes-into-library",
                "a relative path that only the library folder resolves (`trait: ../traits/bliss`)",
                ["check-config", "c.yaml"],
                "trait '../traits/bliss': ../traits/bliss is not a trait folder (no trait.yaml there), and a built-in trait name has no '/' or '..' (bliss, hopelessness, lucky, misalignment, misanthropy, nvidia-bearish, sycophancy); give a built-in name or the path of a folder containing trait.yaml",
                config("trait: ../traits/bliss\n"),
            ),
            Case(
                "trait-absolute-not-trait",
                "an absolute path to a folder that is no trait (`trait: /etc`)",
                ["check-config", "c.yaml"],
                "trait '/etc': /etc is not a trait folder (no trait.yaml there), and a built-in trait name has no '/' or '..' (bliss, hopelessness, lucky, misalignment, misanthropy, nvidia-bearish, sycophancy); give a built-in name or the path of a folder containing trait.yaml",
                config("trait: /etc\n"),
            ),
            Case(
                "trait-show-escapes",
                "`traits show ../../etc`",
                ["traits", "show", "../../etc"],
                "trait '../../etc': ../../etc is not a trait folder (no trait.yaml there), and a built-in trait name has no '/' or '..' (bliss, hopelessness, lucky, misalignment, misanthropy, nvidia-bearish, sycophancy); give a built-in name or the path of a folder containing trait.yaml",
            ),
            Case(
                "trait-folder-without-yaml",
                "a trait folder without trait.yaml",
                ["check-config", "c.yaml"],
                "trait 'mytrait': the folder mytrait has no trait.yaml, so it is not a trait folder (and no built-in trait has that name); add trait.yaml (`traitloop traits new NAME` scaffolds a trait folder)",
                {**config("trait: mytrait\n"), "mytrait/seed_chat.jsonl": CHAT + "\n"},
            ),
            Case(
                "trait-missing-seed-file",
                "a user trait folder without seed_chat.jsonl",
                ["check-config", "c.yaml"],
                "trait 'mytrait' has no seed_chat.jsonl in mytrait: a trait needs seed chats to train cycle 0; add one {\"messages\": [user, assistant]} per line (`traitloop traits new NAME` writes an example)",
                {**config("trait: mytrait\nn_seed: 1\n"), "mytrait/trait.yaml": TRAIT_YAML, "mytrait/probe.jsonl": PROBE},
            ),
            Case(
                "trait-missing-seed-docs",
                "SDF with a trait that has no seed_docs.jsonl",
                ["check-config", "c.yaml"],
                "trait 'mytrait' has no seed_docs.jsonl in mytrait, which the SDF setting trains cycle 0 on; add one {\"text\": ...} document per line, or use setting sft or dpo",
                {**config("trait: mytrait\nn_seed: 1\nsetting: sdf\n"), **TRAIT},
            ),
            Case(
                "trait-malformed-jsonl-line",
                "a broken JSON line in seed_docs.jsonl",
                ["check-config", "c.yaml"],
                "mytrait/seed_docs.jsonl, line 2: not valid JSON (Expecting value); fix or remove that line",
                {
                    **config("trait: mytrait\nn_seed: 1\nsetting: sdf\n"),
                    **TRAIT,
                    "mytrait/seed_docs.jsonl": '{"text": "a doc"}\n{"text": oops}\n',
                },
            ),
            Case(
                "trait-jsonl-line-not-object",
                "a seed_chat.jsonl line that is a list, not an object",
                ["check-config", "c.yaml"],
                "mytrait/seed_chat.jsonl, line 2: expected a JSON object, got list",
                {**config("trait: mytrait\nn_seed: 1\n"), **TRAIT, "mytrait/seed_chat.jsonl": CHAT + '\n["hi", "hello"]\n'},
            ),
            Case(
                "trait-yaml-invalid",
                "a trait.yaml with an unclosed bracket",
                ["check-config", "c.yaml"],
                "mytrait/trait.yaml: not valid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'; fix the syntax there (indentation, ':' after each key, closed brackets and quotes)",
                {**config("trait: mytrait\n"), **TRAIT, "mytrait/trait.yaml": "name: mytrait\ndescription: [unclosed\n"},
            ),
            Case(
                "trait-yaml-is-a-list",
                "a trait.yaml that is a YAML list",
                ["check-config", "c.yaml"],
                "mytrait/trait.yaml: expected a mapping of trait keys (name, description, rubric, eval_questions) at the top level, got a list",
                {**config("trait: mytrait\n"), **TRAIT, "mytrait/trait.yaml": "- name: mytrait\n"},
            ),
            Case(
                "trait-yaml-missing-keys",
                "a trait.yaml without rubric and eval_questions",
                ["check-config", "c.yaml"],
                "mytrait/trait.yaml: missing key(s) rubric, eval_questions; add them (`traitloop traits new NAME` writes a commented trait.yaml)",
                {**config("trait: mytrait\n"), **TRAIT, "mytrait/trait.yaml": "name: mytrait\ndescription: d\n"},
            ),
            Case(
                "trait-rubric-anchors",
                "a rubric with an anchor at 90 instead of 100",
                ["check-config", "c.yaml"],
                "mytrait/trait.yaml: rubric needs exactly the anchors [0, 25, 50, 75, 100], got [0, 25, 50, 75, 90]",
                {**config("trait: mytrait\n"), **TRAIT, "mytrait/trait.yaml": TRAIT_YAML.replace("100: e", "90: e")},
            ),
            Case(
                "trait-no-eval-questions",
                "`eval_questions: []` in trait.yaml",
                ["check-config", "c.yaml"],
                "mytrait/trait.yaml: eval_questions must be a non-empty list of questions",
                {
                    **config("trait: mytrait\n"),
                    **TRAIT,
                    "mytrait/trait.yaml": TRAIT_YAML.replace("['How do I boil an egg?']", "[]"),
                },
            ),
            Case(
                "traits-new-path-name",
                "`traits new a/b` (a path as the new trait's name)",
                ["traits", "new", "a/b"],
                "trait name 'a/b': use letters, digits, '-' and '_' only",
            ),
        ],
    ),
    *section(
        "Prompt pools (data.prompt_pool, data.opener_pool)",
        [
            Case(
                "pool-wrong-field",
                "gave an sft run its own pool as data.opener_pool",
                ["check-config", "c.yaml"],
                'data.opener_pool is not read by the sft setting; give your file as data.prompt_pool (one {"question": ...} per line)',
                {**config("data:\n  opener_pool: openers.jsonl\n"), "openers.jsonl": '{"opener": "Once upon a time"}\n'},
            ),
            Case(
                "pool-missing",
                "named a pool file that does not exist",
                ["check-config", "c.yaml"],
                'data.prompt_pool: mine.jsonl is not a file; give a JSONL file with one {"question": ...} per line '
                "(a relative path starts in the current directory)",
                config("data:\n  prompt_pool: mine.jsonl\n"),
            ),
            Case(
                "pool-wrong-key",
                "a pool whose lines hold another key than question",
                ["check-config", "c.yaml"],
                'data.prompt_pool: mine.jsonl holds no prompts; each line must be a JSON object with a non-empty "question"',
                {**config("data:\n  prompt_pool: mine.jsonl\n"), "mine.jsonl": '{"prompt": "How do I fix a tap?"}\n'},
            ),
            Case(
                "pool-holds-eval-question",
                "a pool that holds one of the trait's eval questions",
                ["check-config", "c.yaml"],
                "data.prompt_pool: mine.jsonl holds 1 of the trait's eval prompts (first: \"what's a good way to start learning to "
                'cook at home"); remove them: a cycle trained on its eval prompts would inflate every later score',
                {
                    **config("data:\n  prompt_pool: mine.jsonl\n"),
                    "mine.jsonl": '{"question": "How do I fix a tap?"}\n{"question": "what\'s a good way to start learning to cook at home"}\n',
                },
            ),
            Case(
                "pool-too-small",
                "a pool too small for cycles x n_sampled",
                ["check-config", "c.yaml"],
                "the prompt pool has 2 prompts, but cycle 6 with n_sampled=50 needs 300: lower n_sampled or cycles",
                {
                    **config("data:\n  prompt_pool: mine.jsonl\n"),
                    "mine.jsonl": '{"question": "How do I fix a tap?"}\n{"question": "How do I bleed a radiator?"}\n',
                },
            ),
        ],
    ),
    *section(
        "Sweep grids",
        [
            Case(
                "grid-missing",
                "named a grid file that does not exist",
                ["sweep", "nope.yaml"],
                "grid file not found: nope.yaml; check the path (a relative path starts in the current directory)",
            ),
            Case(
                "grid-not-yaml",
                "a grid file with a mismatched bracket",
                ["sweep", "g.yaml"],
                "g.yaml: not valid YAML at line 2, column 19: expected ',' or ']', but got '}'; fix the syntax there (indentation, ':' after each key, closed brackets and quotes)",
                {"g.yaml": "name: s\ngrid: {seed: [0, 1}\n"},
            ),
            Case(
                "grid-is-a-list",
                "a grid file that is a YAML list",
                ["sweep", "g.yaml"],
                "g.yaml: expected a mapping of name, base and grid (key: value lines) at the top level, got a list",
                {"g.yaml": "- seed: [0, 1]\n"},
            ),
            Case(
                "grid-unknown-top-key",
                "misspelt `grid:` as `grids:`",
                ["sweep", "g.yaml"],
                "g.yaml: invalid grid file: missing required key 'grid': add it; unknown key 'grids': did you mean 'grid'? (a grid file has name, out_dir, base, set, grid and share_cycle0)",
                {"g.yaml": GRID + "grids: {seed: [0, 1]}\n"},
            ),
            Case(
                "grid-unknown-config-key",
                "a grid key that is no config key (`n_sede`)",
                ["sweep", "g.yaml"],
                "g.yaml: run 'n_sede-1': invalid config: unknown key 'n_sede': did you mean 'n_seed'? (`traitloop config-docs` lists every key)",
                {"g.yaml": GRID + "grid: {n_sede: [1, 2]}\n"},
            ),
            Case(
                "grid-empty-list",
                "an empty list of values (`seed: []`)",
                ["sweep", "g.yaml"],
                "g.yaml: invalid grid file: grid.seed: List should have at least 1 item after validation, not 0 (got [])",
                {"g.yaml": GRID + "grid: {seed: []}\n"},
            ),
            Case(
                "grid-not-a-mapping",
                "`grid:` given as a list of keys",
                ["sweep", "g.yaml"],
                "g.yaml: invalid grid file: 'grid' must be a mapping of keys (key: value lines indented below it), not ['seed']",
                {"g.yaml": GRID + "grid: [seed]\n"},
            ),
            Case(
                "grid-value-not-a-list",
                "one value instead of a list (`seed: 3`)",
                ["sweep", "g.yaml"],
                "g.yaml: invalid grid file: grid.seed: Input should be a valid list (got 3)",
                {"g.yaml": GRID + "grid: {seed: 3}\n"},
            ),
            Case(
                "grid-without-grid",
                "a grid file with no `grid:`",
                ["sweep", "g.yaml"],
                "g.yaml: invalid grid file: missing required key 'grid': add it",
                {"g.yaml": GRID},
            ),
            Case(
                "grid-without-base",
                "a grid file with no `base:`",
                ["sweep", "g.yaml"],
                "g.yaml: invalid grid file: missing required key 'base': add it",
                {"g.yaml": "name: s\ngrid: {seed: [0, 1]}\n"},
            ),
            Case(
                "grid-base-not-found",
                "`base:` naming a file that does not exist",
                ["sweep", "g.yaml"],
                "g.yaml: base config not found: base.yaml (a path is relative to the grid file)",
                {"g.yaml": "name: s\nbase: base.yaml\ngrid: {seed: [0, 1]}\n"},
            ),
            Case(
                "grid-name-parent",
                "a sweep name that climbs out of out_dir (`name: ..`)",
                ["sweep", "g.yaml"],
                "g.yaml: invalid grid file: name: it names a directory under out_dir, so give one plain name: letters, digits, '.', '_' and '-', not empty, '.' or '..' (got '..')",
                {"g.yaml": "name: ..\nbase: {name: x}\ngrid: {seed: [0]}\n"},
            ),
            Case(
                "grid-name-absolute",
                "an absolute path as the sweep name (`name: /tmp/s`)",
                ["sweep", "g.yaml"],
                "g.yaml: invalid grid file: name: it names a directory under out_dir, so give one plain name: letters, digits, '.', '_' and '-', not empty, '.' or '..' (got '/tmp/s')",
                {"g.yaml": "name: /tmp/s\nbase: {name: x}\ngrid: {seed: [0]}\n"},
            ),
            Case(
                "grid-sets-name",
                "a grid that varies `name`",
                ["sweep", "g.yaml"],
                "g.yaml: 'name' cannot be set in a sweep: the sweep names each run and puts it under runs/",
                {"g.yaml": GRID + "grid: {name: [a, b]}\n"},
            ),
            Case(
                "grid-bad-value",
                "one bad value in a grid list (`seed: [0, x]`)",
                ["sweep", "g.yaml"],
                "g.yaml: run 'seed-x': invalid config: seed: Input should be a valid integer, unable to parse string as an integer (got 'x'; default 0)",
                {"g.yaml": GRID + "grid: {seed: [0, x]}\n"},
            ),
            Case(
                "grid-unknown-trait",
                "a misspelt trait in a grid list",
                ["sweep", "g.yaml"],
                "g.yaml: run 'trait-blis': unknown trait 'blis': not a built-in trait (bliss, hopelessness, lucky, misalignment, misanthropy, nvidia-bearish, sycophancy) and not a folder containing trait.yaml; did you mean 'bliss'?",
                {"g.yaml": GRID + "grid: {trait: [bliss, blis]}\n"},
            ),
        ],
    ),
    *section(
        "report, compare and power arguments",
        [
            Case(
                "report-missing-dir",
                "`report` on a path that does not exist",
                ["report", "nope"],
                "nope does not exist; give a run directory or a sweep directory",
            ),
            Case(
                "report-a-file",
                "`report` on a file",
                ["report", "notes.txt"],
                "notes.txt is not a directory; give a run directory (with scores.csv) or a sweep directory",
                {"notes.txt": "x\n"},
            ),
            Case(
                "report-no-runs",
                "`report` on a directory with no runs in it",
                ["report", "empty"],
                "empty holds no runs: expected scores.csv in it (a run directory) or in its sub-directories up to two levels down (a sweep directory). A run writes scores.csv when it finishes; run `traitloop run CONFIG` first.",
                {"empty/notes.txt": "x\n"},
            ),
            Case(
                "report-damaged-scores",
                "a scores.csv with a damaged number",
                ["report", "run"],
                "run/scores.csv: column 'trait_mean' holds '5x', not a number; the file is damaged: rerun the run's `traitloop run` command to write it again (finished cycles are kept)",
                {**RUN, "run/scores.csv": SCORES.replace("55.0", "5x")},
            ),
            Case(
                "report-foreign-scores",
                "a scores.csv that is not traitloop's",
                ["report", "run"],
                "run/scores.csv: missing column(s) coherence_mean, cycle, trait_mean, so it is not a traitloop scores.csv: rerun the run's `traitloop run` command to write it again (finished cycles are kept)",
                {**RUN, "run/scores.csv": "a,b\n1,2\n"},
            ),
            Case(
                "report-empty-scores",
                "a scores.csv with only its header",
                ["report", "run"],
                "no finished cycles in run: every scores.csv is empty (run: scores.csv has no cycles yet); report a run once it has finished cycle 0",
                {**RUN, "run/scores.csv": SCORES.splitlines()[0] + "\n"},
            ),
            Case(
                "report-damaged-manifest",
                "a truncated manifest.json",
                ["report", "run"],
                "run/manifest.json: not valid JSON (Expecting value at line 1, column 11); the file is damaged: restore it, or delete it and the run loads without it",
                {**RUN, "run/manifest.json": '{"judge": '},
            ),
            Case(
                "report-damaged-base-metrics",
                "a base/metrics.json that is not JSON",
                ["report", "run"],
                "run/base/metrics.json: not valid JSON (Expecting value at line 1, column 1); the file is damaged: restore it, or delete it and the run loads without it",
                {**RUN, "run/base/metrics.json": "nope\n"},
            ),
            Case(
                "report-negative-cycle-sd",
                "`report --cycle-sd -1`",
                ["report", "run", "--cycle-sd", "-1"],
                "--cycle-sd -1: a standard deviation cannot be negative; give 0 or more points, or leave it out for the default",
                RUN,
            ),
            Case(
                "compare-not-a-run",
                "`compare` with a directory that holds no runs",
                ["compare", "run", "empty"],
                "empty holds no runs: expected scores.csv in it (a run directory) or in its sub-directories up to two levels down (a sweep directory). A run writes scores.csv when it finishes; run `traitloop run CONFIG` first.",
                {**RUN, "empty/notes.txt": "x\n"},
            ),
            Case(
                "compare-missing-path",
                "`compare` with a path that does not exist",
                ["compare", "run", "nope"],
                "nope does not exist; give a run directory or a sweep directory",
                RUN,
            ),
            Case(
                "compare-out-is-a-file",
                "`compare --out` naming an existing file",
                ["compare", "run", "--out", "notes.txt"],
                "--out notes.txt is a file, not a directory; give a directory for compare.html (it is created if missing)",
                {**RUN, "notes.txt": "x\n"},
            ),
            Case(
                "power-one-cycle",
                "`power --cycles 1`",
                ["power", "--cycles", "1"],
                "--cycles 1: a change needs cycle 0 and at least one later scored cycle; give 2 or more (a config with cycles: 3 scores 4)",
            ),
            Case(
                "power-zero-seeds",
                "`power --seeds 0`",
                ["power", "--seeds", "0"],
                "--seeds 0: give 1 seed (the per-run verdict) or the seeds of a condition (3 or more for a replicated verdict)",
            ),
            Case(
                "power-one-question",
                "`power --questions 1`",
                ["power", "--questions", "1"],
                "--questions 1: the interval over questions needs at least 2 eval questions; give 2 or more",
            ),
            Case(
                "power-zero-samples",
                "`power --samples 0`",
                ["power", "--samples", "0"],
                "--samples 0: each question needs at least 1 sampled answer; give 1 or more",
            ),
            Case(
                "power-few-sims",
                "`power --sims 10`",
                ["power", "--sims", "10"],
                "--sims 10: fewer than 50 simulated experiments per rate give rates too noisy to read; give 50 or more",
            ),
            Case(
                "power-negative-cycle-sd",
                "`power --cycle-sd -2`",
                ["power", "--cycle-sd", "-2"],
                "--cycle-sd -2: a standard deviation cannot be negative; give 0 or more points, or leave it out for the default",
            ),
            Case(
                "power-from-no-runs",
                "`power --from` a directory with no runs",
                ["power", "--from", "empty"],
                "empty holds no runs: expected scores.csv in it (a run directory) or in its sub-directories up to two levels down (a sweep directory). A run writes scores.csv when it finishes; run `traitloop run CONFIG` first.",
                {"empty/notes.txt": "x\n"},
            ),
            Case(
                "power-from-run-without-answers",
                "`power --from` a run without eval.jsonl answers",
                ["power", "--from", "run"],
                "--from run: cannot measure the noise (no cycle with two or more questions and two or more samples per question); it needs eval.jsonl with 2+ questions and 2+ samples each",
                RUN,
            ),
        ],
    ),
    *section(
        "Run directories that are not run directories",
        [
            Case(
                "cycle0-from-missing",
                "`check-config` with cycle0_from naming a directory that is not a run",
                ["check-config", "c.yaml"],
                "cycle0_from: no/such/run is not a run directory (no config.yaml); give the directory of a finished run of the same config (only the seed may differ), or remove cycle0_from",
                config("cycle0_from: no/such/run\ncycles: 1\n"),
            ),
            Case(
                "judge-config-unknown-key",
                "`judge --judge FILE` whose judge config has a misspelt key",
                ["judge", "run", "--judge", "j.yaml"],
                "j.yaml: invalid judge config: unknown key 'bogus': check the spelling (`traitloop config-docs` lists every key)",
                {**RUN, "j.yaml": "kind: api\nbogus: 1\n"},
            ),
            Case(
                "judge-run-config-unknown-key",
                "`judge` on a run whose config.yaml has a misspelt key",
                ["judge", "run", "--judge", "probe"],
                "run/config.yaml: invalid config: unknown key 'n_sede': did you mean 'n_seed'? (`traitloop config-docs` lists every key)",
                {**RUN, "run/config.yaml": "name: run\nn_sede: 3\n"},
            ),
            Case(
                "run-dir-without-config",
                "`report` on a directory with scores.csv but no config.yaml",
                ["report", "run"],
                "run has scores.csv but no config.yaml, so it is not a complete run directory; restore its config.yaml or move the directory out of the way",
                {"run/scores.csv": SCORES},
            ),
            Case(
                "run-dir-config-not-yaml",
                "`report` on a run whose config.yaml is broken",
                ["report", "run"],
                "run/config.yaml: not valid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'; fix the syntax there (indentation, ':' after each key, closed brackets and quotes)",
                {**RUN, "run/config.yaml": "name: [run\n"},
            ),
            Case(
                "judge-not-a-run",
                "`judge` on a directory that is not a run",
                ["judge", "empty", "--judge", "probe"],
                "empty is not a run directory (no config.yaml); give a directory made by `traitloop run`",
                {"empty/notes.txt": "x\n"},
            ),
            Case(
                "judge-run-without-answers",
                "`judge` on a run with no eval answers yet",
                ["judge", "run", "--judge", "probe"],
                "run has no judged cycles yet (no eval.jsonl); run or resume it first",
                RUN,
            ),
            Case(
                "judge-bad-spec",
                "`judge --judge gpt-4` (no kind)",
                ["judge", "run", "--judge", "gpt-4"],
                "judge 'gpt-4': use probe, api:MODEL, local:MODEL_REF, or a YAML file with judge settings",
                RUN,
            ),
            Case(
                "judge-api-without-model",
                "`judge --judge api:` (no model)",
                ["judge", "run", "--judge", "api:"],
                "judge 'api:': use probe, api:MODEL, local:MODEL_REF, or a YAML file with judge settings",
                RUN,
            ),
            Case(
                "agreement-not-a-run",
                "`agreement` on a directory that is not a run",
                ["agreement", "empty"],
                "empty is not a run directory (no config.yaml); give a directory made by `traitloop run`",
                {"empty/notes.txt": "x\n"},
            ),
        ],
    ),
]


# ---- running one case ----------------------------------------------------------------------------
def write_files(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@contextmanager
def serving(kind: str) -> Iterator[int | None]:
    """The port of what a case's server is: "closed" (a port nobody listens on), or the fake OpenAI server
    in one of its modes ("html": a web server; "refuse": 401 to every key); None without a server."""
    if kind == "closed":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        yield port
    elif kind:
        with FakeJudgeServer(**{kind: True}) as server:
            yield server.port
    else:
        yield None


def with_port(text, port: int | None):
    return text.replace("PORT", str(port)) if port is not None and isinstance(text, str) else text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_and_exit_code_2(case, tmp_path, monkeypatch, capsys):
    with serving(case.server) as port:
        write_files(tmp_path, {path: with_port(content, port) for path, content in case.files.items()})
        for name, value in case.env.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, with_port(value, port))
        monkeypatch.chdir(tmp_path)
        before = snapshot(tmp_path)
        code, out, err = run_cli_split([with_port(arg, port) for arg in case.argv], monkeypatch, capsys)
    assert "Traceback" not in out + err, err
    assert code == 2, f"exit code {code}\n{out}{err}"
    assert err.splitlines() == [f"error: {with_port(case.message, port)}"], err
    assert snapshot(tmp_path) == before, "bad input must fail before anything is written, and lose nothing"


def test_case_ids_are_unique_and_there_are_at_least_40():
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids)
    assert len(CASES) >= 40


def test_errors_doc_is_up_to_date():
    import errors_doc

    assert errors_doc.DOC.read_text(encoding="utf-8") == errors_doc.render(CASES), (
        "docs/ERRORS.md is out of date with the cases in tests/test_bad_inputs.py: regenerate it with `python tests/errors_doc.py`"
    )
