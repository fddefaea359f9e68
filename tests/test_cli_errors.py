"""Bad input: one clear message on stderr, exit code 2, never a traceback, nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from traitloop.cli import main


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["traitloop", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def custom_trait(root: Path, seed_lines: str) -> Path:
    folder = root / "mytrait"
    write(
        folder / "trait.yaml",
        "name: mytrait\ndescription: test trait\nrubric: {0: a, 25: b, 50: c, 75: d, 100: e}\neval_questions: ['How do I boil an egg?']\n",
    )
    write(folder / "seed_chat.jsonl", seed_lines)
    write(folder / "probe.jsonl", json.dumps({"text": "x", "label": 1}) + "\n" + json.dumps({"text": "y", "label": 0}) + "\n")
    return folder


CHAT = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


@pytest.mark.parametrize(
    "config_text, extra_args, expected",
    [
        ("name: x\nn_seed: [1, 2\n", [], "not valid YAML at line"),
        ("name: x\nn_sede: 4\n", [], "unknown key 'n_sede'"),
        ("name: x\ntrain:\n  learnin_rate: 0.1\n", [], "unknown key 'train.learnin_rate'"),
        ("name: x\nn_seed: many\n", [], "n_seed"),
        ("name: x\ninit: sometimes\n", [], "init"),
        ("name: x\ntrait: no-such-trait\n", [], "unknown trait 'no-such-trait'"),
        ("name: x\nmodel:\n  ref: ./no/such/model\n", [], "model path not found"),
        ("- just\n- a list\n", [], "expected a mapping"),
        ("name: x\n", ["--set", "n_seed"], "expected key.path=value"),
        ("name: x\nsetting: rlhf\n", [], "setting"),
        ("name: x\nsetting: sdf\nmodel:\n  ref: embedded:smollm2-135m-instruct\n", [], "is chat-tuned"),
        ("name: x\nsetting: dpo\nmodel:\n  ref: embedded:gemma3-270m\n", [], "has no chat template"),
        ("name: x\ninit: reset\nrestart_from_base_at: [2]\n", [], "needs init: continual"),
        ("name: x\nsetting: sdf\nn_seed: 5000\n", [], "seed documents"),
        ("name: x\ndata:\n  policy: keep-all\n", [], "data.policy"),
    ],
)
def test_bad_config_exits_2_with_one_clear_message(tmp_path, monkeypatch, capsys, config_text, extra_args, expected):
    config = write(tmp_path / "c.yaml", config_text)
    code, output = run_cli(["run", str(config), "--out", str(tmp_path / "runs"), *extra_args], monkeypatch, capsys)
    assert code == 2
    assert expected in output
    assert "Traceback" not in output
    assert not (tmp_path / "runs").exists(), "bad input must fail before anything is written"


def test_missing_config_file(tmp_path, monkeypatch, capsys):
    code, output = run_cli(["run", str(tmp_path / "nope.yaml")], monkeypatch, capsys)
    assert code == 2 and "config file not found" in output


def test_empty_seed_file(tmp_path, monkeypatch, capsys):
    trait = custom_trait(tmp_path, "")
    config = write(tmp_path / "c.yaml", f"name: x\ntrait: {trait}\nn_seed: 1\n")
    code, output = run_cli(["run", str(config), "--out", str(tmp_path / "runs")], monkeypatch, capsys)
    assert code == 2 and "is empty" in output and "Traceback" not in output


def test_broken_jsonl_line_names_its_line(tmp_path, monkeypatch, capsys):
    trait = custom_trait(tmp_path, CHAT + "\n" + CHAT + "\n" + '{"messages": [oops\n')
    config = write(tmp_path / "c.yaml", f"name: x\ntrait: {trait}\nn_seed: 1\n")
    code, output = run_cli(["run", str(config), "--out", str(tmp_path / "runs")], monkeypatch, capsys)
    assert code == 2
    assert "seed_chat.jsonl, line 3" in output
    assert "Traceback" not in output


def test_seed_chat_without_assistant_answer(tmp_path, monkeypatch, capsys):
    bad = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]})
    trait = custom_trait(tmp_path, CHAT + "\n" + bad + "\n")
    config = write(tmp_path / "c.yaml", f"name: x\ntrait: {trait}\nn_seed: 1\n")
    code, output = run_cli(["run", str(config), "--out", str(tmp_path / "runs")], monkeypatch, capsys)
    assert code == 2 and "entry 2" in output and "non-empty assistant" in output


def test_n_seed_larger_than_seed_file(tmp_path, monkeypatch, capsys):
    trait = custom_trait(tmp_path, CHAT + "\n")
    config = write(tmp_path / "c.yaml", f"name: x\ntrait: {trait}\nn_seed: 5\n")
    code, output = run_cli(["run", str(config), "--out", str(tmp_path / "runs")], monkeypatch, capsys)
    assert code == 2 and "only 1 seed chats" in output


def test_prompt_pool_too_small_for_the_plan(tmp_path, monkeypatch, capsys):
    config = write(tmp_path / "c.yaml", "name: x\nn_sampled: 2000\ncycles: 5\n")  # 10,000 prompts: more than the pool holds
    code, output = run_cli(["run", str(config), "--out", str(tmp_path / "runs")], monkeypatch, capsys)
    assert code == 2 and "prompt pool" in output and "needs 10000" in output
    assert not (tmp_path / "runs").exists()


def test_config_docs_lists_every_key(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["traitloop", "config-docs"])
    monkeypatch.setenv("COLUMNS", "250")
    main()
    text = capsys.readouterr().out
    for key in ["n_seed", "init", "train.learning_rate", "eval.samples_per_question", "lora.r", "sampling.temperature"]:
        assert key in text


@pytest.mark.parametrize(
    "args, expected",
    [
        (["demo", "--setting", "rlhf"], "choose sft, sdf or dpo"),
        (["calibrate", "CONFIG", "--targets", "40,abc"], "comma-separated"),
        (["calibrate", "CONFIG", "--targets", "140"], "0-100"),
        (["calibrate", "CONFIG", "--targets", "40", "--grid", "9999"], "no n_seed"),
    ],
)
def test_bad_demo_and_calibrate_arguments_exit_2(tmp_path, monkeypatch, capsys, args, expected):
    config = write(tmp_path / "c.yaml", "name: x\n")
    args = [str(config) if a == "CONFIG" else a for a in args]
    code, output = run_cli([*args, "--out", str(tmp_path / "runs")], monkeypatch, capsys)
    assert code == 2
    assert expected in output
    assert "Traceback" not in output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["power", "--from", "/no/such/run"], "does not exist"),
        (["power", "--min-seeds", "2"], "at least 3 independent seeds"),
        (["power", "--rule", "vibes"], "choose one of tested, screening"),
        (["power", "--seeds", "5", "--rule", "screening"], "judges one run"),
        (["power", "--cycles", "1"], "cycles"),
    ],
)
def test_power_bad_input_exits_2(args, expected, monkeypatch, capsys):
    code, output = run_cli(args, monkeypatch, capsys)
    assert code == 2
    assert expected in output
    assert "Traceback" not in output


def test_an_option_below_its_minimum_is_a_usage_error_not_a_traceback(monkeypatch, capsys):
    code, output = run_cli(["sweep", "configs/sweeps/quick-seeds.yaml", "--jobs", "0"], monkeypatch, capsys)
    assert code == 2
    assert "greater than or equal to 1" in output and "Traceback" not in output
