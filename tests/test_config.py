"""Config loading: defaults, unknown keys, type errors, YAML errors, --set overrides, hashing, docs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from traitloop.config import (
    ExperimentConfig,
    TrainConfig,
    build_config,
    describe_fields,
    load_config,
    parse_overrides,
)
from traitloop.errors import UserError


def _write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_validate_and_round_trip_through_yaml():
    cfg = ExperimentConfig()
    assert cfg.train.learning_rate == pytest.approx(1.5e-4)
    assert cfg.trait == "bliss"
    assert cfg.run_dir == Path("runs") / "run"
    # The dumped YAML must load back into an identical config.
    again = ExperimentConfig.model_validate(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.science_hash() == cfg.science_hash()


def test_empty_file_gives_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, ""))
    assert cfg == ExperimentConfig()


def test_unknown_top_level_key_is_named(tmp_path):
    path = _write(tmp_path, "n_sede: 10\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    msg = str(info.value)
    assert "n_sede" in msg
    assert "unknown key" in msg
    assert str(path) in msg


def test_unknown_nested_key_is_named_with_its_path(tmp_path):
    path = _write(tmp_path, "train:\n  learnin_rate: 0.001\n")
    with pytest.raises(UserError, match=r"train\.learnin_rate"):
        load_config(path)


def test_unknown_key_via_override_is_named():
    with pytest.raises(UserError, match=r"eval\.sample_per_question"):
        build_config({}, ["eval.sample_per_question=3"])


def test_wrong_type_names_the_field(tmp_path):
    with pytest.raises(UserError) as info:
        load_config(_write(tmp_path, "train:\n  batch_size: lots\n"))
    msg = str(info.value)
    assert "train.batch_size" in msg
    assert "lots" in msg


def test_constraint_violation_names_the_field():
    with pytest.raises(UserError, match=r"sampling\.temperature"):
        build_config({"sampling": {"temperature": 0}})
    with pytest.raises(UserError, match=r"\bname\b"):
        build_config({"name": "has space"})


def test_malformed_yaml_mentions_the_line(tmp_path):
    path = _write(tmp_path, "name: ok\ncycles: 3\nseed: 1\n  bad: 2\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    msg = str(info.value)
    assert "not valid YAML" in msg
    assert "line 4" in msg


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_yaml_is_rejected(tmp_path, text):
    with pytest.raises(UserError, match="mapping"):
        load_config(_write(tmp_path, text))


def test_missing_file_is_a_user_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UserError, match="not found"):
        load_config(missing)


def test_set_overrides_are_typed(tmp_path):
    path = _write(tmp_path, "name: base\ntrain:\n  batch_size: 4\n")
    cfg = load_config(path, ["train.learning_rate=1e-3", "trait=lucky", "eval.questions=3"])
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    assert isinstance(cfg.train.learning_rate, float)
    assert cfg.trait == "lucky"
    assert cfg.eval.questions == 3
    assert isinstance(cfg.eval.questions, int)
    # Keys from the file that the overrides did not touch survive the deep merge.
    assert cfg.name == "base"
    assert cfg.train.batch_size == 4


def test_override_wins_over_file_value(tmp_path):
    path = _write(tmp_path, "train:\n  batch_size: 4\n  learning_rate: 0.01\n")
    cfg = load_config(path, ["train.batch_size=8"])
    assert cfg.train.batch_size == 8
    assert cfg.train.learning_rate == pytest.approx(0.01)


def test_parse_overrides_nests_and_parses_yaml_values():
    out = parse_overrides(["a.b.c=1", "a.b.d=true", "e=x=y", "f="])
    assert out == {"a": {"b": {"c": 1, "d": True}}, "e": "x=y", "f": ""}


def test_override_without_equals_is_a_user_error(tmp_path):
    path = _write(tmp_path, "")
    with pytest.raises(UserError, match="train.learning_rate"):
        load_config(path, ["train.learning_rate"])


def test_science_hash_ignores_name_and_out_dir_but_not_n_seed():
    base = ExperimentConfig()
    moved = ExperimentConfig(name="other", out_dir=Path("/elsewhere"))
    assert moved.science_hash() == base.science_hash()
    assert ExperimentConfig(n_seed=base.n_seed + 1).science_hash() != base.science_hash()
    assert ExperimentConfig(train=TrainConfig(learning_rate=1e-3)).science_hash() != base.science_hash()


def _leaf_paths(model, prefix=""):
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and hasattr(ann, "model_fields"):
            out.extend(_leaf_paths(ann, f"{prefix}{name}."))
        else:
            out.append(f"{prefix}{name}")
    return out


def test_describe_fields_lists_every_leaf_with_a_description():
    rows = describe_fields()
    keys = [k for k, _, _ in rows]
    assert len(keys) == len(set(keys))

    # Every leaf key of the dumped default config appears, and nothing else.
    def flatten(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flatten(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    assert set(keys) == set(flatten(ExperimentConfig().model_dump(mode="json")))
    assert set(keys) == set(_leaf_paths(ExperimentConfig))
    for key in ["train.learning_rate", "eval.questions", "lora.r", "model.ref", "n_seed", "judge.kind"]:
        assert key in keys
    missing = [k for k, _, desc in rows if not desc.strip()]
    assert missing == [], f"fields without a description: {missing}"
    defaults = {k: d for k, d, _ in rows}
    assert defaults["train.learning_rate"] == repr(1.5e-4)
    assert defaults["n_seed"] == "100"


def test_numeric_looking_name_is_accepted():
    assert build_config({}, ["name=2024"]).name == "2024"
