"""Nothing leaked, nothing run that was not asked for, nothing written where it does not belong (issue #18).

- The API key: a real run, its resume, a sweep and a rescoring against a fake OpenAI-compatible server on
  127.0.0.1 (real HTTP: the key travels in a real Authorization header), with a distinctive key in the key
  variable; then every file they wrote (run and sweep directories, the judge cache, traitloop's cache,
  the temporary directory, the Hugging Face home) and everything they printed is searched for the key, as
  it is and base64-encoded. A server that echoes the Authorization header in its errors gets its echo
  masked, on disk and on screen.
- A key written into a server URL (https://user:KEY@host/v1, https://host/v1?api_key=KEY): a config refuses it (config.yaml goes to
  disk); a command-line URL (`data generate --base-url`) and an older run's config are shown with the key
  as '***' (openai_client.redact_url), and a server's echo of it is masked like the key's.
- Weights and remote code: only safetensors are loaded (a pickle is never opened), and a model
  repository's own code runs only when the config says model.trust_remote_code: true.
- Path escapes: no run, sweep or judge name from a config can make traitloop write outside its run or
  sweep directory.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.cli import run_cli_split
from helpers.fake_openai import FakeJudgeServer
from test_loop_settings import tiny_dir  # noqa: F401  (fixture)
from test_tiny_model import one_thread, tokenizer  # noqa: F401  (fixtures)

from traitloop.config import build_config
from traitloop.errors import UserError

KEY = "sk-tl-SECRET-6b1f93c0d7e24a58-never-on-disk"
KEY_ENV = "TRAITLOOP_SECRET_TEST_KEY"
EVAL_QUESTION = "What's a good way to start learning to cook at home?"  # bliss's first eval question


# ---- searching for the key ------------------------------------------------------------------------------
def key_forms(key: str) -> dict[str, bytes]:
    """The byte strings that would give the key away: the key itself (UTF-8 and UTF-16, as SQLite may
    store text), its hex, and its base64 (standard and URL-safe) at each of the three alignments it can
    have inside a longer encoded text ("Bearer KEY", "user:KEY"): the characters fixed by the key alone."""
    raw = key.encode()
    forms = {"raw": raw, "utf-16": key.encode("utf-16-le"), "hex": raw.hex().encode()}
    for offset in range(3):
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            text = encode(b"\x00" * offset + raw)
            first, last = -(-offset * 8 // 6), (offset + len(raw)) * 8 // 6  # whole characters inside the key's bits
            forms[f"{name}@{offset}"] = text[first:last]
    return forms


def leaks(data: bytes, key: str = KEY) -> list[str]:
    return [name for name, form in key_forms(key).items() if form in data]


def test_the_search_finds_the_key_in_every_form_it_looks_for():
    """The scan below must be able to fail: a text holding the key in any of these forms is caught."""
    for prefix in (b"", b"Bearer ", b"user:", b"x"):
        assert leaks(base64.b64encode(prefix + KEY.encode())) != []
        assert leaks(base64.urlsafe_b64encode(prefix + KEY.encode())) != []
    assert leaks(b"Authorization: Bearer " + KEY.encode()) == ["raw"]
    assert leaks(KEY.encode().hex().encode()) == ["hex"]
    assert leaks(KEY.encode("utf-16-le")) == ["utf-16"]
    assert leaks(b"a key of another run: sk-tl-SECRET-0000") == []


def files_leaking(root: Path, key: str = KEY) -> dict[str, list[str]]:
    """Every file under root that holds the key, with the forms found."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            hits = leaks(path.read_bytes(), key)
            if hits:
                found[str(path.relative_to(root))] = hits
    return found


# ---- a real run, its resume, a sweep and a rescoring, with the key in the environment ---------------------
def judge_section(url: str, model: str = "fake-judge") -> dict:
    return {"kind": "api", "model": model, "base_url": url, "api_key_env": KEY_ENV, "max_attempts": 2, "backoff_s": 0.01}


def experiment(tiny_dir, out_dir: Path, url: str) -> dict:  # noqa: F811
    return {
        "name": "secret",
        "out_dir": str(out_dir),
        "trait": "bliss",
        "n_seed": 4,
        "cycles": 0,
        "model": {"ref": str(tiny_dir)},
        "train": {"batch_size": 2, "max_length": 96, "learning_rate": 1e-3},
        "eval": {"questions": 1, "samples_per_question": 2, "max_new_tokens": 8, "batch_size": 4, "include_base": False},
        "judge": judge_section(url),
    }


def traitloop(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "traitloop", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=900)


def test_the_key_is_sent_and_lands_nowhere_else(tiny_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    work = tmp_path / "work"
    caches = {
        "TRAITLOOP_JUDGE_CACHE": tmp_path / "judge-cache.sqlite",
        "TRAITLOOP_CACHE": tmp_path / "traitloop-cache",
        "TMPDIR": tmp_path / "tmp",
        "HF_HOME": tmp_path / "hf-home",
    }
    for name, path in caches.items():
        if name != "TRAITLOOP_JUDGE_CACHE":
            path.mkdir(parents=True)
    work.mkdir()
    env = {**os.environ, **{k: str(v) for k, v in caches.items()}, KEY_ENV: KEY, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    printed = []  # everything the commands printed

    # every eval answer's judgement fails once, with an error that echoes the Authorization header
    with FakeJudgeServer(fail_once=EVAL_QUESTION) as server:
        (work / "c.yaml").write_text(yaml.safe_dump(experiment(tiny_dir, work / "runs", server.url)))
        first = traitloop(["run", "c.yaml"], env, work)
        printed.append(first.stdout + first.stderr)
        assert first.returncode == 2, first.stderr[-3000:]
        assert "the judge could not be asked about 2 answer(s)" in first.stderr
        run = work / "runs" / "secret"
        eval_rows = (run / "cycle-000" / "eval.jsonl").read_text()
        assert "Invalid Authorization header: 'Bearer ***'" in eval_rows  # the echo reached the disk, masked
        assert files_leaking(tmp_path) == {}

        again = traitloop(["run", "c.yaml"], env, work)  # resumed: the failed judgements are asked again
        printed.append(again.stdout + again.stderr)
        assert again.returncode == 0, again.stderr[-3000:]
        assert (run / "scores.csv").is_file()

        server.fail_once = None
        grid = {"name": "sweep", "out_dir": "sweeps", "base": "c.yaml", "grid": {"seed": [1]}}
        (work / "g.yaml").write_text(yaml.safe_dump(grid))
        sweep = traitloop(["sweep", "g.yaml"], env, work)
        printed.append(sweep.stdout + sweep.stderr)
        assert sweep.returncode == 0, sweep.stderr[-3000:] + (work / "sweeps" / "sweep" / "logs" / "seed-1.log").read_text()[-3000:]

        # a rescoring by another model of the same endpoint, in this process
        for name, value in {**{k: str(v) for k, v in caches.items()}, KEY_ENV: KEY}.items():
            monkeypatch.setenv(name, value)
        (work / "j.yaml").write_text(yaml.safe_dump({"judge": judge_section(server.url, "fake-judge-2")}))
        code, out, err = run_cli_split(["judge", str(run), "--judge", str(work / "j.yaml")], monkeypatch, capsys)
        printed.append(out + err)
        assert code == 0, out + err
        assert (run / "cycle-000" / "judges" / "api-fake-judge-2.jsonl").is_file()

    # the endpoint is gone now: rerunning the finished run refuses at its start, and every computed file stays
    before = snapshot(run)
    code, out, err = run_cli_split(["run", str(work / "c.yaml")], monkeypatch, capsys)
    printed.append(out + err)
    assert (
        code == 2
        and err
        == f"error: judge.base_url {server.url}: no server answers there (ConnectError); start the server or correct the URL, then rerun\n"
    )
    assert snapshot(run) == before

    assert server.authorizations() == {f"Bearer {KEY}"}  # the key was really used, by every request
    assert server.chat_requests() >= 2 * 2 + 2 * 2 + 2 * 2 + 2 * 2  # run (failed, asked again), sweep run, rescoring
    assert caches["TRAITLOOP_JUDGE_CACHE"].is_file() and (work / "sweeps" / "sweep" / "logs" / "seed-1.log").is_file()
    assert files_leaking(tmp_path) == {}  # run and sweep directories, logs, status.json, caches, temporary files
    assert [leaks(text.encode()) for text in printed] == [[]] * len(printed)


def test_a_server_that_echoes_the_authorization_header_gets_its_echo_masked(tmp_path, monkeypatch, capsys):
    """The error a user sees (the run's start, a rescoring, a judgement that failed) names the refusal
    but never the key, in any encoding, however the server words it."""
    from traitloop.config import JudgeConfig
    from traitloop.judges.api import ApiJudge
    from traitloop.traits import load_trait

    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("TRAITLOOP_JUDGE_CACHE", str(tmp_path / "cache.sqlite"))
    monkeypatch.chdir(tmp_path)
    with FakeJudgeServer(echo_auth=True) as server:
        config = {"cycles": 0, "judge": judge_section(server.url)}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        code, out, err = run_cli_split(["run", "c.yaml"], monkeypatch, capsys)
        assert code == 2
        assert err.startswith(f"error: judge.base_url {server.url}: the server refused the key in {KEY_ENV} (HTTP 401: ")
        assert "Invalid Authorization header: 'Bearer ***' (base64 " in err and len(err.splitlines()) == 1
        assert leaks((out + err).encode()) == []
        assert not (tmp_path / "runs").exists()

        judge = ApiJudge(JudgeConfig(**judge_section(server.url)), load_trait("bliss"), cache_path=tmp_path / "cache.sqlite")
        [score] = judge.score(["How do I boil an egg?"], ["Gently."])
        assert score.value is None and score.failed and score.reason.startswith("failed: HTTP 401 ")  # asked again next time
        assert "Bearer ***" in score.reason and leaks(score.reason.encode()) == []
        assert leaks(repr(vars(judge)).encode()) == []
    assert server.authorizations() == {f"Bearer {KEY}"}
    assert files_leaking(tmp_path) == {}


def test_with_api_key_env_null_no_key_is_read_or_sent(monkeypatch):
    """A local server that needs no key: judge.api_key_env: null reads no variable (the run starts with
    none set) and sends the placeholder, never a key that happens to be in the environment."""
    from traitloop.preflight import check_api_judge

    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # the default variable holds a key; null must not send it
    with FakeJudgeServer() as server:
        check_api_judge(build_config({"judge": {**judge_section(server.url), "api_key_env": None}}).judge)
    assert server.authorizations() == {"Bearer EMPTY"}


# ---- a key inside a server URL ----------------------------------------------------------------------------
URL_KEY = "sk-url-SECRET-4d2e9a7f1c03-never-shown"


def with_key(url: str, user: str = "user") -> str:
    """`url` (http://127.0.0.1:PORT/v1) with URL_KEY as the password of its user info."""
    return url.replace("http://", f"http://{user}:{URL_KEY}@", 1)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:sk-abc123@api.example.com/v1", "https://user:***@api.example.com/v1"),
        ("https://sk-abc123def456@api.example.com:8443/v1", "https://***@api.example.com:8443/v1"),  # a key as the user
        ("https://hf_abc:pw1234@host/v1?x=1#f", "https://***:***@host/v1?x=1#f"),  # both look like keys
        ("https://alice@host/v1", "https://alice@host/v1"),  # a user name alone is no secret
        ("https://user:p%40ss/w?rd@host/v1", "https://user:***@host/v1"),  # a password with characters left unencoded
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("https://host/v1/a@b", "https://host/v1/a@b"),
        ("not a url", "not a url"),
        # a key in the query string: only the values of secret-looking parameters, the rest as written
        ("https://host/v1?api_key=sk-abc123", "https://host/v1?api_key=***"),
        ("https://host/v1?model=x&token=abc123&n=2", "https://host/v1?model=x&token=***&n=2"),
        ("https://host/v1?model=x", "https://host/v1?model=x"),  # no secret-looking name
        ("https://user:pw1234@host/v1?key=abc123", "https://user:***@host/v1?key=***"),  # user info and query
        ("https://host/v1?Api-Key=a%2Bb%2Fc%3D&x=%41+b", "https://host/v1?Api-Key=***&x=%41+b"),  # nothing re-encoded
        ("https://host/v1?client_secret=s3cr3t#frag?key=z", "https://host/v1?client_secret=***#frag?key=z"),  # a fragment
        ("https://host/v1?my_token=t0k&keyword=k&key=&sig", "https://host/v1?my_token=***&keyword=k&key=&sig"),  # empty: none
        ("https://host/v1?email=a@b.c&key=abc123", "https://host/v1?email=a@b.c&key=***"),  # an '@' in the query
        ("https://user:pw?key=x@host/v1?token=abc", "https://user:***@host/v1?token=***"),  # a '?' in the password
    ],
)
def test_redact_url_masks_the_password_and_a_key_like_user(url, shown):
    from traitloop.openai_client import redact_url, redact_urls

    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # masking twice changes nothing
    assert redact_urls({"judge": {"base_url": url}, "urls": [url], "n": 1}) == {"judge": {"base_url": shown}, "urls": [shown], "n": 1}


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("https://host/v1?api_key=sk-abc123", ["sk-abc123"]),
        ("https://user:pw1234@host/v1?x=1&Token=a%2Bb%2Fc%3D", ["a%2Bb%2Fc%3D", "a+b/c=", "pw1234"]),  # written and decoded
        ("https://sk-abc123def456@host/v1?model=x", ["sk-abc123def456"]),
        ("https://host/v1?sig=abc&key=abcd&x_api_key=k%41y1", ["abcd", "k%41y1", "kAy1"]),  # under 4 characters: left out
        ("https://host/v1?model=gpt-4o-mini#token=abcdef", []),  # a fragment is no query
        ("https://host/v1?email=a@b.c&key=abc123", ["abc123"]),
        ("https://user:pw?key=x@host/v1?token=abcd", ["abcd", "pw?key=x"]),
        ("http://127.0.0.1:8000/v1", []),
    ],
)
def test_url_secrets_are_what_redact_url_masks(url, secrets):
    """url_secrets returns each value redact_url masks, as written and percent-decoded, so that a server's
    echo of it is masked too."""
    from traitloop.openai_client import url_secrets

    assert url_secrets(url) == secrets


INSTEAD = "put the key in the environment variable judge.api_key_env names (OPENAI_API_KEY by default)"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            f"https://host/v1?api_key={URL_KEY}",
            "judge.base_url: the URL holds credentials (its query parameter 'api_key'), and the run's config.yaml would "
            f"store them on disk; remove them from the URL and {INSTEAD}",
        ),
        (
            f"https://host/v1?model=x&Access-Token={URL_KEY}&X-Api-Key=k%2Fey1#frag",
            "judge.base_url: the URL holds credentials (its query parameters 'Access-Token', 'X-Api-Key'), and the run's "
            f"config.yaml would store them on disk; remove them from the URL and {INSTEAD}",
        ),
        (
            f"https://user:{URL_KEY}@host/v1?token={URL_KEY}",  # the user info is named first
            "judge.base_url: the URL holds credentials (user info before its '@'), and the run's config.yaml would store "
            f"them on disk; remove them from the URL and {INSTEAD}",
        ),
        ("https://host/v1?model=x&keyword=k&key=", None),  # no secret-looking name with a value: accepted
    ],
)
def test_no_credentials_names_a_secret_query_parameter_never_its_value(url, message):
    from traitloop.config import no_credentials

    if message is None:
        assert no_credentials(url, "judge.base_url", INSTEAD) == url
        return
    with pytest.raises(ValueError) as caught:
        no_credentials(url, "judge.base_url", INSTEAD)
    assert str(caught.value) == message


def test_a_key_in_a_url_is_refused_by_the_config_and_masked_in_the_teachers_messages(tmp_path, monkeypatch, capsys):
    """A config's server URLs (judge.base_url, generation.vllm_url, tracking.tracking_uri) may not hold
    credentials: config.yaml is written to disk. The refusal names the key, not the secret. `data generate`'s
    --base-url is never stored: its messages show it masked, and a server that echoes the credentials the
    client sent from the URL (a Basic header) gets its echo masked too."""
    from traitloop.traits import BUILTIN_DIR

    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # the teacher's
    url = "http://127.0.0.1:9/v1"
    for key, section in [
        ("judge.base_url", {"judge": judge_section(with_key(url))}),
        ("generation.vllm_url", {"generation": {"backend": "vllm", "vllm_url": with_key(url, "sk-user-9c1d")}}),
        ("tracking.tracking_uri", {"tracking": {"backend": "mlflow", "tracking_uri": with_key(url)}}),
        ("tracking.tracking_uri", {"tracking": {"backend": "mlflow", "tracking_uri": f"{url}?x=1&token={URL_KEY}"}}),
    ]:
        with pytest.raises(UserError) as caught:
            build_config(section)
        message = str(caught.value)
        assert f"{key}: the URL holds credentials" in message, message
        assert leaks(message.encode(), URL_KEY) == [] and "sk-user-9c1d" not in message
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"name": "x", "judge": judge_section(with_key(url))}))
    code, out, err = run_cli_split(["check-config", str(tmp_path / "c.yaml")], monkeypatch, capsys)
    assert code == 2 and "judge.base_url: the URL holds credentials" in err, out + err
    assert leaks((out + err).encode(), URL_KEY) == []

    trait = tmp_path / "bliss-copy"
    shutil.copytree(BUILTIN_DIR / "bliss", trait)
    before = snapshot(trait)
    with FakeJudgeServer(echo_auth=True) as server:
        argv = ["data", "generate", str(trait), "--teacher", "api:fake-judge", "--base-url", with_key(server.url), "--n", "2"]
        code, out, err = run_cli_split(argv, monkeypatch, capsys)
    assert code == 2, out + err
    [line] = err.splitlines()
    assert line.startswith(f"error: --base-url http://user:***@127.0.0.1:{server.port}/v1: the server refused the key"), line
    assert "Invalid Authorization header: '" in line  # the echo is shown, masked
    sent = [base64.b64decode(a.removeprefix("Basic ")).decode() for a in server.authorizations() if a and a.startswith("Basic ")]
    assert f"user:{URL_KEY}" in sent  # the client sent the URL's credentials, so the echo held them
    assert leaks((out + err).encode(), URL_KEY) == []
    assert snapshot(trait) == before


def test_a_key_in_a_url_never_reaches_a_run_directory(tmp_path, monkeypatch, capsys):
    """A rescoring whose judge file puts a key in base_url is refused before anything is asked or written.
    A run directory written before that rule (its config.yaml holding such a URL) is shown masked by what
    reads it (the report's and export's Run)."""
    from test_rejudge import synthetic_run

    from traitloop.report_data import load_run

    run = synthetic_run(tmp_path / "runs")
    before = snapshot(run)
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("TRAITLOOP_JUDGE_CACHE", str(tmp_path / "cache.sqlite"))
    with FakeJudgeServer() as server:
        url = with_key(server.url)
        (tmp_path / "j.yaml").write_text(yaml.safe_dump({"judge": {**judge_section(url), "coherence": False}}))
        code, out, err = run_cli_split(["judge", str(run), "--judge", str(tmp_path / "j.yaml")], monkeypatch, capsys)
    assert code == 2 and "judge.base_url: the URL holds credentials" in err, out + err
    assert server.chat_requests() == 0 and snapshot(run) == before
    assert leaks((out + err).encode(), URL_KEY) == []

    old = yaml.safe_load((run / "config.yaml").read_text())
    old["judge"] = judge_section(url)  # as a traitloop without the rule wrote it
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    (run / "scores.csv").write_text("cycle,trait_mean,trait_ci_low,trait_ci_high,coherence_mean\n0,50,40,60,-2\n1,55,45,65,-2\n")
    loaded = load_run(run, run.name, run.parent)
    assert loaded.config["judge"]["base_url"] == f"http://user:***@127.0.0.1:{server.port}/v1"
    assert leaks(json.dumps(loaded.config).encode(), URL_KEY) == []


# ---- weights: safetensors only; remote code only when asked for -----------------------------------------
class Payload:
    """A pickle that, when loaded, creates a file: what a malicious pytorch_model.bin could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def copy_model(tiny_dir, dest: Path) -> Path:  # noqa: F811
    shutil.copytree(tiny_dir, dest)
    return dest


def test_a_model_with_only_pickled_weights_is_refused_without_opening_the_pickle(tiny_dir, tmp_path):  # noqa: F811
    from traitloop.judges.local import LocalJudge
    from traitloop.models import load_model
    from traitloop.traits import load_trait

    folder = copy_model(tiny_dir, tmp_path / "pickled")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    expected = f"model path {folder} holds pickled weights (pytorch_model.bin) and no .safetensors file: traitloop loads safetensors only"
    with pytest.raises(UserError) as caught:
        load_model(str(folder))
    assert str(caught.value).startswith(expected)
    with pytest.raises(UserError, match="holds pickled weights"):  # a local judge's model too
        LocalJudge(build_config({"judge": {"kind": "local", "model": str(folder)}}).judge, load_trait("bliss"))
    assert not marker.exists()


def test_beside_safetensors_a_pickle_is_never_opened(tiny_dir, tmp_path):  # noqa: F811
    from traitloop.models import load_model

    folder = copy_model(tiny_dir, tmp_path / "both")
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    model, _ = load_model(str(folder))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not marker.exists()


@pytest.fixture
def remote_code_model(tiny_dir, tmp_path):  # noqa: F811
    """The tiny model, with a config.json whose auto_map points at code in the repository (a custom class
    that announces itself by creating a file when its module is imported)."""
    from transformers.utils import HF_MODULES_CACHE

    folder = copy_model(tiny_dir, tmp_path / f"remote-code-{os.getpid()}")
    marker = tmp_path / "remote-code-ran"
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomLlama"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(
        "from pathlib import Path\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        f"Path({str(marker)!r}).touch()\n"
        "class CustomConfig(LlamaConfig):\n    pass\n"
        "class CustomLlama(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    yield folder, marker
    shutil.rmtree(Path(HF_MODULES_CACHE) / "transformers_modules" / folder.name, ignore_errors=True)


def test_a_repositorys_own_code_runs_only_when_the_config_trusts_it(remote_code_model, tmp_path):
    from traitloop.generation.sampler import load_base
    from traitloop.judges.local import LocalJudge
    from traitloop.traits import load_trait

    folder, marker = remote_code_model
    untrusted = build_config({"model": {"ref": str(folder)}, "out_dir": str(tmp_path)})
    assert untrusted.model.trust_remote_code is False  # the default
    model, _ = load_base(untrusted)
    assert type(model).__name__ == "LlamaForCausalLM" and not marker.exists()  # transformers' own class; the file never ran
    judge = LocalJudge(build_config({"judge": {"kind": "local", "model": str(folder)}}).judge, load_trait("bliss"))
    assert type(judge.model).__name__ == "LlamaForCausalLM" and not marker.exists()  # a local judge never trusts it

    trusted = build_config({"model": {"ref": str(folder), "trust_remote_code": True}, "out_dir": str(tmp_path)})
    model, _ = load_base(trusted)
    assert type(model).__name__ == "CustomLlama" and marker.exists()  # asked for: the repository's code ran


# ---- path escapes: names from a config never leave their directory --------------------------------------
def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


ESCAPING_NAMES = ["..", ".", "../../escaped", "a/../../b", "", "sub/dir"]


@pytest.mark.parametrize("name", [*ESCAPING_NAMES, "ABSOLUTE"])
@pytest.mark.parametrize("how", ["config", "set"])
def test_a_run_name_that_would_leave_out_dir_is_refused_and_nothing_is_written(tmp_path, monkeypatch, capsys, name, how):
    work = tmp_path / "a" / "b" / "work"  # an escape from work/runs would land inside tmp_path, where it is seen
    work.mkdir(parents=True)
    name = str(tmp_path / "elsewhere") if name == "ABSOLUTE" else name
    config = {"cycles": 0, "out_dir": "runs", **({"name": name} if how == "config" else {})}
    (work / "c.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    argv = ["run", "c.yaml"] + (["--set", f"name={name}"] if how == "set" else [])
    code, out, err = run_cli_split(argv, monkeypatch, capsys)
    assert code == 2, out + err
    assert err.startswith("error: c.yaml: invalid config: name") and "it names a directory under out_dir" in err, err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", [*ESCAPING_NAMES, "ABSOLUTE"])
def test_a_sweep_name_that_would_leave_out_dir_is_refused_and_nothing_is_written(tmp_path, monkeypatch, capsys, name):
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    name = str(tmp_path / "elsewhere") if name == "ABSOLUTE" else name
    (work / "g.yaml").write_text(yaml.safe_dump({"name": name, "base": {"cycles": 0}, "grid": {"seed": [0, 1]}}))
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    code, out, err = run_cli_split(["sweep", "g.yaml"], monkeypatch, capsys)
    assert code == 2, out + err
    assert err.startswith("error: g.yaml: invalid grid file: name: it names a directory under out_dir"), err
    assert snapshot(tmp_path) == before


def test_sweep_run_names_made_from_hostile_grid_values_stay_inside_the_sweep(tmp_path):
    """A run's name comes from its grid values; values that are paths become plain names, so every run's
    directory, config file and log file is inside the sweep directory."""
    from traitloop.sweep import load_sweep

    model = tmp_path / "fake-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    hostile = ["..", "../../../escaped", str(tmp_path / "elsewhere"), "a/../../b", ".", "sub/dir"]
    grid = {"name": "s", "base": {"cycles": 0, "model": {"ref": str(model)}}, "grid": {"dpo.loss_type": hostile}}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    before = snapshot(tmp_path)
    sweep = load_sweep(tmp_path / "g.yaml", out_dir=tmp_path / "out")
    root = (tmp_path / "out" / "s").resolve()
    assert len(sweep.runs) == len(hostile)
    for run in sweep.runs:
        assert "/" not in run.name and run.name not in (".", "..")
        for path in (run.config.run_dir, sweep.config_path(run), sweep.log_path(run)):
            assert path.resolve().is_relative_to(root), (run.name, path)
        assert run.config.run_dir.resolve().parent == root / "runs"
    assert snapshot(tmp_path) == before  # loading a sweep writes nothing


@pytest.mark.parametrize("model", ["../../../../escaped", "/tmp/escaped", "..", "a/../../b"])
def test_a_rescoring_judge_named_like_a_path_writes_only_inside_the_run(tmp_path, monkeypatch, capsys, model):
    """The judge's name becomes file names (judges/<id>.jsonl, scores-<id>.csv, figures/...-<id>.png): a
    model name that is a path still writes inside the run directory, and nowhere else."""
    from test_rejudge import synthetic_run

    run = synthetic_run(tmp_path / "deep" / "er")
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("TRAITLOOP_JUDGE_CACHE", str(tmp_path / "deep" / "er" / "cache.sqlite"))
    before = snapshot(tmp_path)
    with FakeJudgeServer() as server:
        spec = tmp_path / "deep" / "er" / "j.yaml"
        spec.write_text(yaml.safe_dump({"judge": {**judge_section(server.url, model), "coherence": False}}))
        before = snapshot(tmp_path)
        code, out, err = run_cli_split(["judge", str(run), "--judge", str(spec)], monkeypatch, capsys)
    assert code == 0, out + err
    after = snapshot(tmp_path)
    written = [p for p in after if after[p] != before.get(p)]
    outside = [p for p in written if not (tmp_path / p).resolve().is_relative_to(run.resolve()) and not p.endswith("cache.sqlite")]
    assert written and outside == [], written
    assert any("/judges/" in p for p in written)
